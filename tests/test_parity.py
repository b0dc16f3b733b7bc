"""CPU and CUDA give the same float64 results up to rounding, for every kernel family.

Each test computes a kernel on the CPU and on ``OTHER``: CUDA where it is present, else the CPU
again. On a CPU-only machine the second run happens with torch's default device set to ``meta``, so
the test still proves that the kernel creates every tensor on its inputs' device (a tensor made
without ``device=`` would land on ``meta`` and fail); on a GPU host it is the real comparison.
Stochastic simulators are fed the same pre-drawn noise on both devices, so the comparison is exact up
to rounding.
"""

import contextlib
import math

import torch
from test_device_path import meta_default_device

from learndyn import gaussian, ndk, perceptron, singular_limit
from learndyn import noise_injection as ni
from learndyn.backend import make_generator
from learndyn.ensemble import run_ensemble
from learndyn.flows import integrate_moments, rk4
from learndyn.linear_networks import solve_lyapunov, stationary_covariance

CPU = torch.device("cpu")
OTHER = torch.device("cuda" if torch.cuda.is_available() else "cpu")
F64 = torch.float64


def on_other():
    """Run the second computation with nothing but explicit devices to rely on."""
    return contextlib.nullcontext() if OTHER.type == "cuda" else meta_default_device()


def draw(*shape, seed=0):
    return torch.randn(*shape, generator=make_generator(seed, device=CPU), dtype=F64, device=CPU)


def assert_same(compute, *inputs, rtol=1e-12, atol=1e-14):
    """``compute(*inputs)`` on the CPU and on OTHER (inputs moved there) agree; outputs on their device."""
    reference = compute(*inputs)
    with on_other():
        moved = compute(*(x.to(OTHER) if isinstance(x, torch.Tensor) else x for x in inputs))
    pairs = zip(reference, moved, strict=True) if isinstance(reference, tuple | list) \
        else [(reference, moved)]
    for ref, got in pairs:
        assert got.device.type == OTHER.type and got.dtype == ref.dtype
        torch.testing.assert_close(got.cpu(), ref, rtol=rtol, atol=atol)


def test_gaussian_expectations_and_owens_t():
    h, a = 3 * draw(500), torch.tan(math.pi * (torch.rand(500, dtype=F64) - 0.5))
    assert_same(gaussian.owens_t, h, a)
    v, mean = draw(4, 3, seed=1), draw(3, seed=2)
    cov = torch.eye(3, dtype=F64) + 0.1 * torch.ones(3, 3, dtype=F64)
    assert_same(gaussian.expected_cdf_times_input, v, mean, cov)
    assert_same(gaussian.expected_cdf_squared_times_input, v, mean, cov)


def test_perceptron_flows():
    classes = {device: perceptron.GaussianClasses.make([1.0, 0.5], [-1.0, 0.0], [[0.6, 0.3], [0.3, 0.5]],
                                                       [[0.3, 0.0], [0.0, 1.0]], device=device)
               for device in (CPU, OTHER)}
    w = draw(64, 2, seed=3)
    for update in (perceptron.sl_mean_update, perceptron.rl_mean_update):
        assert_same(lambda w_, update=update: update(w_, classes[w_.device], 0.1), w)
    m, q = torch.rand(32, dtype=F64), 1 + torch.rand(32, dtype=F64)
    for rule in ("sl", "rl"):
        assert_same(lambda m_, q_, rule=rule: perceptron.isotropic_flow(m_, q_, 0.7, 1.0, 0.1, rule),
                    m, q)


def test_moment_equations_and_rk4():
    def drift(w):
        return torch.stack([torch.sin(w[..., 1]) - w[..., 0], -(w[..., 0] ** 3)], -1)

    mean, cov = torch.tensor([0.3, -0.2], dtype=F64), torch.tensor([[0.2, 0.05], [0.05, 0.1]], dtype=F64)
    times = torch.linspace(0, 1, 5, dtype=F64)
    assert_same(lambda m_, c_: integrate_moments(drift, m_, c_, times, device=m_.device), mean, cov)
    assert_same(lambda y: rk4(lambda t, z: -z + torch.tanh(z), y, [0.0, 0.5, 1.0]), draw(16, 3))


def test_lyapunov_and_stationary_covariance():
    root = draw(5, 5, seed=4)
    hessian = root @ root.T / 5 + torch.eye(5, dtype=F64)
    noise = torch.eye(5, dtype=F64) + 0.2 * hessian
    assert_same(lambda h_, d_: solve_lyapunov(h_, d_, 0.1, 2), hessian, noise)
    assert_same(lambda h_, d_: stationary_covariance(h_, d_, 0.1, 2), hessian, noise)


