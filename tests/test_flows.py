import math

import numpy as np
import pytest
import torch

from learndyn.flows import (
    CarriedCloud,
    carry_gaussian,
    closure_remainder,
    control_variate,
    directional_derivatives,
    drift_derivatives,
    integrate_moments,
    integrate_order_eta,
    linear_noise_control,
    linear_noise_proxy,
    linear_transport,
    moment_derivatives,
    order_eta_derivatives,
    rk4,
    solve_stiff,
    step_doubling,
    update_moments,
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


def test_covariance_factor_scales_the_term():
    def drift(w):
        return -(w**3)

    mean = torch.tensor([[0.5]], dtype=torch.float64)
    cov = torch.tensor([[[0.2]]], dtype=torch.float64)
    without, _ = moment_derivatives(drift, mean, cov, covariance_in_mean=False)
    doubled, _ = moment_derivatives(drift, mean, cov, covariance_factor=1.0)
    assert torch.allclose(doubled - without, torch.tensor([[-0.6]], dtype=torch.float64))
    with pytest.raises(ValueError, match="covariance_factor"):
        moment_derivatives(drift, mean, cov, covariance_factor=float("nan"))


def test_integrate_moments_passes_the_covariance_factor():
    def drift(w):
        return -(w**3)

    halves = [integrate_moments(drift, [0.5], [[0.2]], [0.0, 0.5], covariance_factor=c)[0][-1]
              for c in (0.0, 0.5)]
    field, _ = integrate_moments(drift, [0.5], [[0.2]], [0.0, 0.5], covariance_in_mean=False)
    assert torch.allclose(halves[0], field[-1])
    assert halves[1].item() < halves[0].item()  # the term -3 m C pulls the mean down


def test_carry_gaussian_is_exact_for_a_linear_flow(device):
    a = torch.tensor([[-1.0, 0.3], [0.0, -0.5]], dtype=torch.float64, device=device)
    m0 = torch.tensor([1.0, -2.0], dtype=torch.float64, device=device)
    c0 = torch.tensor([[0.4, 0.1], [0.1, 0.2]], dtype=torch.float64, device=device)
    cloud = carry_gaussian(lambda w: w @ a.T, m0, c0, [0.0, 0.5, 1.5], nodes=4, substeps=40,
                           device=device)
    flow = torch.linalg.matrix_exp(1.5 * a)
    assert cloud.points.shape == (3, 16, 2) and abs(cloud.weights.sum().item() - 1) < 1e-14
    assert torch.allclose(cloud.mean()[-1], flow @ m0, atol=1e-9)
    assert torch.allclose(cloud.cov()[-1], flow @ c0 @ flow.T, atol=1e-9)
    assert cloud.central_moment(3).abs().max() < 1e-12  # a Gaussian stays Gaussian
    fourth = cloud.central_moment(4)[0]
    assert torch.allclose(fourth[0, 0, 0, 0], 3 * c0[0, 0] ** 2)
    assert torch.allclose(fourth[0, 0, 1, 1], c0[0, 0] * c0[1, 1] + 2 * c0[0, 1] ** 2)


def test_carry_gaussian_rejects_bad_input():
    with pytest.raises(ValueError, match="cov0"):
        carry_gaussian(lambda w: -w, [0.0, 0.0], [[1.0, 2.0], [2.0, 1.0]], [0.0, 1.0])
    with pytest.raises(ValueError, match="nodes"):
        carry_gaussian(lambda w: -w, [0.0] * 5, torch.eye(5), [0.0, 1.0], nodes=24)
    with pytest.raises(ValueError, match="mean0"):
        carry_gaussian(lambda w: -w, [[0.0]], [[1.0]], [0.0, 1.0])


def test_directional_derivatives_of_a_polynomial(device):
    def drift(w):
        return torch.stack([w[..., 0] ** 4, w[..., 0] * w[..., 1] ** 2], -1)

    base = torch.tensor([[0.7, -1.2]], dtype=torch.float64, device=device)
    direction = torch.tensor([[0.3, 0.5]], dtype=torch.float64, device=device)
    terms = directional_derivatives(drift, base, direction, 4)
    x, y = base[0]
    u, v = direction[0]
    # d^p/ds^p of (x + s u)^4 and of (x + s u)(y + s v)^2 at s = 0
    expected = [[x**4, x * y**2], [4 * x**3 * u, u * y**2 + 2 * x * y * v],
                [12 * x**2 * u**2, 4 * u * y * v + 2 * x * v**2], [24 * x * u**3, 6 * u * v**2],
                [24 * u**4, 0.0]]
    for term, want in zip(terms, expected, strict=True):
        assert torch.allclose(term[0], torch.stack([torch.as_tensor(e, dtype=torch.float64,
                                                                   device=device) for e in want]))
    with pytest.raises(ValueError, match="direction"):
        directional_derivatives(drift, base, direction[:, :1], 2)


def test_closure_remainder_of_a_quartic_on_a_gaussian():
    # F = w^4 on N(m, C): the closure drops exactly <delta^4> = 3 C^2 in the mean and
    # 2 <delta (4 m delta^3)> = 24 m C^2 in the variance
    mean, var = 0.7, 0.3
    cloud = carry_gaussian(lambda w: 0 * w, [mean], [[var]], [0.0, 1.0], nodes=6)
    mean_rate, cov_rate = closure_remainder(lambda w: w**4, cloud)
    assert torch.allclose(mean_rate, torch.full((2, 1), 3 * var**2, dtype=torch.float64))
    assert torch.allclose(cov_rate, torch.full((2, 1, 1), 24 * mean * var**2, dtype=torch.float64))


def test_closure_remainder_is_the_whole_remainder_for_polynomials():
    # the series stops: for a quartic drift the dropped mean terms are the whole difference, and
    # for a cubic one the dropped covariance terms (moments of order five would enter beyond)
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(1, 50, 2, generator=generator, dtype=torch.float64) ** 2
    weights = torch.rand(50, generator=generator, dtype=torch.float64)
    cloud = CarriedCloud(points, weights / weights.sum())
    mean, cov = cloud.mean(), cloud.cov()
    delta = points[0] - mean[0]

    def quartic(w):
        return torch.stack([w[..., 0] ** 3 * w[..., 1], -w[..., 1] ** 4 + w[..., 0] ** 2], -1)

    def cubic(w):
        return torch.stack([w[..., 0] ** 2 * w[..., 1], -w[..., 1] ** 3 + w[..., 0]], -1)

    closure_mean, _ = moment_derivatives(quartic, mean, cov[0])
    mean_rate, _ = closure_remainder(quartic, cloud)
    exact_mean = torch.einsum("p,pi->i", cloud.weights, quartic(points[0]))
    assert torch.allclose(closure_mean[0] + mean_rate[0], exact_mean, atol=1e-12)
    _, closure_cov = moment_derivatives(cubic, mean, cov[0])
    _, cov_rate = closure_remainder(cubic, cloud)
    half = torch.einsum("p,pi,pj->ij", cloud.weights, delta, cubic(points[0]))
    assert torch.allclose(closure_cov[0] + cov_rate[0], half + half.T, atol=1e-12)


def test_linear_transport_with_constant_coefficients(device):
    a = torch.tensor([[-1.0, 0.3], [0.0, -0.5]], dtype=torch.float64, device=device)
    forcing = torch.tensor([1.0, -2.0], dtype=torch.float64, device=device)
    c0 = torch.tensor([[0.4, 0.1], [0.1, 0.2]], dtype=torch.float64, device=device)
    times = [0.0, 0.5, 1.0]
    e, cov = linear_transport(a.expand(3, 2, 2), times, mean_forcing=forcing.expand(3, 2),
                              cov0=c0, substeps=20)
    flow = torch.linalg.matrix_exp(a)
    eye = torch.eye(2, dtype=torch.float64, device=device)
    assert torch.allclose(e[-1], torch.linalg.solve(a, (flow - eye) @ forcing), atol=1e-9)
    assert torch.allclose(cov[-1], flow @ c0 @ flow.T, atol=1e-9)
    with pytest.raises(ValueError, match="times"):
        linear_transport(a.expand(3, 2, 2), [0.0, 1.0])
    with pytest.raises(ValueError, match="mean_forcing"):
        linear_transport(a.expand(3, 2, 2), times, mean_forcing=forcing)


def test_step_doubling_value_allowance_and_error():
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(10_000, 3, generator=generator, dtype=torch.float64)
    fine = 1.0 + 0.01 + noise
    coarse = 1.0 + 0.02 + noise  # the same noise: common random numbers
    result = step_doubling(fine, coarse)
    assert torch.allclose(result.value, fine.mean(0))
    assert torch.allclose(result.allowance, torch.full((3,), 0.01, dtype=torch.float64))
    assert torch.allclose(result.se, noise.std(0) / 100)
    with pytest.raises(ValueError, match="coarse"):
        step_doubling(fine, coarse[:, :2])


def test_control_variate_removes_the_initial_noise():
    generator = torch.Generator().manual_seed(1)
    start = torch.randn(2000, 2, generator=generator, dtype=torch.float64)
    cloud = carry_gaussian(lambda w: -w, [0.0, 0.0], torch.eye(2), [0.0, 1.0], nodes=6)
    carried = rk4(lambda _t, y: -y, start, [0.0, 1.0], substeps=4)
    kick = 0.01 * torch.randn(2, 2000, 2, generator=generator, dtype=torch.float64)
    trained = carried + kick
    mean_terms, cov_terms = control_variate(trained, carried, cloud)
    assert mean_terms.shape == (2, 2000, 2) and cov_terms.shape == (2, 2000, 2, 2)
    # the estimate is the exact mean plus the kick; its spread is that of the kick alone
    assert torch.allclose(mean_terms.mean(1), cloud.mean() + kick.mean(1), atol=1e-12)
    assert mean_terms.std(1).max() < 0.02
    with pytest.raises(ValueError, match="share"):
        control_variate(trained[:, :10], carried, cloud)


def test_closure_remainder_next_order_of_a_sextic_on_a_gaussian():
    # F = w^6 on N(m, C): <F> = m^6 + 15 m^4 C + 45 m^2 C^2 + 15 C^3; the closure keeps the first
    # two terms, the leading dropped order is 45 m^2 C^2 and the next 15 C^3
    mean, var = 0.7, 0.3
    cloud = carry_gaussian(lambda w: 0 * w, [mean], [[var]], [0.0, 1.0], nodes=8)
    lead, _ = closure_remainder(lambda w: w**6, cloud)
    following, _ = closure_remainder(lambda w: w**6, cloud, moments=(5, 6))
    assert torch.allclose(lead, torch.full((2, 1), 45 * mean**2 * var**2, dtype=torch.float64))
    assert torch.allclose(following, torch.full((2, 1), 15 * var**3, dtype=torch.float64))
    with pytest.raises(ValueError, match="moments"):
        closure_remainder(lambda w: w**6, cloud, moments=(2,))


# --- the O(eta) term ------------------------------------------------------------------------------

def _linear_rule(a=0.7, b=0.3):
    """f = -a w + sqrt(b) z in one dimension: alpha = -a w, beta = a^2 w^2 + b."""
    def update(w, z):
        return -a * w + math.sqrt(b) * z

    def noise_moments(w):
        return update_moments(update, w, 1, nodes=4)

    return update, noise_moments


def test_update_moments_of_a_linear_gaussian_rule(device):
    like = {"dtype": torch.float64, "device": device}
    a = torch.tensor([[0.5, -1.0], [0.2, 0.3]], **like)
    s = torch.tensor([[1.0, 0.0, 0.4], [0.3, 0.7, 0.0]], **like)
    w = torch.randn(5, 2, **like)
    alpha, beta = update_moments(lambda v, z: v @ a.T + z @ s.T, w, 3, nodes=3)
    assert alpha.shape == (5, 2) and beta.shape == (5, 2, 2)
    assert torch.allclose(alpha, w @ a.T, atol=1e-12)
    mean = w @ a.T
    assert torch.allclose(beta, mean[:, :, None] * mean[:, None, :] + s @ s.T, atol=1e-12)


def test_update_moments_of_a_sign_with_two_nodes(device):
    like = {"dtype": torch.float64, "device": device}
    w = torch.zeros(1, 1, **like)
    alpha, beta = update_moments(lambda v, z: v + torch.sign(z[..., :1]) * (1 + z[..., 1:] ** 2),
                                 w, 2, nodes=(2, 6))
    assert abs(alpha.item()) < 1e-12  # the sign averages out exactly
    assert abs(beta.item() - 6.0) < 1e-12  # <(1 + z^2)^2> = 1 + 2 + 3


def test_update_moments_rejects_bad_nodes():
    w = torch.zeros(1, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="nodes"):
        update_moments(lambda v, z: v, w, 2, nodes=(3, 3, 3))
    with pytest.raises(ValueError, match="noise_dim"):
        update_moments(lambda v, z: v, w, 0)


def test_order_eta_derivatives_of_a_linear_rule(device):
    a, b, eta = 0.7, 0.3, 0.1
    _, noise_moments = _linear_rule(a, b)
    like = {"dtype": torch.float64, "device": device}
    mean, cov = torch.tensor([[1.5]], **like), torch.tensor([[[0.2]]], **like)
    d_mean, d_cov = order_eta_derivatives(lambda w: -a * w, noise_moments, mean, cov, eta)
    assert torch.allclose(d_mean, -a * mean - eta / 2 * a**2 * mean, atol=1e-12)
    assert torch.allclose(d_cov, -2 * a * cov + eta * b, atol=1e-12)  # diffusion B
    d_mean, d_cov = order_eta_derivatives(lambda w: -a * w, noise_moments, mean, cov, eta,
                                          drift_correction=0.0, centred=0.0)
    assert torch.allclose(d_mean, -a * mean, atol=1e-12)
    assert torch.allclose(d_cov, -2 * a * cov + eta * (b + a**2 * mean**2), atol=1e-12)  # beta
    reference = moment_derivatives(lambda w: -a * w, mean, cov)
    at_zero = order_eta_derivatives(lambda w: -a * w, noise_moments, mean, cov, 0.0)
    assert all(torch.allclose(x, y) for x, y in zip(at_zero, reference, strict=True))
    with pytest.raises(ValueError, match="eta"):
        order_eta_derivatives(lambda w: -a * w, noise_moments, mean, cov, -0.1)


def test_integrate_order_eta_batches_theories_and_steps(device):
    a, b = 0.7, 0.3
    _, noise_moments = _linear_rule(a, b)
    like = {"dtype": torch.float64, "device": device}
    times = np.linspace(0.0, 2.0, 5)
    etas = torch.tensor([0.0, 0.05, 0.1], **like)
    means, covs = integrate_order_eta(lambda w: -a * w, noise_moments, torch.tensor([1.0], **like),
                                      torch.zeros(1, 1, **like), times, etas, substeps=20)
    assert means.shape == (5, 3, 1) and covs.shape == (5, 3, 1, 1)
    t = torch.as_tensor(times, **like)[:, None]
    rate = a + etas * a**2 / 2  # the modified drift -(a + eta a^2 / 2) w
    assert torch.allclose(means[..., 0], torch.exp(-rate * t), atol=1e-8)
    # dC/dt = J C + C J^T + eta B with the Jacobian of F (its O(eta) change is O(eta C) = O(eta^2))
    expected = etas * b * (1 - torch.exp(-2 * a * t)) / (2 * a)
    assert torch.allclose(covs[..., 0, 0], expected, atol=1e-8)


def test_linear_noise_proxy_is_exact_for_a_linear_rule(device):
    a, b, step, n_steps = 0.7, 0.3, 0.1, 12
    update, noise_moments = _linear_rule(a, b)
    like = {"dtype": torch.float64, "device": device}
    proxy = linear_noise_proxy(lambda w: -a * w, noise_moments, torch.tensor([1.0], **like), step,
                               n_steps)
    assert proxy.path.shape == (n_steps + 1, 1) and proxy.cov.shape == (n_steps + 1, 1, 1)
    assert torch.allclose(proxy.path[:, 0], (1 - step * a) ** torch.arange(n_steps + 1, **like))
    # the exact variance of w_k = (1 - step a) w_{k-1} + step sqrt(b) z from a point
    q = (1 - step * a) ** 2
    k = torch.arange(n_steps + 1, **like)
    assert torch.allclose(proxy.cov[:, 0, 0], step**2 * b * (1 - q**k) / (1 - q), atol=1e-14)
    generator = torch.Generator(device=device).manual_seed(3)
    w = proxy.path[0].expand(64, 1).clone()
    v = torch.zeros_like(w)
    samples, proxies = [w], [v]
    for k in range(n_steps):
        z = torch.randn(64, 1, generator=generator, **like)
        v = proxy.advance(k, v, proxy.path[k] + step * update(proxy.path[k].expand_as(w), z))
        w = w + step * update(w, z)
        samples.append(w)
        proxies.append(v)
        assert torch.allclose(w - v, proxy.path[k + 1].expand_as(w), atol=1e-12)  # v is all the noise
    mean_terms, cov_terms = linear_noise_control(torch.stack(samples), torch.stack(proxies), proxy.cov)
    assert torch.allclose(mean_terms, proxy.path[:, None].expand_as(mean_terms), atol=1e-12)
    assert torch.allclose(cov_terms.mean(1), proxy.cov, atol=1e-12)


def test_linear_noise_helpers_reject_bad_input():
    _, noise_moments = _linear_rule()
    with pytest.raises(ValueError, match="step"):
        linear_noise_proxy(lambda w: -w, noise_moments, torch.tensor([1.0], dtype=torch.float64), 0.0, 3)
    with pytest.raises(ValueError, match="w0"):
        linear_noise_proxy(lambda w: -w, noise_moments, torch.ones(2, 1, dtype=torch.float64), 0.1, 3)
    samples = torch.zeros(3, 4, 2)
    with pytest.raises(ValueError, match="share"):
        linear_noise_control(samples, torch.zeros(3, 5, 2), torch.zeros(3, 2, 2))
    with pytest.raises(ValueError, match="proxy_cov"):
        linear_noise_control(samples, samples, torch.zeros(4, 2, 2))
