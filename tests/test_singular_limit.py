"""Tests of learndyn.singular_limit: noisy losses, Reg, limiting flows, the noisy-GD ensemble."""

import math

import numpy as np
import pytest
import torch

from learndyn.backend import make_generator
from learndyn.singular_limit import (
    NOISE_KINDS,
    DiagonalNetwork,
    balance,
    corrected_balance,
    isotropic_second_moment,
    limiting_drift,
    limiting_flow,
    noise_size,
    noisy_gradient,
    noisy_loss,
    observe_balance,
    product_on_manifold,
    regularizer,
    regularizer_gradient,
    richardson,
    run_anticorrelated_gd,
    run_noisy_gd,
    run_on_slow_clock,
    sample_noise,
    tangent_projection,
    unit_share,
)


def _network(device):
    generator = make_generator(11, device=device)
    inputs = torch.randn(3, 2, generator=generator, dtype=torch.float64, device=device)
    targets = torch.randn(3, generator=generator, dtype=torch.float64, device=device)
    return DiagonalNetwork.make(inputs, targets, device=device)


def _points(network, count, seed=5):
    generator = make_generator(seed, device=network.inputs.device)
    return torch.randn(count, 2 * network.width, generator=generator, dtype=torch.float64,
                       device=network.inputs.device)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_regularizer_is_half_the_noise_laplacian(kind, device):
    """Reg = 1/2 sum_k d^2 L^/d eta_k^2 at eta = 0, by central second differences (error O(h^2))."""
    network = _network(device)
    w = _points(network, 4)
    h = 1e-3
    m = noise_size(kind, network)
    zero = torch.zeros(w.shape[0], m, dtype=w.dtype, device=device)
    base = noisy_loss(kind, w, zero, network)
    laplacian = torch.zeros_like(base)
    for k in range(m):
        step = torch.zeros_like(zero)
        step[:, k] = h
        laplacian += (noisy_loss(kind, w, step, network) - 2 * base
                      + noisy_loss(kind, w, -step, network)) / h**2
    torch.testing.assert_close(regularizer(kind, w, network), 0.5 * laplacian, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_noisy_gradient_matches_autograd(kind, device):
    network = _network(device)
    w = _points(network, 5).requires_grad_(True)
    eta = sample_noise(kind, (5,), network, make_generator(3, device=device),
                       **({"batch_size": 2} if kind == "minibatch" else {"sigma": 0.7}))
    (autograd,) = torch.autograd.grad(noisy_loss(kind, w, eta, network).sum(), w)
    torch.testing.assert_close(noisy_gradient(kind, w.detach(), eta, network), autograd,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", NOISE_KINDS)
def test_regularizer_gradient_matches_autograd(kind, device):
    network = _network(device)
    w = _points(network, 5).requires_grad_(True)
    value = regularizer(kind, w, network)
    expected = (torch.autograd.grad(value.sum(), w)[0] if value.requires_grad
                else torch.zeros_like(w))
    torch.testing.assert_close(regularizer_gradient(kind, w.detach(), network), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["label", "dropout", "dropconnect", "weight"])
def test_noise_has_mean_zero_and_variance_sigma_squared(kind, device):
    network = _network(device)
    sigma, count = 0.6, 200_000
    eta = sample_noise(kind, (count,), network, make_generator(1, device=device), sigma=sigma)
    standard_error = 5 * sigma * 2 / math.sqrt(count)  # 5 s.e.; Bernoulli kurtosis below 4
    assert eta.mean(0).abs().max() < standard_error
    assert (eta.var(0) - sigma**2).abs().max() < 5 * sigma**2 * math.sqrt(8 / count)


def test_minibatch_noise_variance(device):
    network = _network(device)
    eta = sample_noise("minibatch", (100_000,), network, make_generator(2, device=device),
                       batch_size=2)
    assert eta.mean().abs() < 0.02
    assert abs(eta.var(0).mean().item() - (3 - 1) / 2) < 0.05


def test_product_model_flows_move_the_balance_at_the_predicted_rates(device):
    """On uv = 1: label noise dq/dtau = -q, weight perturbation dq/dt = -2q, minibatch nothing."""
    network = DiagonalNetwork.product(1.0, device=device)
    w0 = product_on_manifold(3.75, device=device)
    times = [0.0, 0.5, 1.0]
    for kind, rate in (("label", 1.0), ("weight", 2.0), ("minibatch", 0.0)):
        path = limiting_flow(kind, w0, times, network, substeps=100)  # RK4 error ~ h^4 = 6e-10
        q = balance(path, network)[:, 0]
        expected = 3.75 * torch.exp(-rate * torch.tensor(times, dtype=q.dtype, device=device))
        torch.testing.assert_close(q, expected, rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(path[:, 0] * path[:, 1], torch.ones(3, dtype=q.dtype,
                                   device=device), rtol=1e-8, atol=0)


def test_tangent_projection_is_orthogonal_to_the_output_gradients(device):
    network = _network(device)
    w = _points(network, 3)
    projection = tangent_projection(w, network)
    jacobian = network.output_jacobian(w)
    torch.testing.assert_close(jacobian @ projection, torch.zeros_like(jacobian), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(projection @ projection, projection, atol=1e-12, rtol=0)


def test_ensemble_step_is_one_noisy_gradient_step(device):
    network = _network(device)
    w0 = _points(network, 6)
    result = run_noisy_gd("weight", network, w0, 0.1, 1, sigma=0.5, record=1,
                          generator=make_generator(4, device=device))
    eta = sample_noise("weight", (1, 6), network, make_generator(4, device=device), sigma=0.5)[0]
    torch.testing.assert_close(result.state, w0 - 0.1 * noisy_gradient("weight", w0, eta, network))


def test_bad_input_raises_value_error_naming_the_argument():
    network = DiagonalNetwork.product()
    w = product_on_manifold(1.0).expand(2, 2)
    with pytest.raises(ValueError, match="kind"):
        regularizer("gaussian", w, network)
    with pytest.raises(ValueError, match="sigma"):
        run_noisy_gd("label", network, w, 0.1, 10, sigma=-1.0)
    with pytest.raises(ValueError, match="sigma"):
        run_noisy_gd("label", network, w, 0.1, 10)
    with pytest.raises(ValueError, match="alpha"):
        run_noisy_gd("label", network, w, 0.0, 10, sigma=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        run_noisy_gd("minibatch", network, w, 0.1, 10, batch_size=0)
    with pytest.raises(ValueError, match="w0"):
        run_noisy_gd("label", network, torch.ones(2, 3), 0.1, 10, sigma=1.0)
    with pytest.raises(ValueError, match="eta"):
        noisy_loss("weight", w, torch.zeros(2, 1), network)
    with pytest.raises(ValueError, match="w"):
        regularizer("weight", torch.tensor([[float("nan"), 1.0]]), network)
    with pytest.raises(ValueError, match="targets"):
        DiagonalNetwork.make([[1.0, 2.0]], [1.0, 2.0])
    with pytest.raises(ValueError, match="isotropic"):
        limiting_drift("isotropic", w, network)


def test_divergence_is_flagged_not_raised():
    network = DiagonalNetwork.product()
    w0 = product_on_manifold(3.75).expand(4, 2).clone()
    result = run_noisy_gd("label", network, w0, 1.0, 50, sigma=1.0, bound=1e3, check_every=1)
    assert bool(result.diverged.all())


@pytest.mark.parametrize(("kind", "rate"), [("label", 1.0), ("weight", 2.0)])
def test_corrected_balance_tends_to_the_limiting_flow_at_first_order(kind, rate, device):
    """<q>_alpha - q0 exp(-rate s) is O(alpha): it halves (to O(alpha^2)) when alpha halves."""
    times = [0.0, 0.5, 1.0]
    limit = 3.75 * np.exp(-rate * np.array(times))
    sigma = 1.0 if kind == "label" else 0.3
    gaps = []
    for alpha in (0.004, 0.002):
        path = corrected_balance(kind, 3.75, times, alpha, sigma, device=device).cpu().numpy()
        assert path[0] == 3.75
        gaps.append(path[1:] - limit[1:])
    assert np.all(np.array(gaps) < 0)  # the O(alpha) terms speed the decay up
    np.testing.assert_allclose(gaps[0] / gaps[1], 2.0, rtol=0.02)


def test_corrected_balance_label_rate_is_the_stationary_residual_variance(device):
    """At one short step of slow time the decay rate is 2 / (2 - alpha m0), to O(alpha^2 s)."""
    alpha, s = 0.05, 1e-4
    path = corrected_balance("label", 0.0, [0.0, s], alpha, 1.0, device=device)
    assert path[1].item() == 0.0  # q = 0 is a fixed point
    path = corrected_balance("label", 1.0, [0.0, s], alpha, 1.0, device=device)
    m0 = math.sqrt(5.0)
    rate = -math.log1p(-alpha**2 * 2 / (2 - alpha * m0)) / alpha**2
    start_up = alpha**2 / (2 - alpha * m0) ** 2
    assert path[1].item() == pytest.approx(math.exp(start_up - rate * s), rel=1e-6)


def test_corrected_balance_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        corrected_balance("dropout", 1.0, [0.0, 1.0], 0.01, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        corrected_balance("label", 3.75, [0.0, 1.0], 0.5, 1.0)
    with pytest.raises(ValueError, match="sigma"):
        corrected_balance("weight", 3.75, [0.0, 1.0], 0.01, 0.0)
    with pytest.raises(ValueError, match="q0"):
        corrected_balance("label", [1.0, 2.0], [0.0, 1.0], 0.01, 1.0)


def test_isotropic_second_moment(device):
    """Short times: d<l^2>/dtau = <l D' + D> = 1/2 - 3 <l^2> + 25/3 <l^4> + ... from the Taylor
    series of D = 1/(2 cosh 2l); the Ito drift 1/2 D' pulls inwards, against c = 1/4 and c = 0."""
    tau = 0.05
    short = isotropic_second_moment(tau, spacing=0.02, device=device)
    assert short == pytest.approx((1 - math.exp(-3 * tau)) / 6 + 25 * tau**3 / 12, rel=2e-3)
    coarse = isotropic_second_moment(1.0, spacing=0.1, device=device)
    fine = isotropic_second_moment(1.0, spacing=0.05, device=device)
    assert abs(coarse - fine) < 1e-4  # O(spacing^2) grid error
    no_drift = isotropic_second_moment(1.0, drift_factor=0.0, spacing=0.1, device=device)
    half_drift = isotropic_second_moment(1.0, drift_factor=0.25, spacing=0.1, device=device)
    assert fine < half_drift < no_drift < 0.5
    with pytest.raises(ValueError, match="tau0"):
        isotropic_second_moment(0.005)
    with pytest.raises(ValueError, match="spacing"):
        isotropic_second_moment(1.0, spacing=2.0)


def test_richardson_removes_a_first_order_term():
    coarse, fine = 1.0 + 0.2 + 0.04, 1.0 + 0.1 + 0.01  # 1 + h + h^2 at h = 0.2, 0.1
    value, se, first_order = richardson(coarse, 0.3, fine, 0.4)
    assert value == pytest.approx(1.0 - 0.02)
    assert se == pytest.approx(math.sqrt(4 * 0.16 + 0.09))
    assert first_order == pytest.approx(0.13)
    with pytest.raises(ValueError, match="se"):
        richardson(1.0, -1.0, 1.0, 1.0)


def test_observe_balance_records_balances_and_unit_products(device):
    network = _network(device)
    w = _points(network, 4)
    observed = observe_balance(network)(w)
    torch.testing.assert_close(observed["q"], balance(w, network))
    torch.testing.assert_close(observed["p"], w[:, :2] * w[:, 2:])


def test_unit_share_sums_to_one_and_ignores_a_common_scale(device):
    network = DiagonalNetwork.make([[0.5, 1.0], [1.0, 2.0]], [0.5, 1.0], device=device)
    p = torch.tensor([[0.2, 0.4], [1.0, 0.0]], dtype=torch.float64, device=device)
    share = unit_share(p, network)
    torch.testing.assert_close(share.sum(-1), torch.ones(2, dtype=share.dtype, device=device))
    torch.testing.assert_close(share[:, 0], p[:, 0] / (p[:, 0] + 2 * p[:, 1]))
    torch.testing.assert_close(unit_share(0.9 * p, network), share)
    with pytest.raises(ValueError, match="p has shape"):
        unit_share(torch.ones(3), network)


def test_run_on_slow_clock_records_at_the_slow_times(device):
    network = DiagonalNetwork.product(1.0, device=device)
    w0 = product_on_manifold(2.0, device=device)
    run = run_on_slow_clock("weight", network, w0, 0.05, [0.0, 0.01, 0.02], sigma=0.2, replicas=3,
                            generator=make_generator(8, device=device))
    np.testing.assert_array_equal(run.steps, [0, 5, 10])  # t = alpha sigma^2 k, alpha sigma^2 = 0.002
    direct = run_noisy_gd("weight", network, w0.expand(3, 2).clone(), 0.05, 10, sigma=0.2,
                          record=[0, 5, 10], observe=observe_balance(network),
                          generator=make_generator(8, device=device))
    torch.testing.assert_close(run.records["q"], direct.records["q"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="times"):
        run_on_slow_clock("weight", network, w0, 0.05, [0.02, 0.01], sigma=0.2, replicas=3)
    with pytest.raises(ValueError, match="w0"):
        run_on_slow_clock("weight", network, w0.expand(3, 2), 0.05, [0.0, 0.01], sigma=0.2, replicas=3)
    with pytest.raises(ValueError, match="replicas"):
        run_on_slow_clock("weight", network, w0, 0.05, [0.0, 0.01], sigma=0.2, replicas=0)


def test_anticorrelated_gd_is_weight_perturbation_of_theta_minus_xi(device):
    """theta_k - xi_k follows z <- z - alpha grad L(z + xi_k) from z_0 = w0, with the run's own xi."""
    network = _network(device)
    w0, alpha, sigma, steps = _points(network, 4), 0.1, 0.3, 3
    run = run_anticorrelated_gd(network, w0, alpha, steps, sigma=sigma, record=1,
                                generator=make_generator(6, device=device))
    generator = make_generator(6, device=device)
    xi = [sigma * torch.randn(w0.shape, generator=generator, dtype=w0.dtype, device=device)]
    xi += list(sigma * torch.randn((steps, *w0.shape), generator=generator, dtype=w0.dtype,
                                   device=device))
    z = w0
    torch.testing.assert_close(run.records["w"][0], z + xi[0])
    for k in range(steps):
        z = z - alpha * noisy_gradient("weight", z, xi[k], network)
        torch.testing.assert_close(run.records["w"][k + 1], z + xi[k + 1], rtol=1e-12, atol=1e-12)


def test_anticorrelated_gd_rejects_bad_input():
    network = DiagonalNetwork.product()
    w = product_on_manifold(1.0).expand(2, 2)
    with pytest.raises(ValueError, match="sigma"):
        run_anticorrelated_gd(network, w, 0.1, 10, sigma=0.0)
    with pytest.raises(ValueError, match="alpha"):
        run_anticorrelated_gd(network, w, -0.1, 10, sigma=0.1)
    with pytest.raises(ValueError, match="w0"):
        run_anticorrelated_gd(network, w[0], 0.1, 10, sigma=0.1)
