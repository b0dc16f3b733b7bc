"""Unit tests of learndyn.linear_networks (chapter: weight fluctuations in linear networks)."""

import itertools
import math

import numpy as np
import pytest
import torch

from learndyn import linear_networks as ln
from learndyn.backend import make_generator

DTYPE = torch.float64
CPU = torch.device("cpu")  # CPU-only tests pin their generators; the rest take `device`


@pytest.fixture
def one_thread():
    """Simulations of tiny matrices: one CPU thread is fastest (and immune to a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def random_spd(n, generator, batch=(), shift=0.1):
    root = torch.randn(*batch, n, n, generator=generator, dtype=DTYPE)
    return root @ root.transpose(-1, -2) / n + shift * torch.eye(n, dtype=DTYPE)


def random_data(n_samples, n_inputs, generator, noise=0.5):
    x = torch.randn(n_samples, n_inputs, generator=generator, dtype=DTYPE)
    teacher = torch.randn(n_inputs, generator=generator, dtype=DTYPE)
    return x, x @ teacher + noise * torch.randn(n_samples, generator=generator, dtype=DTYPE)


# ---------------------------------------------------------------------------- Lyapunov solver


def test_solve_lyapunov_matches_scipy_and_solves_the_equation(device):
    g = make_generator(1, device=CPU)
    hessian = random_spd(5, g, batch=(3,))
    root = torch.randn(3, 5, 2, generator=g, dtype=DTYPE)
    noise = root @ root.transpose(-1, -2)  # rank 2: semi-definite is allowed
    eigen = ln.solve_lyapunov(hessian, noise, 0.1, 4, device=device)
    reference = ln.solve_lyapunov(hessian, noise, 0.1, 4, method="scipy", device=device)
    np.testing.assert_allclose(eigen.cpu().numpy(), reference.cpu().numpy(), rtol=0, atol=1e-12)
    h = hessian.to(device)
    residual = h @ eigen + eigen @ h - 0.1 / 4 * noise.to(device)
    assert residual.abs().max() < 1e-13
    assert eigen.device.type == device.type


def test_solve_lyapunov_online_noise_gives_isotropic_covariance(device):
    hessian = random_spd(4, make_generator(2, device=CPU))
    covariance = ln.solve_lyapunov(hessian, 0.3 * hessian, 0.05, 2, device=device)
    expected = 0.05 * 0.3 / (2 * 2) * torch.eye(4, dtype=DTYPE)
    np.testing.assert_allclose(covariance.cpu().numpy(), expected.numpy(), atol=1e-15)


@pytest.mark.parametrize("hessian, noise, kwargs, name", [
    ([[1.0, 0.2], [0.0, 1.0]], np.eye(2), {}, "hessian"),           # not symmetric
    ([[1.0, 0.0], [0.0, -0.5]], np.eye(2), {}, "hessian"),          # indefinite
    ([[1.0, 0.0], [0.0, 0.0]], np.eye(2), {}, "hessian"),           # singular
    (np.eye(2), [[1.0, 0.0], [0.0, -1.0]], {}, "noise"),            # not semi-definite
    (np.eye(2), np.eye(3), {}, "noise"),                            # wrong shape
    ([[1.0, float("nan")], [float("nan"), 1.0]], np.eye(2), {}, "hessian"),
    (np.eye(2), np.eye(2), {"eta": -0.1}, "eta"),
    (np.eye(2), np.eye(2), {"batch_size": 0}, "batch_size"),
    (np.eye(2), np.eye(2), {"method": "qr"}, "method"),
])
def test_solve_lyapunov_rejects_bad_input(hessian, noise, kwargs, name):
    with pytest.raises(ValueError, match=name):
        ln.solve_lyapunov(hessian, noise, **kwargs)


# ---------------------------------------------------------------------------- noise covariances


def test_online_noise_covariance_against_monte_carlo():
    g = make_generator(3, device=CPU)
    sigma = random_spd(3, g)
    w, teacher, noise_var = torch.randn(3, generator=g, dtype=DTYPE), torch.zeros(3), 0.4
    n = 400_000
    x = torch.randn(n, 3, generator=g, dtype=DTYPE) @ torch.linalg.cholesky(sigma).T
    grads = x * (x @ w - math.sqrt(noise_var) * torch.randn(n, generator=g, dtype=DTYPE))[:, None]
    products = grads[:, :, None] * grads[:, None, :]
    sample = torch.cov(grads.T)
    error = products.std(0) / math.sqrt(n)
    expected = ln.online_noise_covariance(w, teacher, sigma, noise_var)
    assert ((sample - expected).abs() / error).max() < 5  # 6 independent entries, 5 standard errors


@pytest.mark.parametrize("replacement", [True, False])
def test_empirical_noise_covariance_by_enumerating_minibatches(replacement):
    g = make_generator(4, device=CPU)
    x, y = random_data(5, 2, g)
    w = torch.randn(2, generator=g, dtype=DTYPE)
    per_sample = x * (x @ w - y)[:, None]
    batches = (itertools.product(range(5), repeat=2) if replacement
               else itertools.combinations(range(5), 2))
    means = torch.stack([per_sample[list(b)].mean(0) for b in batches])
    exact = (means - means.mean(0)).T @ (means - means.mean(0)) / means.shape[0]
    kernel = ln.empirical_noise_covariance(w, x, y, batch_size=2, replacement=replacement)
    np.testing.assert_allclose((kernel / 2).numpy(), exact.numpy(), atol=1e-14)


def test_empirical_noise_covariance_vanishes_for_full_batch_without_replacement():
    x, y = random_data(6, 2, make_generator(5, device=CPU))
    noise = ln.empirical_noise_covariance(torch.zeros(2), x, y, batch_size=6, replacement=False)
    assert noise.abs().max() < 1e-15


def test_noise_kernels_reject_bad_input():
    x, y = random_data(6, 2, make_generator(6, device=CPU))
    with pytest.raises(ValueError, match="label_noise_variance"):
        ln.online_noise_covariance(np.zeros(2), np.zeros(2), np.eye(2), -1.0)
    with pytest.raises(ValueError, match="input_covariance"):
        ln.online_noise_covariance(np.zeros(2), np.zeros(2), [[1.0, 2.0], [2.0, 1.0]], 1.0)
    with pytest.raises(ValueError, match="weights"):
        ln.online_noise_covariance(np.zeros(3), np.zeros(2), np.eye(2), 1.0)
    with pytest.raises(ValueError, match="labels"):
        ln.empirical_noise_covariance(np.zeros(2), x, y[:-1])
    with pytest.raises(ValueError, match="batch_size"):
        ln.empirical_noise_covariance(np.zeros(2), x, y, batch_size=7, replacement=False)
    with pytest.raises(ValueError, match="inputs"):
        ln.least_squares_minimum(x[:2], y[:2])


def test_fourth_moment_operators():
    g = make_generator(7, device=CPU)
    sigma, s = random_spd(3, g), random_spd(3, g)
    online = torch.einsum("ijpq,pq->ij", ln.online_fourth_moment(sigma), s)
    np.testing.assert_allclose(online.numpy(),
                               (2 * sigma @ s @ sigma + torch.trace(sigma @ s) * sigma).numpy(),
                               rtol=1e-12)
    x = torch.randn(7, 3, generator=g, dtype=DTYPE)
    empirical = torch.einsum("ijpq,pq->ij", ln.empirical_fourth_moment(x), s)
    direct = sum(torch.outer(v, v) @ s @ torch.outer(v, v) for v in x) / 7
    np.testing.assert_allclose(empirical.numpy(), direct.numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------- stationary equations


@pytest.mark.parametrize("replacement", [True, False])
def test_discrete_order_is_the_fixed_point_of_one_sgd_step(replacement):
    """One exact SGD step (all minibatches enumerated) maps the discrete solution to itself."""
    g = make_generator(8, device=CPU)
    x, y = random_data(5, 2, g)
    eta, batch = 0.1, 2
    w_min, residuals = ln.least_squares_minimum(x, y)
    hessian = x.T @ x / 5
    noise = ln.empirical_noise_covariance(w_min, x, y, batch_size=batch, replacement=replacement)
    factor = ln.sampling_factor(5, batch, replacement)
    s = ln.stationary_covariance(hessian, noise, eta, batch, order="discrete",
                                 fourth_moment=ln.empirical_fourth_moment(x), factor=factor)
    batches = (list(itertools.product(range(5), repeat=batch)) if replacement
               else list(itertools.combinations(range(5), batch)))
    mapped = torch.zeros(2, 2, dtype=DTYPE)
    for b in batches:
        xb, rb = x[list(b)], residuals[list(b)]
        a = torch.eye(2, dtype=DTYPE) - eta / batch * xb.T @ xb
        kick = eta / batch * xb.T @ rb
        mapped += (a @ s @ a.T + torch.outer(kick, kick)) / len(batches)
    np.testing.assert_allclose(mapped.numpy(), s.numpy(), rtol=1e-11, atol=1e-16)


def test_orders_agree_to_leading_order_in_eta():
    g = make_generator(9, device=CPU)
    sigma = random_spd(3, g)
    fourth = ln.online_fourth_moment(sigma)
    gaps = []
    for eta in (1e-2, 1e-3):
        continuum = ln.stationary_covariance(sigma, 0.5 * sigma, eta, 1)
        discrete = ln.stationary_covariance(sigma, 0.5 * sigma, eta, 1, order="discrete",
                                            fourth_moment=fourth)
        gaps.append((torch.linalg.matrix_norm(discrete - continuum)
                     / torch.linalg.matrix_norm(continuum)).item())
    assert 8 < gaps[0] / gaps[1] < 12  # an O(eta) relative gap


def test_stationary_covariance_rejects_bad_input():
    with pytest.raises(ValueError, match="order"):
        ln.stationary_covariance(np.eye(2), np.eye(2), 0.1, order="exact")
    with pytest.raises(ValueError, match="fourth_moment"):
        ln.stationary_covariance(np.eye(2), np.eye(2), 0.1, order="discrete")
    with pytest.raises(ValueError, match="fourth_moment"):
        ln.stationary_covariance(np.eye(2), np.eye(2), 0.1, order="discrete",
                                 fourth_moment=np.zeros((3, 3, 3, 3)))
    with pytest.raises(ValueError, match="hessian"):
        ln.stationary_covariance([[1.0, 0.0], [0.0, -1.0]], np.eye(2), 0.1)


def test_probability_current_vanishes_iff_hessian_and_noise_commute(device):
    g = make_generator(10, device=CPU)
    hessian = random_spd(3, g)
    balanced = ln.solve_lyapunov(hessian, hessian, 0.1, 1)
    omega = ln.probability_current_matrix(hessian, hessian, balanced, 0.1, 1, device=device)
    assert omega.abs().max() < 1e-12
    noise = random_spd(3, g)
    covariance = ln.solve_lyapunov(hessian, noise, 0.1, 1)
    omega = ln.probability_current_matrix(hessian, noise, covariance, 0.1, 1)
    assert omega.abs().max() > 1e-2
    # stationarity: Omega S is antisymmetric, i.e. the Gaussian current is divergence-free
    product = omega @ covariance
    assert (product + product.T).abs().max() < 1e-12
    points = torch.randn(4, 3, generator=g, dtype=DTYPE)
    current = ln.probability_current(points, hessian, noise, covariance, 0.1, 1)
    assert current.shape == (4, 3)


# ---------------------------------------------------------------------------- two layers


def test_balanced_minimum_projector_and_mode_variances(device):
    g = make_generator(11, device=CPU)
    u = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=DTYPE))[0]
    v = torch.linalg.qr(torch.randn(3, 3, generator=g, dtype=DTYPE))[0]
    s = torch.tensor([3.0, 1.2, 0.4], dtype=DTYPE)
    teacher = u @ torch.diag(s) @ v.T
    w1, w2, s_out, u_out, _ = ln.balanced_minimum(teacher, device=device)
    np.testing.assert_allclose((w2 @ w1).cpu().numpy(), teacher.numpy(), atol=1e-13)
    assert ln.q_matrix(w1, w2).abs().max() < 1e-13
    covariance = ln.two_layer_range_covariance(w1, w2, 0.2, 0.05, 2, device=device)
    modes = ln.second_layer_modes(u_out, 3)
    variance, curvature = ln.second_layer_mode_variances(s_out, 0.2, 0.05, 2, device=device)
    np.testing.assert_allclose((modes @ covariance @ modes.T).cpu().numpy(),
                               np.diag(variance.flatten().cpu().numpy()), atol=1e-14)
    jac = ln.two_layer_jacobians(w1, w2, device=device)
    hessian = torch.einsum("nki,nkj->ij", jac, jac)
    assert torch.linalg.matrix_rank(hessian) == 9
    np.testing.assert_allclose(
        ln.stationary_covariance(hessian, 0.2 * hessian, 0.05, 2, device=device).cpu().numpy(),
        covariance.cpu().numpy(), atol=1e-14)
    frozen_curvature = ((modes[:, 9:].reshape(9, 3, 3) @ w1) ** 2).sum((-1, -2))
    np.testing.assert_allclose(frozen_curvature.cpu().numpy(), curvature.flatten().cpu().numpy(),
                               rtol=1e-12)


def test_two_layer_kernels_reject_bad_input():
    with pytest.raises(ValueError, match="w1"):
        ln.two_layer_jacobians(np.eye(3), np.ones((2, 2)))
    with pytest.raises(ValueError, match="singular_values"):
        ln.second_layer_mode_variances([1.0, -1.0], 0.1, 0.1)
    with pytest.raises(ValueError, match="teacher"):
        ln.balanced_minimum(np.ones(3))
    with pytest.raises(ValueError, match="teacher"):
        ln.two_layer_sgd(np.eye(2), np.eye(2), np.eye(3), 0.1, 0.1, 1, 2, 1, 0)


# ---------------------------------------------------------------------------- simulations


def test_online_sgd_matches_exact_discrete_covariance(one_thread):
    sigma = torch.diag(torch.tensor([0.5, 1.0, 2.0], dtype=DTYPE))
    eta, batch = 0.1, 2
    moments = ln.online_single_layer_sgd(sigma, 0.25, eta, batch, 400, 1500, 200,
                                         generator=make_generator(12, device=CPU))
    mean, error = moments.covariance_estimate()
    theory = ln.stationary_covariance(sigma, 0.25 * sigma, eta, batch, order="discrete",
                                      fourth_moment=ln.online_fourth_moment(sigma))
    assert ((mean - theory).abs() / error).max() < 5  # 6 entries, 5 standard errors
    assert moments.second_moment.shape == (400, 3, 3)  # running moments only


def test_finite_data_sgd_without_replacement_matches_exact_discrete_covariance(one_thread):
    g = make_generator(13, device=CPU)
    x, y = random_data(12, 3, g)
    eta, batch = 0.05, 3
    moments = ln.finite_data_single_layer_sgd(x, y, eta, batch, 400, 2000, 400,
                                              replacement=False, generator=make_generator(14, device=CPU))
    mean, error = moments.covariance_estimate()
    w_min, _ = ln.least_squares_minimum(x, y)
    noise = ln.empirical_noise_covariance(w_min, x, y, batch_size=batch, replacement=False)
    theory = ln.stationary_covariance(x.T @ x / 12, noise, eta, batch, order="discrete",
                                      fourth_moment=ln.empirical_fourth_moment(x),
                                      factor=ln.sampling_factor(12, batch, False))
    assert ((mean - theory).abs() / error).max() < 5


def test_two_layer_sgd_changes_q_at_second_order_and_records_observables(one_thread):
    w1, w2, _, _, _ = ln.balanced_minimum(torch.diag(torch.tensor([2.0, 0.5], dtype=DTYPE)))
    moments = ln.two_layer_sgd(w1, w2, w2 @ w1, 0.25, 0.01, 1, 8, 100, 10,
                               observe=lambda s: {"q": ln.q_matrix(*s)}, record=[0, 50, 100],
                               generator=make_generator(15, device=CPU))
    assert moments.records["q"].shape == (3, 8, 2, 2)
    assert moments.second_moment.shape == (8, 8, 8)
    # Q changes only at second order in eta (Eq. ln-q-identity)
    assert moments.records["q"].abs().max() < 100 * 0.01**2


def test_feng_tu_measurements():
    curvature = torch.tensor([4.0, 1.0, 0.25], dtype=DTYPE)

    def loss(points):
        return 0.5 * (points**2 * curvature).sum(-1)

    width = ln.loss_profile_width(loss, torch.zeros(3), torch.eye(3, dtype=DTYPE), 0.02)
    np.testing.assert_allclose(width.numpy(), (2 * (2 * 0.02 / curvature).sqrt()).numpy(),
                               rtol=1e-12)
    variances, directions = ln.pca_variances(torch.diag(torch.tensor([1.0, 3.0, 2.0])))
    assert variances.tolist() == [3.0, 2.0, 1.0]
    assert directions[:, 0].abs().tolist() == [0.0, 1.0, 0.0]
    with pytest.raises(ValueError, match="threshold"):
        ln.loss_profile_width(loss, torch.zeros(3), torch.eye(3), 0.0)
    with pytest.raises(ValueError, match="covariance"):
        ln.pca_variances([[1.0, 0.0], [0.0, -1.0]])


# ---------------------------------------------------------------------------- the chapter's helpers


def test_random_data_sets_and_hessian_and_noise_match_the_single_set_kernels(device):
    x, y = ln.random_data_sets(3, 4, 9, 0.25, generator=make_generator(20, device), device=device)
    assert x.shape == (3, 9, 4) and y.shape == (3, 9) and x.device.type == device.type
    hessian, noise = ln.hessian_and_noise(x, y, device=device)
    for k in range(3):
        w_ls, _ = ln.least_squares_minimum(x[k], y[k], device=device)
        np.testing.assert_allclose(hessian[k].cpu(), (x[k].T @ x[k] / 9).cpu(), rtol=1e-13)
        np.testing.assert_allclose(noise[k].cpu(), ln.empirical_noise_covariance(
            w_ls, x[k], y[k], device=device).cpu(), rtol=1e-9, atol=1e-13)
    with pytest.raises(ValueError, match="P > N"):
        ln.hessian_and_noise(x[:, :3], y[:, :3])
    with pytest.raises(ValueError, match="label_noise_variance"):
        ln.random_data_sets(1, 2, 3, -1.0)


def test_leverage_noise_covariance_is_the_label_noise_average_of_d():
    g = make_generator(21, device=CPU)
    x = torch.randn(8, 3, generator=g, dtype=DTYPE)
    labels = 0.5 * torch.randn(200_000, 8, generator=g, dtype=DTYPE)
    _, noise = ln.hessian_and_noise(x.expand(200_000, -1, -1), labels)
    mean, error = noise.mean(0), noise.std(0) / math.sqrt(200_000)
    assert ((mean - ln.leverage_noise_covariance(x, 0.25)).abs() / error).max() < 5
    # the leverages average to N / P: the trace of (1 - Pi) is P - N
    hat = x @ torch.linalg.solve(x.T @ x, x.T)
    assert abs(torch.trace(hat).item() - 3) < 1e-12


def test_spectral_and_axis_statistics():
    hessian = torch.diag(torch.tensor([1.0, 2.0, 4.0], dtype=DTYPE))
    commutator, distance = ln.spectral_statistics(hessian, 0.3 * hessian)
    assert commutator.item() < 1e-15 and distance.item() < 1e-15
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=make_generator(22, device=CPU), dtype=DTYPE))[0]
    commutator, distance = ln.spectral_statistics(hessian, rotation @ hessian @ rotation.T)
    assert commutator.item() > 0.1 and distance.item() < 1e-12  # same spectrum, other axes
    gibbs = ln.fluctuation_axis_statistics(hessian, torch.linalg.inv(hessian))
    assert abs(gibbs["corr"].item() + 1) < 1e-12
    assert abs(gibbs["cv_h"].item() - gibbs["cv_eig"].item()) < 1e-12
    with pytest.raises(ValueError, match="one shape"):
        ln.spectral_statistics(hessian, torch.eye(2, dtype=DTYPE))


def test_gibbs_guess_recovers_the_temperature():
    inverse = torch.diag(torch.tensor([1.0, 0.5, 0.25], dtype=DTYPE))
    np.testing.assert_allclose(ln.gibbs_guess(0.7 * inverse, inverse).numpy(),
                               (0.7 * inverse).numpy(), rtol=1e-14)
    weights = torch.ones(3, 3, dtype=DTYPE)
    np.testing.assert_allclose(ln.gibbs_guess(0.7 * inverse, inverse, weights).numpy(),
                               (0.7 * inverse).numpy(), rtol=1e-14)
    with pytest.raises(ValueError, match="one shape"):
        ln.gibbs_guess(inverse, inverse[:2, :2])


def test_richardson_removes_the_first_order_and_measures_the_remainder():
    def f(h):
        return 1.0 + 3.0 * h + 5.0 * h**2

    eta = 0.01
    values = [torch.tensor(f(k * eta), dtype=DTYPE) for k in (1, 2, 4)]
    errors = [torch.tensor(0.01, dtype=DTYPE)] * 3
    extrapolated, error, remainder = ln.richardson(values, errors)
    # 2 f(eta) - f(2 eta) = 1 - 2 * 5 eta^2; the measured remainder is exactly that term
    assert abs(extrapolated.item() - (1 - 10 * eta**2)) < 1e-14
    assert abs(remainder.item() - 10 * eta**2) < 1e-14
    assert abs(error.item() - math.sqrt(5) * 0.01) < 1e-15
    with pytest.raises(ValueError, match="3 entries"):
        ln.richardson(values[:2], errors[:2])


def test_flatness_exponent_and_jackknife_error():
    flatness = torch.tensor([1.0, 2.0, 4.0], dtype=DTYPE)
    # F ~ std^(-psi) with psi = 0.5: std = F^(-2), Var = F^(-4)
    assert abs(ln.flatness_exponent(flatness**-4, flatness).item() - 0.5) < 1e-12
    batch = torch.stack([flatness**-4, flatness**2])
    np.testing.assert_allclose(ln.flatness_exponent(batch, flatness).numpy(), [0.5, -1.0])
    with pytest.raises(ValueError, match="positive"):
        ln.flatness_exponent(-flatness, flatness)
    samples = torch.randn(400, generator=make_generator(23, device=CPU), dtype=DTYPE)
    jack = ln.jackknife_error(samples, lambda m: m, n_groups=20)
    # for the mean the jackknife is exactly the standard error of the 20 group means
    group_means = samples.reshape(20, 20).mean(1)
    assert abs(jack - group_means.std().item() / math.sqrt(20)) < 1e-12
    with pytest.raises(ValueError, match="n_groups"):
        ln.jackknife_error(samples, lambda m: m, n_groups=7)


def test_linearised_two_layer_twin_shares_samples_and_stays_close(one_thread):
    w1, w2, _, _, _ = ln.balanced_minimum(torch.diag(torch.tensor([2.0, 0.5], dtype=DTYPE)))
    reference = torch.cat([w1.flatten(), w2.flatten()])
    null = torch.zeros(8, 1, dtype=DTYPE)
    null[0] = 1.0
    runs = [ln.two_layer_sgd(w1, w2, w2 @ w1, 0.25, 0.01, 1, 64, 400, 100, linearised=lin,
                             observe=ln.null_space_msd(reference, null), record=[400],
                             generator=make_generator(24, device=CPU)) for lin in (False, True)]
    nonlinear, linear = (r.second_moment.mean(0) for r in runs)
    # common random numbers: the twin differs by the (small) nonlinearity, not by noise
    assert ((nonlinear - linear).abs().max() / nonlinear.abs().max()).item() < 0.05
    assert not torch.equal(nonlinear, linear)
    assert runs[0].records["null_msd"].shape == (1, 64)
    # a linear model keeps Q's first-order cancellation only approximately: Q moves at O(eta)
    q_linear = ln.q_matrix(*runs[1].state) - ln.q_matrix(w1, w2)
    assert q_linear.abs().max() > 0


# ---------------------------------------------------------------------------- issue 13 additions


def test_sme_order_has_the_reversed_denominator_and_trend(device):
    """Online, the SME fixed point has the denominator 2 + eta (1 - 1/B) lambda (Eq. ln-sme)."""
    lam = torch.tensor([0.3, 1.0, 2.0], dtype=DTYPE)
    hessian, noise, eta, batch = torch.diag(lam), 0.5, 0.1, 2
    fourth = ln.online_fourth_moment(hessian)
    sme = torch.diagonal(ln.stationary_covariance(hessian, noise * hessian, eta, batch, order="sme",
                                                  fourth_moment=fourth, device=device)).cpu()
    c = -eta * (1 - 1 / batch)
    g = (lam / (2 - c * lam)).sum()
    tau = (eta / batch) * noise * g / (1 - (eta / batch) * g)
    np.testing.assert_allclose(sme.numpy(), ((eta / batch) * (tau + noise) / (2 - c * lam)).numpy(),
                               rtol=1e-12)
    discrete = torch.diagonal(ln.stationary_covariance(hessian, noise * hessian, eta, batch,
                                                       order="discrete", fourth_moment=fourth))
    assert bool((sme.diff() < 0).all()) and bool((discrete.diff() > 0).all())
    # B = 1: the modified drift exactly cancels the H S H part of the noise
    sme1 = ln.stationary_covariance(hessian, noise * hessian, eta, 1, order="sme", fourth_moment=fourth)
    assert torch.diagonal(sme1).std() < 1e-14


def test_noise_balancing_drift_against_one_sgd_step():
    """E dQ of one exact minibatch step at a realizable minimum, by Monte Carlo (Eq. ln-q-drift)."""
    g = make_generator(31, device=CPU)
    teacher = torch.randn(2, 3, generator=g, dtype=DTYPE)
    w1, w2, _, _, _ = ln.balanced_minimum(teacher)
    # move along the manifold of minima, away from the balanced point
    a = torch.tensor([[1.3, 0.2], [0.0, 0.8]], dtype=DTYPE)
    w1, w2 = a @ w1, w2 @ torch.linalg.inv(a)
    eta, noise, batch, draws = 0.1, 0.5, 2, 200_000
    x = torch.randn(draws, batch, 3, generator=g, dtype=DTYPE)
    residual = -math.sqrt(noise) * torch.randn(draws, batch, 2, generator=g, dtype=DTYPE)
    grad1 = w2.T @ residual.transpose(1, 2) @ x / batch
    grad2 = residual.transpose(1, 2) @ (x @ w1.T) / batch
    dq = ln.q_matrix(w1 - eta * grad1, w2 - eta * grad2) - ln.q_matrix(w1, w2)
    mean, error = dq.mean(0), dq.std(0) / math.sqrt(draws)
    expected = ln.noise_balancing_drift(w1, w2, noise, eta, batch)
    assert ((mean - expected).abs() < 5 * error + 1e-15).all()
    assert expected.abs().max() > 20 * error.max()
    with pytest.raises(ValueError, match="w1"):
        ln.noise_balancing_drift(w1, w2[:, :1], noise, eta)


def test_balanced_q_flow_starts_at_the_drift_and_ends_noise_balanced():
    s = torch.tensor([1.5, 0.5], dtype=DTYPE)
    n, k = 4, 2
    q = ln.balanced_q_flow(s, n, k, [0.0, 1e-4, 50.0])
    assert q[0].abs().max() == 0
    np.testing.assert_allclose((q[1] / 1e-4).numpy(), ((n - k) * s).numpy(), rtol=1e-3)
    # the noise-balanced point N beta^2 = K alpha^2 with alpha beta = s
    np.testing.assert_allclose(q[2].numpy(), (s * (math.sqrt(n / k) - math.sqrt(k / n))).numpy(),
                               rtol=1e-8)
    assert ln.balanced_q_flow(s, 3, 3, [2.0]).abs().max() < 1e-12  # K = N: Q stays zero
    with pytest.raises(ValueError, match="slow_times"):
        ln.balanced_q_flow(s, n, k, [1.0, 0.5])
    with pytest.raises(ValueError, match="singular_values"):
        ln.balanced_q_flow([1.0, -1.0], n, k, [1.0])


def test_jackknife_bias_and_error():
    samples = 1.0 + torch.randn(10_000, 2, generator=make_generator(32, device=CPU), dtype=DTYPE)
    value, error, bias = ln.jackknife_bias_and_error(samples, lambda m: m, n_groups=25)
    np.testing.assert_allclose(value.numpy(), samples.mean(0).numpy(), rtol=1e-14)
    assert bias.abs().max() < 1e-12  # a linear statistic has no bias
    assert ((error - samples.std(0) / 100).abs() < 0.3 * samples.std(0) / 100).all()
    # the square of the mean is biased by var / R; the jackknife sees it
    _, _, bias_sq = ln.jackknife_bias_and_error(samples, lambda m: m**2, n_groups=25)
    ratio = bias_sq / (samples.var(0) / 10_000)  # a 25-group estimate: about 30 % scatter
    assert ((ratio > 0.3) & (ratio < 2.0)).all()
    with pytest.raises(ValueError, match="n_groups"):
        ln.jackknife_bias_and_error(samples, lambda m: m, n_groups=7)