def test_static_and_two_time_kernels_and_volterra():
    x1, x2 = draw(6, 7, seed=5), draw(4, 7, seed=6)
    for activation in ("relu", "erf"):
        assert_same(lambda a_, b_, act=activation: ndk.static_kernels(a_, b_, weight_variance=1.5,
                                                                     activation=act, depth=2), x1, x2)
    times = torch.linspace(0, 4, 41, dtype=F64)

    def volterra(t):
        train, test, _ = ndk.symmetric_task_kernels(t, 0.7, activation="erf", depth=2, temperature=0.1,
                                                    prior_variance=1.0, init_variance=4.0,
                                                    device=t.device)
        return ndk.solve_volterra(train, torch.ones(1, dtype=F64, device=t.device), t, test,
                                  device=t.device)

    assert_same(volterra, times, rtol=1e-11, atol=1e-13)


def test_stochastic_runs_fed_the_same_noise():
    table = draw(50, 64, 3, seed=7)

    def run(noise):
        def step(w, z):
            return w + 0.01 * torch.tanh(w @ w.T)[:, :3] + 0.1 * z

        return run_ensemble(step, torch.zeros(64, 3, dtype=F64, device=noise.device), 50, record=10,
                            noise=lambda k, g: noise[:k], bound=100.0).records["state"]

    assert_same(run, table, rtol=1e-10, atol=1e-12)


def test_learning_rules_fed_the_same_noise():
    table = draw(40, 32, 5, seed=8)

    def run(noise, rule):
        classes = perceptron.GaussianClasses.make([1.0, 0.5, 0.0], [-1.0, 0.0, 0.0], 0.5,
                                                  device=noise.device)
        step = perceptron.learning_step(classes, 0.05, 0.01, rule)
        w0 = torch.zeros(32, 3, dtype=F64, device=noise.device)
        return run_ensemble(step, w0, 40, record=8, noise=lambda k, g: noise[:k, :, :3 + (rule == "rl") + 1],
                            bound=100.0).records["state"]

    for rule in ("sl", "rl"):
        assert_same(lambda noise, rule=rule: run(noise, rule), table, rtol=1e-10, atol=1e-12)


def test_langevin_and_toy_sgd_steps_fed_the_same_noise():
    x_train, y, x_test = ndk.synthetic_task(2, 0.5, device=CPU)
    weights = ndk.init_networks(8, [3, 16], init_variance=1.0, generator=make_generator(3, device=CPU),
                                device=CPU)
    noise = (draw(4, 16, 3, seed=9), draw(4, 16, seed=10))

    def langevin(w_hidden, w_out, n_hidden, n_out, x_, y_):
        return ndk.langevin_step((w_hidden, w_out), None, x=x_, y=y_, activation="relu", temperature=0.1,
                                 prior_variance=1.0, dt=0.05, noise=(n_hidden, n_out))

    assert_same(langevin, *weights, *noise, x_train, y)
    state, moments = tuple(draw(16, seed=11 + k) for k in range(3)), tuple(draw(16, seed=14 + k).abs()
                                                                          for k in range(3))
    assert_same(lambda *tensors: ni.toy_update(tensors[:3], tensors[3:], 0.05), *state, *moments)


def test_noise_injection_mlp_gradients():
    params = ni.init_nin_mlp(3, 4, 8, 2, generator=make_generator(5, device=CPU), device=CPU)
    names = sorted(params)
    x, targets, eps = draw(3, 6, 4, seed=20), torch.eye(2, dtype=F64)[torch.arange(6) % 2].expand(3, 6, 2), \
        draw(3, 6, seed=21)

    def gradients(x_, y_, e_, *values):
        grads = ni.nin_mlp_gradients(dict(zip(names, values, strict=True)), x_, y_, e_)
        return tuple(grads[name] for name in names)

    assert_same(gradients, x, targets.contiguous(), eps, *(params[name] for name in names))


def test_noisy_gd_losses_and_limiting_flows():
    inputs, targets = draw(3, 2, seed=30), draw(3, seed=31)

    def network(device):
        return singular_limit.DiagonalNetwork.make(inputs.to(device), targets.to(device), device=device)

    w = draw(8, 4, seed=32)

    def loss_and_gradient(w_, eta_):
        w_ = w_.clone().requires_grad_(True)
        value = singular_limit.noisy_loss("weight", w_, eta_, network(w_.device)).sum()
        return value.detach(), torch.autograd.grad(value, w_)[0]

    assert_same(loss_and_gradient, w, 0.3 * draw(8, 4, seed=34))
    times = torch.linspace(0, 1, 11, dtype=F64)
    for kind in ("dropout", "label"):
        assert_same(lambda w_, kind=kind: singular_limit.limiting_flow(kind, w_, times.to(w_.device),
                                                                       network(w_.device)), w.abs() + 0.1)
