"""Unit tests of learndyn.noise_injection (chapter "Noise injection nodes")."""

import math

import numpy as np
import pytest
import torch

from learndyn import noise_injection as ni
from learndyn.backend import make_generator
from learndyn.checks import CheckFailed

F64 = torch.float64


def _weights(n, device, seed=0):
    g = make_generator(seed, device=device)
    return tuple(1 + 0.3 * torch.randn(n, generator=g, device=device, dtype=F64) for _ in range(3))


def test_gradients_match_autograd_of_the_per_sample_loss(device):
    g = make_generator(1, device=device)
    w0, w1, wn = (torch.randn(5, 1, generator=g, device=device, dtype=F64).requires_grad_(True)
                  for _ in range(3))
    x = torch.randn(5, 7, generator=g, device=device, dtype=F64)
    eps = 0.8 * torch.randn(5, 7, generator=g, device=device, dtype=F64)
    target = 1.3
    loss = 0.5 * ((w1 * (w0 * x + wn * eps) - target * x) ** 2).mean(-1).sum()
    expected = torch.autograd.grad(loss, (w0, w1, wn))
    moments = ni.batch_moments(x, eps)
    got = ni.toy_gradients(w0.detach()[:, 0], w1.detach()[:, 0], wn.detach()[:, 0], *moments,
                           target_slope=target)
    for e, g_ in zip(expected, got, strict=True):
        torch.testing.assert_close(g_, e[:, 0], rtol=1e-12, atol=1e-12)
    # the batch loss in moments equals the per-sample average
    per_sample = 0.5 * ((w1 * (w0 * x + wn * eps) - target * x) ** 2).mean(-1).detach()
    in_moments = ni.toy_loss(w0.detach()[:, 0], w1.detach()[:, 0], wn.detach()[:, 0], *moments,
                             target_slope=target)
    torch.testing.assert_close(in_moments, per_sample, rtol=1e-12, atol=1e-12)


def test_wishart_moments_have_the_law_of_sample_moments(device):
    n, batch, sx, se = 200_000, 5, 1.3, 0.7
    g = make_generator(2, device=device)
    x2, xe, e2 = ni.sample_batch_moments((n,), batch, sx, se, g, device=device)
    for value, mean, var in ((x2, sx**2, 2 * sx**4 / batch), (e2, se**2, 2 * se**4 / batch),
                             (xe, 0.0, sx**2 * se**2 / batch)):
        assert abs(float(value.mean()) - mean) < 5 * math.sqrt(var / n)
        # variance of a sample variance ~ (kappa4 + 2 var^2) / n; kappa4 <= 12 var^2 here
        assert abs(float(value.var()) - var) < 5 * math.sqrt(14 * var**2 / n)
    # uncorrelated, as for Gaussian samples
    assert abs(float(torch.corrcoef(torch.stack([x2, xe, e2]))[0, 1])) < 5 / math.sqrt(n)


def test_wishart_and_sample_runs_agree_in_distribution(device):
    n = 4000
    init = tuple(torch.full((n,), v, device=device, dtype=F64) for v in (1.5, 1.0, 0.5))
    finals = []
    for k, mode in enumerate(("samples", "wishart")):
        run = ni.run_toy_sgd(init, 0.05, 0.8, 20, batch_size=8, moments=mode, record=[20],
                             generator=make_generator(10 + k, device=device), device=device)
        finals.append(torch.stack([run.records[w][-1] for w in ("w0", "w1", "wn")]))
    for a, b in zip(*finals, strict=True):
        se = math.sqrt((a.var() + b.var()) / n)
        assert abs(float(a.mean() - b.mean())) < 5 * se


def test_reduced_map_has_the_printed_coefficients(device):
    w0, w1, wn = _weights(50, device)
    eta, sx, batch, target, sigma = 0.02, 1.4, 16, 0.9, 0.6
    phi = torch.randn(50, generator=make_generator(3, device=device), device=device, dtype=F64)
    moments = ni.reduced_batch_moments(phi, sx, sigma, batch)
    new = ni.toy_update((w0, w1, wn), moments, eta, target)
    c = ni.reduced_map_coefficients(w0, w1, wn, eta, sx, batch, target, device=device)
    # Eqs. 5-6 with Phi -> -Phi (the step subtracts the gradient)
    kick = phi * sigma
    torch.testing.assert_close(new[1], -c["A"] * kick + w1 * (1 - c["B"] * sigma**2) - c["C"])
    torch.testing.assert_close(new[2], -c["A_tilde"] * kick + wn * (1 - c["B_tilde"] * sigma**2))
    torch.testing.assert_close(new[0], -c["A_0"] * phi * sigma + w0 - c["C_0"])


