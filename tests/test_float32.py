"""Every kernel family computes in float32 when its inputs (or its ``dtype=``) say so.

A float32 run must stay float32 from end to end (no silent promotion through a float64 constant or
a default-dtype tensor), and give finite numbers. CPU-only: the device path is tested elsewhere.
"""

import pytest
import torch

from learndyn import flows, gaussian, ndk, perceptron, singular_limit
from learndyn import linear_networks as ln
from learndyn import noise_injection as ni
from learndyn.backend import make_generator

F32, CPU = torch.float32, torch.device("cpu")


def draw(*shape, seed=0):
    return torch.randn(*shape, generator=make_generator(seed, device=CPU), dtype=F32, device=CPU)


def classes():
    return perceptron.GaussianClasses.make([1.0, 0.0], [-1.0, 0.0], 0.5, device=CPU, dtype=F32)


def generator():
    return make_generator(0, device=CPU)


def diagonal_network():
    return singular_limit.DiagonalNetwork.make(draw(3, 2), draw(3, seed=1), device=CPU, dtype=F32)


def volterra():
    times = torch.linspace(0, 2, 11, dtype=F32)
    train, _, _ = ndk.symmetric_task_kernels(times, 0.7, activation="erf", depth=1, temperature=0.1,
                                             prior_variance=1.0, init_variance=2.0, device=CPU, dtype=F32)
    return ndk.solve_volterra(train, torch.ones(1, dtype=F32), times, device=CPU, dtype=F32)[0]


def langevin():
    weights = ndk.init_networks(4, [3, 8], init_variance=1.0, generator=generator(), device=CPU, dtype=F32)
    task = ndk.synthetic_task(2, 0.5, device=CPU, dtype=F32)
    return ndk.simulate_langevin(weights, *task, temperature=0.1, prior_variance=1.0, dt=0.05, n_steps=3,
                                 generator=generator()).train


KERNELS = {
    "owens_t": lambda: gaussian.owens_t(draw(5), draw(5, seed=1)),
    "expected_cdf_squared_times_input": lambda: gaussian.expected_cdf_squared_times_input(
        draw(4, 3), draw(3), torch.eye(3, dtype=F32)),
    "rl_mean_update": lambda: perceptron.rl_mean_update(draw(4, 2), classes()),
    "isotropic_flow": lambda: perceptron.isotropic_flow(draw(3).abs(), draw(3).abs() + 1, 0.5, 1.0, 0.1,
                                                        "rl")[0],
    "symmetric_step": lambda: perceptron.symmetric_step(torch.tensor([1.0, 0.0], dtype=F32), 0.5, 0.1,
                                                        rule="rl")(draw(4, 2), draw(4, 4)),
    "simulate": lambda: perceptron.simulate(classes(), torch.zeros(4, 2, dtype=F32), 0.1, 5, rule="rl",
                                            generator=generator()).state,
    "integrate_moments": lambda: flows.integrate_moments(
        lambda w: perceptron.rl_mean_update(w, classes()), [0.1, 0.1], [[0.01, 0.0], [0.0, 0.01]],
        [0.0, 0.5, 1.0], device=CPU, dtype=F32)[1],
    "stationary_covariance": lambda: ln.stationary_covariance(2 * torch.eye(3), torch.eye(3), 0.1, 2,
                                                              device=CPU, dtype=F32),
    "static_kernels": lambda: ndk.static_kernels(draw(3, 4), draw(2, 4), weight_variance=1.0,
                                                 activation="relu", depth=2, device=CPU, dtype=F32)[1],
    "solve_volterra": volterra,
    "simulate_langevin": langevin,
    "limiting_flow": lambda: singular_limit.limiting_flow("dropout", torch.full((2, 4), 0.7, dtype=F32),
                                                          torch.linspace(0, 1, 5), diagonal_network()),
    "run_noisy_gd": lambda: singular_limit.run_noisy_gd("label", diagonal_network(),
                                                        torch.full((2, 4), 0.7, dtype=F32), 0.05, 5,
                                                        sigma=0.3, generator=generator()).state,
    "run_toy_sgd": lambda: ni.run_toy_sgd(tuple(torch.full((4,), v, dtype=F32) for v in (1.5, 1.0, 0.5)),
                                          0.05, 0.5, 5, generator=generator(), device=CPU,
                                          dtype=F32).state[0],
}


@pytest.mark.parametrize("name", KERNELS)
def test_float32_in_float32_out(name):
    out = KERNELS[name]()
    assert out.dtype == F32 and out.device == CPU
    assert torch.isfinite(out).all()
