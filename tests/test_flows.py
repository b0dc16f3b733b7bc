import math

import numpy as np
import pytest
import torch

from learndyn.flows import (
    drift_derivatives,
    integrate_moments,
    moment_derivatives,
    rk4,
    solve_stiff,
)


def test_rk4_matches_exponential_to_fourth_order(device):
    y0 = torch.tensor([1.0, 2.0], dtype=torch.float64, device=device)
    rates = torch.tensor([-1.0, 0.5], dtype=torch.float64, device=device)
    errors = []
    for substeps in (10, 20):
        path = rk4(lambda t, y: rates * y, y0, [0.0, 2.0], substeps=substeps)
        errors.append((path[-1] - y0 * torch.exp(2 * rates)).abs().max().item())
    assert errors[1] < 1e-6
    assert 12 < errors[0] / errors[1] < 20  # halving h divides the error by 2^4 = 16


def test_rk4_time_dependent_rhs_batched(device):
    y0 = torch.zeros(4, 3, dtype=torch.float64, device=device)
    path = rk4(lambda t, y: torch.full_like(y, math.cos(t)), y0, np.linspace(0, 1, 5), substeps=8)
    assert path.shape == (5, 4, 3)
    assert torch.allclose(path[-1], torch.full_like(y0, math.sin(1.0)), atol=1e-9)


def test_rk4_rejects_bad_grid():
    with pytest.raises(ValueError, match="times"):
        rk4(lambda t, y: y, torch.ones(1), [0.0, 0.0])
    with pytest.raises(ValueError, match="substeps=0"):
        rk4(lambda t, y: y, torch.ones(1), [0.0, 1.0], substeps=0)


def test_solve_stiff_on_a_stiff_linear_system():
    y0 = torch.tensor([1.0, 1.0], dtype=torch.float64)
    rates = torch.tensor([-1000.0, -1.0], dtype=torch.float64)
    path = solve_stiff(lambda t, y: rates * y, y0, [0.0, 0.5, 1.0])
    assert torch.allclose(path[-1], torch.exp(rates), rtol=1e-6, atol=1e-12)


def test_drift_derivatives_of_a_quadratic(device):
    def drift(w):
        return torch.stack([w[..., 0] ** 2 * w[..., 1], 3 * w[..., 1]], -1)

    points = torch.tensor([[1.0, 2.0], [0.5, -1.0]], dtype=torch.float64, device=device)
    value, jac, hess = drift_derivatives(drift, points)
    x, y = points[:, 0], points[:, 1]
    assert torch.allclose(jac[:, 0, 0], 2 * x * y) and torch.allclose(jac[:, 0, 1], x**2)
    assert torch.allclose(jac[:, 1, 1], torch.full_like(x, 3.0))
    assert torch.allclose(hess[:, 0, 0, 0], 2 * y) and torch.allclose(hess[:, 0, 0, 1], 2 * x)
    assert torch.all(hess[:, 1] == 0)


def test_linear_drift_moments_are_exact(device):
    """For F = A w the closure is exact: m(t) = e^{At} m0, C(t) = e^{At} C0 e^{A^T t}."""
    a = torch.tensor([[-1.0, 0.3], [0.0, -0.5]], dtype=torch.float64, device=device)
    m0 = torch.tensor([1.0, -2.0], dtype=torch.float64, device=device)
    c0 = torch.tensor([[0.4, 0.1], [0.1, 0.2]], dtype=torch.float64, device=device)
    means, covs = integrate_moments(lambda w: w @ a.T, m0, c0, [0.0, 1.5], substeps=50,
                                    device=device)
    flow = torch.linalg.matrix_exp(1.5 * a)
    assert torch.allclose(means[-1], flow @ m0, atol=1e-10)
    assert torch.allclose(covs[-1], flow @ c0 @ flow.T, atol=1e-10)


def test_covariance_term_in_mean_equation():
    def drift(w):
        return -(w**3)

    mean = torch.tensor([[0.5]], dtype=torch.float64)
    cov = torch.tensor([[[0.2]]], dtype=torch.float64)
    with_term, _ = moment_derivatives(drift, mean, cov)
    without, _ = moment_derivatives(drift, mean, cov, covariance_in_mean=False)
    # 1/2 C F'' = 1/2 * 0.2 * (-6 * 0.5)
    assert torch.allclose(with_term - without, torch.tensor([[-0.3]], dtype=torch.float64))


def test_moment_shapes_checked():
    with pytest.raises(ValueError, match="cov0 has shape"):
        integrate_moments(lambda w: -w, [0.0, 1.0], [[1.0]], [0.0, 1.0])