def test_thresholds_and_time_scales(device):
    th = ni.phase_thresholds(1.5, 2.0, 0.5, eta=0.01, sigma_x=1.0, batch_size=4, device=device)
    assert math.isclose(float(th.catapult), math.sqrt(2 / (0.01 * 4.0)), rel_tol=1e-12)
    assert math.isclose(float(th.divergent), math.sqrt(2 / (0.01 * 0.25)), rel_tol=1e-12)
    a_tilde = 0.01 * 1.0 / 2 * 2.0 * (3.0 - 1.0)
    assert math.isclose(float(th.decoupled), 2 * a_tilde / (0.01 * 4.0 * 0.5), rel_tol=1e-12)
    tau_noise, tau_loss = ni.decay_time_scales(1.5, 2.0, 1.0, 0.5, device=device)
    assert math.isclose(float(tau_noise), 1 / (0.25 * 4.0), rel_tol=1e-12)
    assert math.isclose(float(tau_loss), 1 / (2 * (2.25 + 4.0)), rel_tol=1e-12)


def test_noise_map_divergence_brackets_linear_stability(device):
    w1 = torch.full((3,), 1.0, device=device, dtype=F64)
    wn = torch.full((3,), 0.1, device=device, dtype=F64)
    sigma = torch.tensor([10.0, 13.0, 200.0], device=device, dtype=F64)   # cat = 14.1, div = 141
    diverged = ni.noise_dominated_divergence(w1, wn, 0.01, sigma)
    assert diverged.tolist() == [False, False, True]
    path = ni.mean_map_trajectory((1.5, 1.0, 0.1), 0.01, sigma, 50, device=device)
    assert path[2].shape == (51, 3)
    assert float(path[2][-1, 0].abs()) < 0.1 and float(path[1][-1, 2].abs()) >= 1e6


def test_fixed_nin_reuses_noise_and_runs(device):
    n = 64
    init = tuple(torch.full((n,), v, device=device, dtype=F64) for v in (1.5, 1.0, 0.5))
    sigma = torch.linspace(0.5, 2.0, n, device=device, dtype=F64)
    for nin in ni.NIN_MODES:
        run = ni.run_toy_sgd(init, 0.05, sigma, 30, batch_size=8, moments="samples", nin=nin,
                             n_train=32, record=10, generator=make_generator(5, device=device),
                             device=device)
        assert run.records["wn"].shape == (4, n)
        assert float((run.records["wn"][-1].abs() < 0.5).float().mean()) == 1.0


def test_divergence_is_data_not_an_error(device):
    init = tuple(torch.full((4,), v, device=device, dtype=F64) for v in (1.5, 1.0, 0.1))
    run = ni.run_toy_sgd(init, 0.01, 300.0, 50, batch_size=64, record=10, device=device)
    assert bool(run.diverged.all())


