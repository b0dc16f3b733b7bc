"""Unit tests of learndyn.ndk: the prior correlation, two-time kernels, NDK, Volterra solver, limits,
finite-width Langevin ensembles and input validation."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from learndyn import ndk
from learndyn.backend import make_generator

PHYSICS = dict(temperature=0.3, prior_variance=1.2, init_variance=0.5)


def random_inputs(n, dim, device, seed=0):
    generator = make_generator(seed, device=device)
    return torch.randn(n, dim, generator=generator, device=device, dtype=torch.float64)


def test_prior_correlation_limits(device):
    times = torch.linspace(0, 3, 7, device=device, dtype=torch.float64)
    at_zero = ndk.prior_correlation(0.0, 0.0, **PHYSICS, device=device)
    assert float(at_zero) == pytest.approx(PHYSICS["init_variance"], rel=1e-15)
    # long times: stationary, depends on t - t' only
    late = ndk.prior_correlation(200.0 + times, 200.0, **PHYSICS, device=device)
    k = PHYSICS["temperature"] / PHYSICS["prior_variance"]
    expected = PHYSICS["prior_variance"] * torch.exp(-k * times)
    torch.testing.assert_close(late, expected, rtol=1e-12, atol=1e-14)
    # symmetric in its times, and zero temperature freezes it at sigma_0^2
    torch.testing.assert_close(ndk.prior_correlation(times[:, None], times, **PHYSICS, device=device),
                               ndk.prior_correlation(times, times[:, None], **PHYSICS, device=device))
    frozen = ndk.prior_correlation(times[:, None], times, temperature=0.0, prior_variance=1.0,
                                   init_variance=0.7, device=device)
    torch.testing.assert_close(frozen, torch.full_like(frozen, 0.7))


@pytest.mark.parametrize("activation", ndk.ACTIVATIONS)
def test_kernels_symmetric_and_psd(device, activation):
    x = random_inputs(6, 5, device)
    times = torch.tensor([0.0, 0.7, 2.5], device=device, dtype=torch.float64)
    # the block matrix over (time, input) pairs of the prior output covariance is a covariance
    kernels = ndk.two_time_kernels(x, x, times[:, None], times[None, :], activation=activation,
                                   depth=2, **PHYSICS, device=device)
    for name in ("output_covariance", "ndk"):
        value = getattr(kernels, name)                       # (3, 3, 6, 6)
        block = value.permute(0, 2, 1, 3).reshape(18, 18)
        torch.testing.assert_close(block, block.T, rtol=1e-12, atol=1e-14)
        if name == "output_covariance":
            assert float(torch.linalg.eigvalsh(block).min()) > -1e-12
    nngp, ntk = ndk.static_kernels(x, x, weight_variance=0.8, activation=activation, depth=3,
                                   device=device)
    for kernel in (nngp, ntk):
        torch.testing.assert_close(kernel, kernel.T, rtol=1e-12, atol=1e-14)
        assert float(torch.linalg.eigvalsh(kernel).min()) > -1e-12


def test_linear_closed_form(device):
    x = random_inputs(4, 3, device)
    t1 = torch.tensor([0.0, 1.0, 4.0], device=device, dtype=torch.float64)[:, None]
    t2 = torch.tensor([0.5, 3.0], device=device, dtype=torch.float64)[None, :]
    gram = x @ x.T / 3
    c = ndk.prior_correlation(t1, t2, **PHYSICS, device=device)[..., None, None]
    propagator = torch.exp(-PHYSICS["temperature"] / PHYSICS["prior_variance"] * (t1 - t2).abs())
    for depth in (1, 2, 3):
        kernels = ndk.two_time_kernels(x, x, t1, t2, activation="linear", depth=depth, **PHYSICS,
                                       device=device)
        torch.testing.assert_close(kernels.ndk, (depth + 1) * propagator[..., None, None]
                                   * c ** depth * gram, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(kernels.nngp, c ** depth * gram, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ndk.ACTIVATIONS)
def test_ntk_and_nngp_are_special_cases(device, activation):
    x = random_inputs(5, 4, device)
    at_zero = ndk.two_time_kernels(x, x, 0.0, 0.0, activation=activation, depth=2, **PHYSICS,
                                   device=device)
    nngp0, ntk0 = ndk.static_kernels(x, x, weight_variance=PHYSICS["init_variance"],
                                     activation=activation, depth=2, device=device)
    torch.testing.assert_close(at_zero.ndk, ntk0, rtol=1e-7, atol=1e-12)   # arccos at cos = 1
    torch.testing.assert_close(at_zero.output_covariance, nngp0, rtol=1e-7, atol=1e-12)
    late = ndk.two_time_kernels(x, x, 500.0, 500.0, activation=activation, depth=2, **PHYSICS,
                                device=device)
    nngp_eq, _ = ndk.static_kernels(x, x, weight_variance=PHYSICS["prior_variance"],
                                    activation=activation, depth=2, device=device)
    torch.testing.assert_close(late.output_covariance, nngp_eq, rtol=1e-7, atol=1e-12)


def test_relu_and_erf_maps_against_quadrature(device):
    # E[phi(u) phi(v)] by Gauss-Hermite quadrature on a 2-d Gaussian
    points, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()
    q1, q2, c = 0.8, 1.5, 0.6
    u = math.sqrt(q1) * points[:, None]
    v = c / math.sqrt(q1) * points[:, None] + math.sqrt(q2 - c * c / q1) * points[None, :]
    weight = w[:, None] * w[None, :]
    tensors = [torch.tensor(value, device=device, dtype=torch.float64) for value in (q1, q2, c)]
    for activation, phi, dphi in [
            ("erf", lambda z: np.vectorize(math.erf)(z),
             lambda z: 2 / math.sqrt(math.pi) * np.exp(-z * z)),
            ("relu", lambda z: np.maximum(z, 0), lambda z: (z > 0).astype(float))]:
        value, derivative = ndk.gaussian_maps(activation, *tensors)
        expected = float((weight * phi(u) * phi(v)).sum())
        # Gauss-Hermite converges slowly across the ReLU kink (1e-2), spectrally for erf (1e-10)
        assert float(value) == pytest.approx(expected, rel=1e-2 if activation == "relu" else 1e-10)
        if activation == "erf":
            expected_d = float((weight * dphi(u) * dphi(v)).sum())
            assert float(derivative) == pytest.approx(expected_d, rel=1e-10)


def test_volterra_matches_double_loop_and_ntk(device):
    times = torch.linspace(0, 6, 61, device=device, dtype=torch.float64)
    train, test, _ = ndk.symmetric_task_kernels(times, 0.6, activation="erf", depth=2,
                                                **PHYSICS, device=device)
    g, f = ndk.solve_volterra(train, torch.ones(1, device=device, dtype=torch.float64), times, test,
                              device=device)
    reference = ndk.volterra_double_loop(train[..., 0, 0].cpu(), 1.0, times.cpu())
    torch.testing.assert_close(g[:, 0].cpu(), torch.tensor(reference, dtype=torch.float64),
                               rtol=1e-12, atol=1e-14)
    # at T = 0 the kernel is the constant NTK: compare with the closed form (trapezoid error O(h^2))
    frozen = dict(temperature=0.0, prior_variance=1.0, init_variance=0.5)
    x_train, y, x_test = ndk.synthetic_task(4, 0.6, device=device)
    inputs = torch.cat([x_train, x_test])
    _, ntk = ndk.static_kernels(inputs, inputs, weight_variance=0.5, activation="erf", depth=2,
                                device=device)
    train0, test0, _ = ndk.symmetric_task_kernels(times, 0.6, activation="erf", depth=2, **frozen,
                                                  device=device)
    g0, f0 = ndk.solve_volterra(train0, torch.ones(1, device=device, dtype=torch.float64), times,
                                test0, device=device)
    ntk_train, ntk_test = ndk.ntk_predictor(ntk[:4, :4], ntk[4:, :4], y, times, device=device)
    torch.testing.assert_close(g0[:, 0], (ntk_train * y).mean(-1), rtol=0, atol=2e-3)
    torch.testing.assert_close(f0[:, 0], ntk_test[:, 0], rtol=0, atol=2e-3)


def test_nngp_equilibrium_is_gp_regression(device):
    x = random_inputs(5, 4, device)
    y = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0], device=device, dtype=torch.float64)
    kernel, _ = ndk.static_kernels(x, x, weight_variance=1.0, activation="relu", depth=2,
                                   device=device)
    train, test = ndk.nngp_equilibrium(kernel, kernel[:2], y, 0.1, device=device)
    torch.testing.assert_close(y - train, 0.1 * torch.linalg.solve(kernel + 0.1 * torch.eye(5,
                               device=device, dtype=torch.float64), y))
    torch.testing.assert_close(test, train[:2])


def test_decorrelated_kernel_is_the_long_lag_limit(device):
    x = random_inputs(4, 6, device)
    for activation in ndk.ACTIVATIONS:
        late = ndk.two_time_kernels(x, x, 400.0, 0.0, activation=activation, depth=2,
                                    temperature=0.1, prior_variance=1.0, init_variance=1.0,
                                    device=device).nngp
        limit = ndk.decorrelated_kernel(x, x, weight_variance=1.0, activation=activation, depth=2,
                                        device=device)
        torch.testing.assert_close(late, limit, rtol=0, atol=1e-12)


def test_langevin_ensemble_is_batched_and_antithetic(device):
    x_train, y, x_test = ndk.synthetic_task(2, 0.5, device=device)
    generator = make_generator(3, device=device)
    weights = ndk.init_networks(8, [3, 16, 16], init_variance=1.0, generator=generator,
                                device=device)
    assert [tuple(w.shape) for w in weights] == [(8, 16, 3), (8, 16, 16), (8, 16)]
    out0 = ndk.network_forward(weights, x_train, "relu")[0]
    torch.testing.assert_close(out0[:4], -out0[4:])              # antithetic readouts
    # prior-only dynamics keeps the antithetic symmetry exactly
    run = ndk.simulate_langevin(weights, x_train, y, x_test, activation="relu", temperature=0.1,
                                prior_variance=1.0, dt=0.05, n_steps=10, learning=False,
                                generator=generator)
    torch.testing.assert_close(run.train[-1, :4], -run.train[-1, 4:])
    # the manual back-propagation equals autograd
    leaves = [w.clone().requires_grad_(True) for w in weights]
    output = ndk.network_forward(tuple(leaves), x_train, "relu")[0]
    (0.5 * (output - y).square().sum()).backward()
    for manual, leaf in zip(ndk.loss_gradients(weights, x_train, y, "relu"), leaves, strict=True):
        torch.testing.assert_close(manual, leaf.grad, rtol=1e-12, atol=1e-12)


def test_bad_input_raises(device):
    x = random_inputs(3, 4, device)
    with pytest.raises(ValueError, match="prior_variance"):
        ndk.prior_correlation(0.0, 1.0, temperature=0.1, prior_variance=-1.0, init_variance=1.0)
    with pytest.raises(ValueError, match="temperature"):
        ndk.two_time_kernels(x, x, 0.0, 1.0, temperature=float("nan"), prior_variance=1.0,
                             init_variance=1.0, device=device)
    with pytest.raises(ValueError, match="t1"):
        ndk.two_time_kernels(x, x, -1.0, 1.0, **PHYSICS, device=device)
    with pytest.raises(ValueError, match="x2"):
        ndk.two_time_kernels(x, x[:, :2], 0.0, 1.0, **PHYSICS, device=device)
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="x1"):
        ndk.static_kernels(bad, x, weight_variance=1.0, device=device)
    with pytest.raises(ValueError, match="activation"):
        ndk.static_kernels(x, x, weight_variance=1.0, activation="tanh", device=device)
    with pytest.raises(ValueError, match="depth"):
        ndk.static_kernels(x, x, weight_variance=1.0, depth=0, device=device)
    with pytest.raises(ValueError, match="weight_variance"):
        ndk.static_kernels(x, x, weight_variance=0.0, device=device)
    times = torch.linspace(0, 1, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match="kernel_train"):
        ndk.solve_volterra(torch.zeros(5, 5, 2, 2), torch.ones(1), times)
    with pytest.raises(ValueError, match="times"):
        ndk.solve_volterra(torch.zeros(5, 5, 1, 1), torch.ones(1), times.flip(0))
    with pytest.raises(ValueError, match="rho"):
        ndk.synthetic_task(4, 1.5)
    with pytest.raises(ValueError, match="n_replicas"):
        ndk.init_networks(3, [3, 4], init_variance=1.0)


@pytest.mark.parametrize("activation", ndk.ACTIVATIONS)
def test_drift_kernel_at_the_freezing_time_is_the_ndk(device, activation):
    x = random_inputs(4, 5, device)
    s = torch.linspace(0.0, 2.0, 7, device=device, dtype=torch.float64)
    for depth in (1, 3):
        frozen = ndk.drift_kernels(x, x[:3], 2.0, s, freeze_time=2.0, activation=activation, depth=depth,
                                   **PHYSICS, device=device)
        ordinary = ndk.two_time_kernels(x, x[:3], 2.0, s, activation=activation, depth=depth, **PHYSICS,
                                        device=device)
        for name in ("ndk", "nngp", "derivative", "output_covariance"):
            torch.testing.assert_close(getattr(frozen, name), getattr(ordinary, name), rtol=1e-14, atol=0)
    # later times: the readout terms carry C(t0, s) and e^{-k(t0 - s)} instead of C(t, s), e^{-k(t - s)}
    later = ndk.drift_kernels(x, x, 3.5, s, freeze_time=2.0, activation=activation, depth=1, **PHYSICS,
                              device=device)
    ordinary = ndk.two_time_kernels(x, x, 3.5, s, activation=activation, depth=1, **PHYSICS, device=device)
    k = PHYSICS["temperature"] / PHYSICS["prior_variance"]
    readout = ndk.prior_correlation(2.0, s, **PHYSICS, device=device)[:, None, None]
    hidden = ndk.prior_correlation(3.5, s, **PHYSICS, device=device)[:, None, None]
    # depth 1: K_d = e^{-k(t-s)} [K^1 + C Kdot^1 K^0],
    # K_dr = e^{-k(t0-s)} K^1 + C(t0,s) Kdot^1 e^{-k(t-s)} K^0
    gram = x @ x.T / 5
    propagator = torch.exp(-k * (3.5 - s))[:, None, None]
    expected = (torch.exp(-k * (2.0 - s))[:, None, None] * ordinary.nngp
                + readout * ordinary.derivative * propagator * gram)
    torch.testing.assert_close(later.ndk, expected, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(later.output_covariance, readout / hidden * ordinary.output_covariance,
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("activation", ndk.ACTIVATIONS)
def test_drift_kernel_integrates_to_the_two_time_nngp_kernel(device, activation):
    # stationary prior (sigma_0^2 = sigma^2): int_{-oo}^{t0} K_dr(t, t0, s) ds = sigma^2 K^L(t, t0) / T
    # (chapter 5, Eq. ndk-drift). u = e^{-k (t0 - s)} maps s in [0, t0] to [e^{-k t0}, 1]; Gauss-Legendre
    # with n and 2 n nodes, whose difference bounds the quadrature error; the part s < 0 is e^{-k t0}.
    physics = dict(temperature=0.5, prior_variance=1.3, init_variance=1.3)
    k = physics["temperature"] / physics["prior_variance"]
    t0, t = 60.0, 61.0
    x = random_inputs(3, 4, device)
    estimates = []
    for n in (200, 400):
        nodes, weights = np.polynomial.legendre.leggauss(n)
        low = math.exp(-k * t0)
        u = torch.tensor(low + (1 - low) * (nodes + 1) / 2, device=device, dtype=torch.float64)
        w = torch.tensor(weights * (1 - low) / 2, device=device, dtype=torch.float64)
        s = t0 + torch.log(u) / k
        kernel = ndk.drift_kernels(x, x, t, s.clamp(0.0, t0), freeze_time=t0, activation=activation, depth=2,
                                   **physics, device=device).ndk
        estimates.append(torch.einsum("n,nab->ab", w / (k * u), kernel))
    expected = physics["prior_variance"] / physics["temperature"] * ndk.two_time_kernels(
        x, x, t, t0, activation=activation, depth=2, **physics, device=device).nngp
    tolerance = (estimates[0] - estimates[1]).abs() + 10 * math.exp(-k * t0) * expected.abs().max() + 1e-12
    assert bool(((estimates[1] - expected).abs() <= tolerance).all())
    # the equilibrium formula needs the stationary prior: with sigma_0^2 != sigma^2 at t0 = 2 it fails
    transient = dict(physics, init_variance=4.0)
    s = torch.linspace(0.0, 2.0, 801, device=device, dtype=torch.float64)
    kernel = ndk.drift_kernels(x, x, 3.0, s, freeze_time=2.0, activation=activation, depth=2, **transient,
                               device=device).ndk
    integral = torch.einsum("n,nab->ab", ndk.trapezoid_weights(s), kernel)
    stationary = ndk.drift_kernels(x, x, 3.0, s, freeze_time=2.0, activation=activation, depth=2, **physics,
                                   device=device).ndk
    stationary_integral = torch.einsum("n,nab->ab", ndk.trapezoid_weights(s), stationary)
    assert float((integral - stationary_integral).abs().max()) > 1e-2


def test_drift_predictor(device):
    x_train, y, x_test = ndk.synthetic_task(4, 0.7, device=device)
    inputs = torch.cat([x_train, x_test])
    physics = dict(activation="erf", depth=2, temperature=0.2, prior_variance=1.0, init_variance=2.0)
    grid = torch.linspace(0.0, 4.0, 81, device=device, dtype=torch.float64)
    lags = torch.tensor([0.0, 1.0, 5.0, 400.0], device=device, dtype=torch.float64)
    drift, train = ndk.drift_predictor(inputs, x_train, y, grid, 2.0, 2.0 + lags, **physics, device=device)
    assert drift.shape == (4, 5) and train.shape == (41, 4)
    # at t = t0 it is the Volterra test predictor on the same nodes (Eq. ndk-volterra-test)
    kernel = ndk.two_time_kernels(x_train, x_train, grid[:41, None], grid[None, :41], **physics,
                                  device=device).ndk
    test_kernel = ndk.two_time_kernels(inputs, x_train, grid[:41, None], grid[None, :41], **physics,
                                       device=device).ndk
    volterra_train, volterra_test = ndk.solve_volterra(kernel, y, grid[:41], test_kernel, device=device)
    torch.testing.assert_close(train, volterra_train, rtol=1e-13, atol=1e-14)
    torch.testing.assert_close(drift[0], volterra_test[-1], rtol=1e-12, atol=1e-14)
    # the mean output decays, and for an odd activation it vanishes once C(t, t0) ~ e^{-80} is gone
    assert bool((drift[1:3].abs() < drift[:2].abs()).all())
    assert float(drift[-1].abs().max()) < 1e-30
    # batched over times of any shape; t0 = 0 learns nothing
    batched, _ = ndk.drift_predictor(inputs, x_train, y, grid, 2.0, (2.0 + lags).reshape(2, 2), **physics,
                                     device=device)
    torch.testing.assert_close(batched.reshape(4, 5), drift, rtol=1e-14, atol=0)
    nothing, _ = ndk.drift_predictor(inputs, x_train, y, grid, 0.0, lags, **physics, device=device)
    assert float(nothing.abs().max()) == 0.0


def test_drift_bad_input_raises(device):
    x = random_inputs(3, 4, device)
    y = torch.tensor([1.0, -1.0, 1.0], device=device, dtype=torch.float64)
    grid = torch.linspace(0.0, 2.0, 11, device=device, dtype=torch.float64)
    physics = dict(activation="relu", depth=1, **PHYSICS, device=device)
    with pytest.raises(ValueError, match="t must hold times >= freeze_time"):
        ndk.drift_kernels(x, x, 1.0, 0.5, freeze_time=1.5, **physics)
    with pytest.raises(ValueError, match="s must hold times <= freeze_time"):
        ndk.drift_kernels(x, x, 2.0, 1.8, freeze_time=1.5, **physics)
    with pytest.raises(ValueError, match="freeze_time"):
        ndk.drift_kernels(x, x, 2.0, 1.0, freeze_time=-1.0, **physics)
    with pytest.raises(ValueError, match="freeze_time=1.1 is not a node of times"):
        ndk.drift_predictor(x, x, y, grid, 1.1, 2.0, **physics)
    with pytest.raises(ValueError, match="t must hold times >= freeze_time"):
        ndk.drift_predictor(x, x, y, grid, 1.2, 1.0, **physics)
    with pytest.raises(ValueError, match="targets"):
        ndk.drift_predictor(x, x, y[:2], grid, 1.2, 2.0, **physics)
    with pytest.raises(ValueError, match="times"):
        ndk.drift_predictor(x, x, y, grid + 0.1, 1.2, 2.0, **physics)
    with pytest.raises(ValueError, match="readout_correlation and readout_propagator"):
        ndk.kernels_from_gram(1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, readout_correlation=0.5)


# --------------------------------------------------------------------------------------------
# The helpers of the chapter's experiments


def small_ensemble(device, seed=5, n=8, width=16):
    x_train, y, x_test = ndk.synthetic_task(2, 0.5, device=device)
    weights = ndk.init_networks(n, [3, width], init_variance=2.0,
                                generator=make_generator(seed, device=device), device=device)
    return weights, x_train, y, x_test


LANGEVIN = dict(activation="erf", temperature=0.2, prior_variance=1.0)


def test_step_halving_fine_run_is_the_plain_simulation(device):
    weights, x_train, y, x_test = small_ensemble(device)
    fine, coarse = ndk.simulate_step_halving(weights, x_train, y, x_test, dt=0.05, n_steps=12,
                                             record=4, generator=make_generator(1, device=device),
                                             **LANGEVIN)
    plain = ndk.simulate_langevin(weights, x_train, y, x_test, dt=0.05, n_steps=12, record=4,
                                  generator=make_generator(1, device=device), **LANGEVIN)
    torch.testing.assert_close(fine.train, plain.train, rtol=0, atol=0)
    torch.testing.assert_close(fine.times, plain.times)
    assert coarse.train.shape == fine.train.shape
    # the coarse run is a first-order approximation of the same path: close, not equal
    gap = float((coarse.train - fine.train).abs().max())
    assert 0 < gap < 0.1


def test_step_halving_couples_the_noise_exactly(device):
    # zero inputs: every gradient vanishes, only the exact Ornstein-Uhlenbeck part acts, so the
    # coarse run with the combined noise must follow the fine run to rounding
    weights, _, y, x_test = small_ensemble(device)
    zeros = torch.zeros(2, 3, device=device, dtype=torch.float64)
    fine, coarse = ndk.simulate_step_halving(weights, zeros, y, x_test, dt=0.3, n_steps=10,
                                             record=2, generator=make_generator(2, device=device),
                                             **LANGEVIN)
    for a, b in zip(fine.state, coarse.state, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fine.test, coarse.test, rtol=1e-12, atol=1e-12)


def test_step_halving_bad_input(device):
    weights, x_train, y, x_test = small_ensemble(device)
    with pytest.raises(ValueError, match="n_steps"):
        ndk.simulate_step_halving(weights, x_train, y, x_test, dt=0.1, n_steps=5, **LANGEVIN)
    with pytest.raises(ValueError, match="record"):
        ndk.simulate_step_halving(weights, x_train, y, x_test, dt=0.1, n_steps=6, record=[0, 3],
                                  **LANGEVIN)


def test_join_runs(device):
    weights, x_train, y, x_test = small_ensemble(device)
    generator = make_generator(3, device=device)
    first = ndk.simulate_langevin(weights, x_train, y, x_test, dt=0.1, n_steps=4, record=2,
                                  generator=generator, **LANGEVIN)
    second = ndk.simulate_langevin(first.state, x_train, y, x_test, dt=0.1, n_steps=4,
                                   record=[2, 4], generator=generator, **LANGEVIN)
    joined = ndk.join_runs(first, second, 0.4)
    torch.testing.assert_close(joined.times, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8],
                                                          device=device, dtype=torch.float64))
    assert joined.train.shape[0] == 5 and joined.state is second.state


def test_pair_moments_and_width_extrapolation(device):
    samples = torch.tensor([[1.0, 3.0, 5.0, 3.0, 1.0, 3.0]], device=device, dtype=torch.float64)
    mean, se = ndk.pair_moments(samples, dim=1)                 # pairs (1,3), (3,1), (5,3)
    torch.testing.assert_close(mean, torch.tensor([8.0 / 3.0], device=device,
                                                  dtype=torch.float64))
    torch.testing.assert_close(se, torch.tensor([2.0 / 3.0], device=device,
                                                dtype=torch.float64))      # std 2/sqrt(3)
    with pytest.raises(ValueError, match="replicas"):
        ndk.pair_moments(samples[:, :3], dim=1)
    narrow = (torch.tensor(1.2), torch.tensor(0.3))
    wide = (torch.tensor(1.1), torch.tensor(0.2))
    value, error = ndk.width_extrapolation(narrow, wide)
    assert float(value) == pytest.approx(1.0) and float(error) == pytest.approx(0.5)


def test_time_grid_and_refine(device):
    grid = ndk.time_grid(2.0, 40.0, 5, 4, device=device)
    assert grid.numel() == 8 and float(grid[0]) == 0.0
    assert float(grid[-1]) == pytest.approx(40.0) and bool((torch.diff(grid) > 0).all())
    fine = ndk.refine(grid)
    assert fine.numel() == 15
    torch.testing.assert_close(fine[::2], grid, rtol=0, atol=0)
    torch.testing.assert_close(fine[1::2], (grid[1:] + grid[:-1]) / 2)
    with pytest.raises(ValueError, match="t_switch"):
        ndk.time_grid(3.0, 2.0, 5, 4)
    with pytest.raises(ValueError, match="times"):
        ndk.refine(torch.zeros(1))


def test_symmetric_solution_is_the_vector_volterra_solution(device):
    physics = dict(activation="erf", depth=2, temperature=0.1, prior_variance=1.0,
                   init_variance=0.5, device=device)
    times = ndk.time_grid(1.0, 10.0, 11, 8, device=device)
    x_train, y, x_test = ndk.synthetic_task(4, 0.6, device=device)
    train = ndk.two_time_kernels(x_train, x_train, times[:, None], times[None, :], **physics).ndk
    test = ndk.two_time_kernels(x_test, x_train, times[:, None], times[None, :], **physics).ndk
    f_train, f_test = ndk.solve_volterra(train, y, times, test, device=device)
    g, f = ndk.symmetric_solution(times, 0.6, **physics)
    torch.testing.assert_close(f_train * y, g[:, None].expand(-1, 4), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f_test[:, 0], f, rtol=1e-10, atol=1e-12)


def test_empirical_kernels(device):
    generator = make_generator(4, device=device)
    x = random_inputs(3, 5, device)
    weights = ndk.init_networks(6, [5, 32], init_variance=1.0, antithetic=False,
                                generator=generator, device=device)
    samples = ndk.empirical_kernels(weights, weights, x, 0.0, activation="linear",
                                    temperature=0.1, prior_variance=1.0)
    assert set(samples) == {"nngp", "derivative", "ndk", "first_layer"}
    assert all(tuple(v.shape) == (6, 3, 3) for v in samples.values())
    torch.testing.assert_close(samples["derivative"], torch.ones_like(samples["derivative"]))
    gradients = ndk.output_gradients(weights, x, "linear")
    torch.testing.assert_close(samples["ndk"], gradients @ gradients.transpose(1, 2))
    torch.testing.assert_close(samples["nngp"], samples["first_layer"])     # one hidden layer


def test_fluctuation_dissipation_sides_converge_at_second_order(device):
    x = random_inputs(3, 4, device)
    physics = dict(activation="erf", depth=2, temperature=0.5, prior_variance=1.0,
                   init_variance=2.0, device=device)
    response, fine, coarse = ndk.fluctuation_dissipation_sides(x, 60.0, 52.0, 1e-2, **physics)
    ratio = float((coarse - response).abs().max() / (fine - response).abs().max())
    assert 3.5 < ratio < 4.5


def test_integrated_ndk_is_the_gp_kernel_over_t(device):
    x = random_inputs(3, 4, device)
    integral = ndk.integrated_ndk(x, 200, activation="linear", depth=2, temperature=0.5,
                                  prior_variance=1.0, device=device)
    k_gp = ndk.static_kernels(x, x, weight_variance=1.0, activation="linear", depth=2,
                              device=device)[0]
    torch.testing.assert_close(integral, k_gp / 0.5, rtol=1e-10, atol=1e-12)


def test_threshold_accuracy():
    labels = torch.tensor([1.0, 1.0, -1.0, -1.0])
    assert ndk.threshold_accuracy(torch.tensor([3.0, 2.0, 1.0, 0.0]), labels) == 1.0
    assert ndk.threshold_accuracy(torch.tensor([0.0, 1.0, 2.0, 3.0]), labels) == 1.0
    # ties are never split: equal values carry both labels, so at most 3 of 4 are right
    assert ndk.threshold_accuracy(torch.tensor([1.0, 2.0, 2.0, 0.0]), labels) == 0.75
    with pytest.raises(ValueError, match="labels"):
        ndk.threshold_accuracy(torch.zeros(3), labels)


def test_digit_pair_and_frozen_predictors(device):
    x, y, raw = ndk.digit_pair((0, 1), per_class=10, device=device)
    assert tuple(x.shape) == (20, 64) and tuple(raw.shape) == (20, 64)
    assert float(y[:10].min()) == 1.0 and float(y[10:].max()) == -1.0
    assert float(x.square().sum(1).mean() / 64) == pytest.approx(1.0)
    lags = torch.tensor([0.0, 2400.0], device=device, dtype=torch.float64)
    frozen, limit, last, limit_kernel = ndk.frozen_predictors(x, y, lags, activation="relu",
                                                              depth=2, temperature=0.01,
                                                              device=device)
    k_gp = ndk.static_kernels(x, x, weight_variance=1.0, activation="relu", depth=2,
                              device=device)[0]
    eye = torch.eye(20, device=device, dtype=torch.float64)
    torch.testing.assert_close(frozen[0], k_gp @ torch.linalg.solve(k_gp + 0.01 * eye, y))
    torch.testing.assert_close(last, limit_kernel, rtol=0, atol=1e-9)
    assert tuple(limit.shape) == (20,)


def test_stopping_scan_and_winning_ratios(device):
    grid = torch.cat([torch.linspace(0.0, 2.0, 51, device=device, dtype=torch.float64),
                      torch.linspace(2.0, 40.0, 191, device=device, dtype=torch.float64)[1:]])
    scan = ndk.stopping_scan([0.5, 4.0], grid, rho=0.73, activation="erf", depth=2,
                             temperature=0.1, device=device)
    assert set(scan) == {0.5, 4.0}
    assert all(v["best"] <= v["last"] and v["error"] >= 0 for v in scan.values())
    assert ndk.winning_ratios(scan, float(grid[-1])) == [4.0]     # the large ratio overshoots
    rows = {1.0: dict(t_best=5.0, best=0.1, ntk=0.2, gp=0.3, error=1e-3),
            2.0: dict(t_best=39.5, best=0.1, ntk=0.2, gp=0.3, error=1e-3)}
    assert ndk.winning_ratios(rows, 40.0) == [1.0]


REFERENCE = Path(__file__).parent / "reference" / "nt_kernels.json"


@pytest.mark.parametrize("parameterization", ["standard", "ntk"])
def test_static_kernels_agree_with_neural_tangents(parameterization):
    """NNGP and NTK within 1e-13 relative of neural-tangents 0.6.5 (tests/reference/make_nt_kernels.py):
    ReLU and erf, W_std = 1 and 1.5, depths 1-3, identical rows included."""
    table = json.loads(REFERENCE.read_text())
    x1 = torch.tensor(table["x1"], dtype=torch.float64)
    x2 = torch.tensor(table["x2"], dtype=torch.float64)
    for case in table["cases"]:
        w = case["w_std"] ** 2
        nngp, ntk = ndk.static_kernels(x1, x2, weight_variance=w, activation=case["activation"],
                                       depth=case["depth"], parameterization=parameterization,
                                       device="cpu")
        expected_ntk = torch.tensor(case["ntk"], dtype=torch.float64)
        if parameterization == "standard":
            expected_ntk = expected_ntk / w
        torch.testing.assert_close(nngp, torch.tensor(case["nngp"], dtype=torch.float64),
                                   rtol=1e-13, atol=0)
        torch.testing.assert_close(ntk, expected_ntk, rtol=1e-13, atol=0)
    with pytest.raises(ValueError, match="parameterization"):
        ndk.static_kernels(x1, x2, weight_variance=1.0, parameterization="mean-field")


def test_relu_angle_is_exactly_zero_on_identical_inputs():
    x = torch.randn(5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    q = (x * x).sum(1) / 7  # rounded differently from the diagonal of x x^T / 7
    value, derivative = ndk.gaussian_maps("relu", q[:, None], q[None, :], (x @ x.T) / 7)
    assert torch.equal(derivative.diagonal(), torch.full((5,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(value.diagonal(), q / 2, rtol=1e-15, atol=0)


def test_predictor_variance_from_prior_to_posterior(device):
    x_train, x = random_inputs(3, 4, device), random_inputs(2, 4, device, seed=1)
    physics = dict(activation="relu", depth=2, temperature=0.5, prior_variance=1.0, init_variance=2.0,
                   device=device)
    coarse, fine = (ndk.predictor_variance(x_train, x, torch.linspace(0.0, 24.0, n, device=device,
                                                                     dtype=torch.float64), **physics)
                    for n in (61, 121))
    assert fine.shape == (121, 2)
    prior, _ = ndk.static_kernels(x, x, weight_variance=2.0, activation="relu", depth=2, device=device)
    torch.testing.assert_close(fine[0], prior.diagonal(), rtol=1e-12, atol=0)   # t = 0: the prior
    inputs = torch.cat([x_train, x])
    gp, _ = ndk.static_kernels(inputs, inputs, weight_variance=1.0, activation="relu", depth=2,
                               device=device)
    eye = torch.eye(3, device=device, dtype=torch.float64)
    posterior = gp[3:, 3:].diagonal() - (gp[3:, :3] * torch.linalg.solve(gp[:3, :3] + 0.5 * eye,
                                                                         gp[:3, 3:]).T).sum(1)
    gap_coarse, gap_fine = ((v[-1] - posterior).abs().max() for v in (coarse, fine))
    assert float(gap_fine) < 3e-2 * float(posterior.min())      # equilibrium: the NNGP posterior
    assert 3.0 < float(gap_coarse / gap_fine) < 5.0             # second order in the step
    assert bool((fine > 0).all())


def test_predictor_variance_rejects_bad_grids(device):
    x = random_inputs(2, 3, device)
    with pytest.raises(ValueError, match="times"):
        ndk.predictor_variance(x, x, torch.tensor([0.5, 1.0], device=device), temperature=0.1,
                               prior_variance=1.0, init_variance=1.0, device=device)


def test_two_width_runs_shapes_and_widths(device):
    x_train, y, x_test = ndk.synthetic_task(4, 0.5, device=device)
    generators = tuple(make_generator(seed, device=device) for seed in (1, 2, 3))
    runs = ndk.two_width_runs(x_train, y, x_test, widths=([6, 5], [12, 10]), n_replicas=4,
                              init_variance=1.0, n_steps=4, record=2, generators=generators,
                              activation="erf", temperature=0.1, prior_variance=1.0, dt=0.05)
    assert set(runs) == {"fine", "coarse", "wide"}
    for run in runs.values():
        assert run.train.shape == (3, 4, 4) and run.test.shape == (3, 4, 1)
    assert [tuple(w.shape) for w in runs["fine"].state] == [(4, 6, 5), (4, 5, 6), (4, 5)]
    assert [tuple(w.shape) for w in runs["wide"].state] == [(4, 12, 5), (4, 10, 12), (4, 10)]
    torch.testing.assert_close(runs["fine"].train[0], runs["coarse"].train[0])   # same start
    with pytest.raises(ValueError, match="widths"):
        ndk.two_width_runs(x_train, y, x_test, widths=([6],), n_replicas=4, init_variance=1.0,
                           n_steps=4, record=2, generators=generators, temperature=0.1,
                           prior_variance=1.0, dt=0.05)


def test_extrapolated_trapezoid_is_fourth_order():
    def solution(times):
        kernel = torch.ones(len(times), len(times), 1, 1, dtype=torch.float64)
        return ndk.solve_volterra(kernel, torch.ones(1, dtype=torch.float64), times, device="cpu")[0][:, 0]

    exact = lambda t: 1 - torch.exp(-t)  # noqa: E731 - f = int_0^t (1 - f): f = 1 - exp(-t)
    coarse = [torch.linspace(0, 3, 1 + 10 * 2**k, dtype=torch.float64) for k in range(3)]
    extrapolated = [ndk.extrapolate_trapezoid(solution(coarse[k]), solution(coarse[k + 1])) for k in range(2)]
    errors = [(extrapolated[k] - exact(coarse[k])).abs().max() for k in range(2)]
    assert 3.8 < math.log2(errors[0] / errors[1]) < 4.2
    with pytest.raises(ValueError, match="refined grid"):
        ndk.extrapolate_trapezoid(torch.zeros(5), torch.zeros(8))