@pytest.mark.parametrize("loss", ni.MLP_LOSSES)
def test_mlp_gradients_match_autograd(device, loss):
    g = make_generator(6, device=device)
    params = ni.init_nin_mlp(3, 5, 7, 4, generator=g, device=device)
    x = torch.randn(3, 6, 5, generator=g, device=device, dtype=F64)
    # targets are probability vectors, as the cross-entropy residual softmax(f) - y assumes
    y = torch.softmax(torch.randn(3, 6, 4, generator=g, device=device, dtype=F64), -1)
    eps = torch.randn(3, 6, generator=g, device=device, dtype=F64)
    leaves = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    expected = torch.autograd.grad(ni.nin_mlp_loss(leaves, x, y, eps, loss).sum(), list(leaves.values()))
    got = ni.nin_mlp_gradients(params, x, y, eps, loss)
    for name, e in zip(leaves, expected, strict=True):
        torch.testing.assert_close(got[name], e, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("loss", ni.MLP_LOSSES)
def test_mlp_noise_curvature_is_the_second_derivative_along_the_niw(device, loss):
    """b_NI is d^2/dc^2 of the mean loss when every pre-activation is shifted by c u, u = w_NI/|w_NI|;
    b_next is the same for a shift of the hidden activations along w_NI fed through W1 (|D w_NI|^2
    for a unit output Hessian)."""
    g = make_generator(9, device=device)
    params = ni.init_nin_mlp(2, 5, 6, 3, generator=g, device=device)
    params["b1"] = 0.5 * torch.randn(2, 1, 3, generator=g, device=device, dtype=F64)
    x = torch.randn(40, 5, generator=g, device=device, dtype=F64)
    y = torch.nn.functional.one_hot(torch.randint(3, (40,), generator=g, device=device), 3).to(F64)
    b_ni, b_next = ni.nin_noise_hessian_rates(params, x, loss)
    unit = params["w_ni"] / params["w_ni"].norm(dim=-1, keepdim=True)
    for model in range(2):
        def shifted_loss(c, model=model):
            p = {k: v[model:model + 1] for k, v in params.items()}
            p["w_ni"] = unit[model:model + 1]
            return ni.nin_mlp_loss(p, x, y[None], c * torch.ones(1, 40, device=device, dtype=F64), loss)[0]
        second = torch.autograd.functional.hessian(shifted_loss, torch.zeros((), device=device, dtype=F64))
        torch.testing.assert_close(b_ni[model], second, rtol=1e-10, atol=1e-12)
    z = x @ params["W0"] + params["b0"]
    expected_next = ((z > 0) * params["w_ni"][:, None, :]).square().sum(-1).mean(-1)
    torch.testing.assert_close(b_next, expected_next.to(F64), rtol=1e-12, atol=1e-14)


def test_mlp_models_are_independent(device):
    """Training a batch of models equals training each one alone (same random draws)."""
    g = make_generator(7, device=device)
    x = torch.randn(40, 6, generator=g, device=device, dtype=F64)
    y = torch.randint(3, (40,), generator=g, device=device)
    params = ni.init_nin_mlp(2, 6, 5, 3, generator=g, device=device)
    sigma = torch.tensor([0.0, 0.0], device=device, dtype=F64)
    both = ni.train_nin_mlp(params, x, y, x[:10], y[:10], sigma, eta=0.1, batch_size=40,
                            n_steps=5, record=5, n_classes=3,
                            generator=make_generator(8, device=device))
    # with sigma = 0 and full-batch draws (with replacement) the two copies of model 0 must agree
    twin = {k: v[[0, 0]].clone() for k, v in params.items()}
    again = ni.train_nin_mlp(twin, x, y, x[:10], y[:10], sigma, eta=0.1, batch_size=40, n_steps=5,
                             record=5, n_classes=3, generator=make_generator(8, device=device))
    assert again["test_loss"].shape == (2, 2)
    assert abs(again["test_loss"][0, 0] - both["test_loss"][0, 0]) < 1e-12
    assert not both["diverged"].any()


def test_bad_input_names_the_argument(device):
    w = torch.ones(4, device=device, dtype=F64)
    with pytest.raises(ValueError, match="sigma_eps"):
        ni.run_toy_sgd((w, w, w), 0.1, -1.0, 5, device=device)
    with pytest.raises(ValueError, match="eta"):
        ni.run_toy_sgd((w, w, w), 0.0, 1.0, 5, device=device)
    with pytest.raises(ValueError, match="moments"):
        ni.run_toy_sgd((w, w, w), 0.1, 1.0, 5, moments="exact", device=device)
    with pytest.raises(ValueError, match="n_train"):
        ni.run_toy_sgd((w, w, w), 0.1, 1.0, 5, nin="fixed", moments="samples", device=device)
    with pytest.raises(ValueError, match="initial"):
        ni.run_toy_sgd((w, w[:2], w), 0.1, 1.0, 5, device=device)
    with pytest.raises(ValueError, match="sigma_eps"):
        ni.run_toy_sgd((w, w, w), 0.1, torch.ones(3), 5, device=device)
    with pytest.raises(ValueError, match="w0"):
        ni.reduced_map_coefficients(float("nan"), 1.0, 1.0, 0.1, device=device)
    with pytest.raises(ValueError, match="batch_size"):
        ni.sample_batch_moments((3,), 0, 1.0, 1.0, device=device)
    with pytest.raises(ValueError, match="sigma_x"):
        ni.decay_time_scales(1.0, 1.0, -1.0, 1.0, device=device)
    with pytest.raises(ValueError, match="shape"):
        ni.batch_moments(torch.ones(3, 4), torch.ones(3, 5))
    params = ni.init_nin_mlp(2, 3, 4, 2, device=device)
    inputs = torch.ones(5, 3, device=device, dtype=F64)
    labels = torch.zeros(5, dtype=torch.long, device=device)
    two_models = torch.ones(2, device=device, dtype=F64)
    mlp_options = dict(eta=0.1, batch_size=2, n_steps=2, n_classes=2)
    with pytest.raises(ValueError, match="sigma_eps"):
        ni.train_nin_mlp(params, inputs, labels, inputs, labels, torch.ones(3, device=device, dtype=F64),
                         **mlp_options)
    with pytest.raises(ValueError, match="loss"):
        ni.train_nin_mlp(params, inputs, labels, inputs, labels, two_models, loss="hinge", **mlp_options)
    with pytest.raises(ValueError, match="loss"):
        ni.nin_noise_hessian_rates(params, inputs, loss="l1")


def test_wishart_moments_of_a_single_sample_are_rank_one(device):
    """With |B| = 1 the moment matrix is x x^T: <x eps>^2 = <x^2> <eps^2> exactly."""
    x2, xe, e2 = ni.sample_batch_moments((1000,), 1, 1.2, 0.4,
                                         make_generator(9, device=device), device=device)
    torch.testing.assert_close(xe * xe, x2 * e2, rtol=1e-12, atol=1e-15)


def test_initial_decay_rate_reads_the_slope_at_zero(device):
    eta, steps = 0.01, torch.arange(11, device=device, dtype=F64)
    # log w = -rate * eta * k + c k^2: the quadratic fit is exact
    rates = torch.tensor([0.5, 3.0, 40.0], device=device, dtype=F64)
    log_w = -rates * eta * steps[:, None] + 1e-3 * steps[:, None] ** 2
    torch.testing.assert_close(ni.initial_decay_rate(log_w, 10, eta), rates)
    # a geometric decay (1 - u)^k has the one-step rate -log(1 - u) / eta
    u = 0.2
    got = ni.initial_decay_rate(steps * math.log(1 - u), 6, eta)
    assert math.isclose(float(got), -math.log(1 - u) / eta, rel_tol=1e-10)
    with pytest.raises(ValueError, match="n_fit"):
        ni.initial_decay_rate(log_w, 11, eta)
    with pytest.raises(ValueError, match="n_fit"):
        ni.initial_decay_rate(log_w, 1, eta)


def test_observed_phase_reads_the_four_phases(device):
    start = torch.full((4,), 0.1, device=device, dtype=F64)
    path = torch.tensor([[0.1, 0.1, 0.1, 0.1], [0.1, 0.05, 0.2, 0.1], [0.099, 0.01, 0.02, 1e3]],
                        device=device, dtype=F64)
    diverged = torch.tensor([False, False, False, True], device=device)
    assert ni.observed_phase(path, start, diverged).tolist() == [0, 1, 2, 3]
    # a smaller growth margin or a weaker decay criterion moves runs between phases
    assert ni.observed_phase(path, start, diverged, decay=1.05).tolist() == [0, 1, 2, 3]
    assert ni.observed_phase(path, start, diverged, growth=3.0).tolist() == [0, 1, 1, 3]


def test_predicted_phase_follows_the_thresholds(device):
    sigma = torch.tensor([0.05, 3.0, 16.0, 60.0], device=device, dtype=F64)
    centre = tuple(torch.full((4,), c, device=device, dtype=F64) for c in (1.5, 1.0, 0.1))
    pred = ni.predicted_phase(centre, sigma, 1000, eta=0.01, batch_size=1024)
    assert pred.phase.tolist() == [0, 1, 2, 3]
    assert pred.band.dtype == torch.bool and pred.band.shape == (4,)
    th = ni.phase_thresholds(*centre, eta=0.01, batch_size=1024, device=device)
    torch.testing.assert_close(pred.thresholds.catapult, th.catapult)
    # wrong theories: a catapult threshold sqrt(2) higher, divergence only above sigma_div
    late = ni.predicted_phase(centre, sigma, 1000, eta=0.01, batch_size=1024,
                              catapult=math.sqrt(2) * th.catapult)
    assert late.phase.tolist() == [0, 1, 1, 3]
    printed = ni.predicted_phase(centre, sigma, 1000, eta=0.01, batch_size=1024,
                                 divergent=th.divergent)
    assert printed.phase.tolist() == [0, 1, 2, 2]
    # a wider band (larger z) never decides more runs
    wide = ni.predicted_phase(centre, sigma, 1000, eta=0.01, batch_size=1024, z=50.0)
    assert bool((wide.band | ~pred.band).all())
    with pytest.raises(ValueError, match="initial"):
        ni.predicted_phase(centre[:2], sigma, 10, eta=0.01, batch_size=4)


def _history(nin, next_norm, accuracy, test_loss, diverged=None):
    nin = np.asarray(nin, dtype=float)
    return {"nin_norm": nin, "next_norm": np.asarray(next_norm, dtype=float),
            "test_accuracy": np.asarray(accuracy, dtype=float),
            "test_loss": np.asarray(test_loss, dtype=float),
            "diverged": np.zeros(nin.shape[1], bool) if diverged is None else np.asarray(diverged)}


def test_mlp_phases_and_signatures():
    # decoupled, decay, catapult, divergent; columns are networks, rows records
    history = _history(nin=[[1, 1, 1, 1], [1, 0.5, 3, 50], [1.05, 0.1, 1, 500]],
                       next_norm=[[1, 1, 1, 1], [1, 0.9, 0.6, 2], [1, 0.95, 0.7, 5]],
                       accuracy=[[0.1] * 4, [0.5] * 4, [0.9, 0.9, 0.9, 0.2]],
                       test_loss=[[1, 1, 1, 1], [0.5, 0.5, 0.5, 2], [0.1, 0.1, 0.2, 3]])
    phase, ratio = ni.classify_nin_mlp(history)
    assert phase.tolist() == [0, 1, 2, 3] and ratio.shape == (3, 4)
    sigmas = np.array([0.1, 1.0, 10.0, 30.0])
    signatures = ni.nin_mlp_signatures(history, phase, sigmas, learned_accuracy=0.8)
    held = {name: holds for name, (holds, _) in signatures.items()}
    # one decay network: its dip has no standard error, so the dip signature cannot hold
    assert not held.pop("next layer dips deeper in a catapult")
    assert all(held.values()), held
    ni.assert_signatures({k: v for k, v in signatures.items() if k in held})
    with pytest.raises(CheckFailed, match="four phases in order of noise"):
        ni.assert_signatures(ni.nin_mlp_signatures(history, phase, sigmas[::-1],
                                                   learned_accuracy=0.8))


def test_mlp_phase_figure_has_four_panels():
    import matplotlib

    matplotlib.use("Agg")
    history = _history(nin=[[1, 1, 1, 1], [1, 0.5, 3, 50], [1.05, 0.1, 1, 500]],
                       next_norm=np.ones((3, 4)), accuracy=np.full((3, 4), 0.5),
                       test_loss=np.ones((3, 4)))
    history["train_loss"], history["steps"] = np.ones((3, 4)), np.arange(3)
    fig = ni.plot_nin_mlp_phases(history, np.array([0, 1, 2, 3]), np.ones(4), 0.1,
                                 np.array([0.1, 1.0, 10.0, 30.0]), "loss")
    assert len(fig.axes) == 8      # four panels, each with a twin axis for the accuracy


def test_toy_phase_point_is_a_sweepable_experiment():
    from learndyn.sweep import sweep

    points = sweep(ni.toy_phase_point, {"sigma_eps": [0.05, 40.0]}, seed=3)
    for point, phase in zip(points, ("decoupled", "divergent"), strict=True):
        k = ni.PHASES.index(phase)
        assert point.result["observed"][k] == 1.0 and point.result["predicted"][k] == 1.0
    assert sum(points[0].result["observed"]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sigma_eps"):
        ni.toy_phase_point(-1.0, seed=0)


# --------------------------------------------------------------------------------------------------
# Issue 14: divergence onset, NIW Hessian spectrum and kink, Eq. 8, replica ensembles
# --------------------------------------------------------------------------------------------------

def test_divergence_onset_decides_the_noise_map(device):
    g = make_generator(21, device=device)
    w1 = 1 + 0.3 * torch.randn(300, generator=g, device=device, dtype=F64)
    wn = w1 * (0.05 + 0.95 * torch.rand(300, generator=g, device=device, dtype=F64))
    onset = ni.divergence_onset(w1, wn, 0.02, device=device)
    torch.testing.assert_close(onset, 2 / torch.sqrt(0.02 * (w1**2 + wn**2)))
    factor = torch.where(torch.arange(300, device=device) % 2 == 0, 0.9, 1.1).to(F64)
    diverged = ni.noise_dominated_divergence(w1, wn, 0.02, onset * factor, n_steps=400, device=device)
    assert diverged.tolist() == (factor > 1).tolist()
    # sqrt(2) sigma_cat in the limit of a small NIW
    small = ni.divergence_onset(1.0, 1e-6, 0.01, device=device)
    cat = ni.phase_thresholds(1.5, 1.0, 1e-6, 0.01, device=device).catapult
    assert abs(float(small / cat) - math.sqrt(2)) < 1e-9


def test_predicted_phase_with_a_divergence_threshold_has_a_band(device):
    centre = tuple(torch.full((3,), c, device=device, dtype=F64) for c in (1.5, 1.0, 0.1))
    onset = ni.divergence_onset(centre[1], centre[2], 0.01, device=device)
    sigma = onset * torch.tensor([0.8, 1.0, 2.0], device=device, dtype=F64)
    pred = ni.predicted_phase(centre, sigma, 100, eta=0.01, batch_size=1024, z=2.0, divergent=onset)
    assert pred.phase.tolist()[2] == 3 and pred.phase.tolist()[0] == 2
    assert pred.band.tolist() == [False, True, False]


def _small_network(device, seed=30, n_models=2, loss_bias=True):
    g = make_generator(seed, device=device)
    params = ni.init_nin_mlp(n_models, 4, 6, 3, nin_scale=0.5, generator=g, device=device)
    params["b0"] = 0.3 * torch.randn(n_models, 1, 6, generator=g, device=device, dtype=F64)
    x = torch.randn(300, 4, generator=g, device=device, dtype=F64)
    y = torch.randint(3, (300,), generator=g, device=device)
    return params, x, y, g


@pytest.mark.parametrize("loss", ni.MLP_LOSSES)
def test_curvature_spectrum_is_the_niw_hessian(device, loss):
    params, x, y, _ = _small_network(device)
    lam, vec = ni.nin_curvature_spectrum(params, x, loss)
    b_ni, _ = ni.nin_noise_hessian_rates(params, x, loss)
    curvature = vec @ torch.diag_embed(lam) @ vec.transpose(1, 2)
    unit = params["w_ni"] / params["w_ni"].norm(dim=-1, keepdim=True)
    torch.testing.assert_close(torch.einsum("ni,nij,nj->n", unit, curvature, unit), b_ni)
    # K is the Hessian in w_NI of the noise term 1/2 <v^T H v>, v = W1^T D w (masks at eps = 0)
    for model in range(2):
        def noise_term(w, model=model):
            z = x @ params["W0"][model] + params["b0"][model]
            v = ((z > 0).to(F64) * w) @ params["W1"][model]
            if loss == "mse":
                return 0.5 * v.square().sum(-1).mean()
            p = torch.softmax(torch.relu(z) @ params["W1"][model] + params["b1"][model], -1)
            return 0.5 * ((p * v.square()).sum(-1) - (p * v).sum(-1).square()).mean()
        hessian = torch.autograd.functional.hessian(noise_term, params["w_ni"][model])
        torch.testing.assert_close(curvature[model], hessian, rtol=1e-10, atol=1e-12)
    assert bool((lam[:, -1] >= b_ni - 1e-12).all())


def test_spectral_decay_is_the_matrix_power(device):
    params, x, _, _ = _small_network(device)
    lam, vec = ni.nin_curvature_spectrum(params, x)
    rate = torch.tensor([0.5, 1.5], device=device, dtype=F64)
    got = ni.spectral_niw_decay(lam, vec, params["w_ni"], rate, [0, 1, 5])
    curvature = vec @ torch.diag_embed(lam) @ vec.transpose(1, 2)
    unit = params["w_ni"] / params["w_ni"].norm(dim=-1, keepdim=True)
    for model in range(2):
        step = torch.eye(6, device=device, dtype=F64) - rate[model] * curvature[model]
        for row, t in enumerate((0, 1, 5)):
            expected = unit[model] @ torch.linalg.matrix_power(step, t) @ unit[model]
            torch.testing.assert_close(got[row, model], expected)


def test_kink_curvature_is_the_mean_niw_gradient(device):
    """sigma^2 (K + diag kappa) w is the mean NIW gradient over the noise, to first order."""
    params, x, y, g = _small_network(device, n_models=1)
    sigma, draws = 0.5, 3000
    hot = torch.nn.functional.one_hot(y, 3).to(F64)
    copies = {k: v.expand(draws, *v.shape[1:]) for k, v in params.items()}
    eps = sigma * torch.randn(draws, 300, generator=g, device=device, dtype=F64)
    grads = ni.nin_mlp_gradients(copies, x.expand(draws, -1, -1).contiguous(),
                                 hot.expand(draws, -1, -1).contiguous(), eps)["w_ni"]
    w = params["w_ni"][0]
    lam, vec = ni.nin_curvature_spectrum(params, x)
    kappa = ni.nin_kink_curvature(params, x, y, sigma, n_classes=3)[0]
    predicted = sigma**2 * (vec[0] @ torch.diag(lam[0]) @ vec[0].T @ w + kappa * w)
    without_kink = sigma**2 * (vec[0] @ torch.diag(lam[0]) @ vec[0].T @ w)
    se = grads.std(0) / math.sqrt(draws)
    gap = (grads.mean(0) - predicted).abs()
    assert bool((gap < 5 * se + 0.05 * predicted.abs()).all()), (gap, se)
    assert float((grads.mean(0) - without_kink).abs().max()) > float(gap.max())


def test_loss_decay_rates_are_the_first_order_change(device):
    params, x, y, _ = _small_network(device)
    x_eval, y_eval = x[:100], y[:100]
    rate = ni.loss_decay_rates(params, x, y, x_eval, y_eval, n_classes=3)
    h = 1e-6
    hot, hot_eval = (torch.nn.functional.one_hot(v, 3).to(F64) for v in (y, y_eval))
    zeros = torch.zeros(2, 300, device=device, dtype=F64)
    grads = ni.nin_mlp_gradients(params, x.expand(2, -1, -1).contiguous(),
                                 hot.expand(2, -1, -1).contiguous(), zeros)
    stepped = {k: v - h * grads[k] if k != "w_ni" else v for k, v in params.items()}
    before, after = (ni.nin_mlp_loss(p, x_eval.expand(2, -1, -1), hot_eval.expand(2, -1, -1),
                                     zeros[:, :100]) for p in (params, stepped))
    torch.testing.assert_close(rate, (before - after) / (h * before), rtol=1e-4, atol=1e-8)
    local = ni.loss_decay_rates(params, x, y, x_eval, y_eval, layers=("W1", "b1"), n_classes=3)
    assert bool((local != rate).all())
    # the NIN's pull changes the rate, and only through the expanded training loss
    pulled = ni.loss_decay_rates(params, x, y, x_eval, y_eval, sigma_eps=3.0, n_classes=3)
    assert bool((pulled != rate).all())
    first = ni.loss_decay_rates(params, x, y, x_eval, y_eval, sigma_eps=3.0, layers=("W0", "b0"),
                                n_classes=3)
    torch.testing.assert_close(first, ni.loss_decay_rates(params, x, y, x_eval, y_eval,
                                                          layers=("W0", "b0"), n_classes=3))


def test_full_batch_descent_takes_gradient_steps(device):
    params, x, y, _ = _small_network(device)
    losses = ni.full_batch_descent(params, x, y, x[:50], y[:50], eta=0.1, n_steps=2, n_classes=3)
    assert losses.shape == (3, 2)
    hot = torch.nn.functional.one_hot(y, 3).to(F64)
    zeros = torch.zeros(2, 300, device=device, dtype=F64)
    grads = ni.nin_mlp_gradients(params, x.expand(2, -1, -1).contiguous(),
                                 hot.expand(2, -1, -1).contiguous(), zeros)
    one = {k: v - 0.1 * grads[k] for k, v in params.items()}
    expected = ni.nin_mlp_loss(one, x[:50].expand(2, -1, -1), hot[:50].expand(2, -1, -1), zeros[:, :50])
    torch.testing.assert_close(losses[1], expected)


def test_mean_decay_rate_of_exponentials(device):
    t = torch.arange(11, dtype=F64).reshape(-1, 1, 1)
    values = torch.exp(-0.02 * torch.tensor([1.0, 3.0], dtype=F64).reshape(1, 2, 1) * t).expand(11, 2, 5)
    rate, se = ni.mean_decay_rate(values, 4, 0.02)
    torch.testing.assert_close(rate, torch.tensor([1.0, 3.0], dtype=F64))
    assert float(se.max()) < 1e-12
    # the standard error matches the spread of rates fitted replica by replica
    g = make_generator(31, device="cpu")
    noisy = torch.exp(-0.1 * torch.arange(5, dtype=F64)).reshape(-1, 1) * (
        1 + 0.01 * torch.randn(5, 4000, generator=g, dtype=F64))
    rate, se = ni.mean_decay_rate(noisy, 4, 0.1)
    singles = ni.initial_decay_rate(noisy.log(), 4, 0.1)
    assert abs(float(se) / float(singles.std() / math.sqrt(4000)) - 1) < 0.1
    with pytest.raises(ValueError, match="records"):
        ni.mean_decay_rate(noisy[:3], 4, 0.1)


def test_replica_runs_fixed_nin_and_final_state(device):
    g = make_generator(32, device=device)
    x = torch.randn(40, 5, generator=g, device=device, dtype=F64)
    y = torch.randint(3, (40,), generator=g, device=device)
    net = ni.init_nin_mlp(1, 5, 4, 3, generator=g, device=device)
    runs = {nin: ni.train_nin_mlp_replicas(net, [0.0, 1.0], 3, x, y, x[:10], y[:10], eta=0.1,
                                           batch_size=8, n_steps=6, record=2, n_classes=3, nin=nin,
                                           generator=make_generator(33, device=device))
            for nin in ni.NIN_MODES}
    fixed, fresh = runs["fixed"], runs["rerandomized"]
    assert fixed["nin_along"].shape == (4, 6) and fixed["final"]["W0"].shape == (6, 5, 4)
    np.testing.assert_allclose(fixed["nin_along"][0], np.full(6, float(net["w_ni"].norm())))
    # with sigma = 0 the NIW never moves, whatever the mode
    np.testing.assert_allclose(fixed["nin_norm"][:, :3], fresh["nin_norm"][:, :3], rtol=1e-12)
    quiet = ni.train_nin_mlp_replicas(net, [1.0], 2, x, y, x[:10], y[:10], eta=0.1, batch_size=8,
                                      n_steps=2, n_classes=3, record_losses=False)
    assert set(quiet) == {"nin_norm", "nin_along", "steps", "diverged", "final"}
    with pytest.raises(ValueError, match="nin"):
        ni.train_nin_mlp(ni.replicate_nin_mlp(net, 2), x, y, x, y, torch.zeros(2, device=device),
                         eta=0.1, batch_size=4, n_steps=1, nin="sometimes")
    with pytest.raises(ValueError, match="replicate one"):
        ni.replicate_nin_mlp(ni.replicate_nin_mlp(net, 2), 3)


def test_digits_sweep_records_both_curvatures():
    digits = ni.standardized_digits(make_generator(34, device="cpu"), dtype=torch.float32)
    x_tr = digits[0]
    assert x_tr.shape[1] == 64 and float(x_tr.mean(0).abs().max()) < 1e-5
    history, sigma, b_ni, lam = ni.nin_mlp_sweep([0.1, 5.0], *digits, loss="mse", eta=0.03,
                                                 n_steps=3, nin_scale=0.1, replicas=2,
                                                 generators=(make_generator(35), make_generator(36)))
    np.testing.assert_allclose(sigma, [0.1, 0.1, 5.0, 5.0], rtol=1e-6)
    assert b_ni.shape == lam.shape == (4,)
    assert (lam >= b_ni).all() and history["test_loss"].shape[1] == 4
