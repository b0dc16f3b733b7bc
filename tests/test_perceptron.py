"""The perceptron kernels of chapter 3 (learndyn.perceptron)."""

import math

import numpy as np
import pytest
import torch

from learndyn.flows import integrate_moments
from learndyn.perceptron import (
    RULES,
    GaussianClasses,
    fixed_point_norm,
    gaussian_accuracy,
    isotropic_flow,
    learning_step,
    mean_update,
    rl_step,
    simulate,
    sl_step,
    symmetric_mean_update,
    symmetric_step,
)

F64 = torch.float64


def anisotropic_classes(device):
    mu = torch.tensor([1.0, 0.3, -0.2], dtype=F64, device=device)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.4, 0.7, 0.0], [-0.3, 0.2, 0.6]], dtype=F64,
                        device=device)
    return GaussianClasses.make(mu, -0.7 * mu, root @ root.T, 0.5 * root @ root.T + 0.1 *
                                torch.eye(3, dtype=F64, device=device))


@pytest.mark.parametrize("rule", RULES)
def test_mean_update_matches_the_average_update(rule, device):
    classes = anisotropic_classes(device)
    w = torch.tensor([0.8, -0.5, 1.2], dtype=F64, device=device)
    samples = 400_000
    generator = torch.Generator(device=device).manual_seed(11)
    normals = torch.randn(samples, 5, generator=generator, dtype=F64, device=device)
    replicas = w.expand(samples, 3)
    if rule == "sl":
        updates = sl_step(replicas, normals[:, :4], classes, 1.0, 0.2) - replicas
    else:
        updates = rl_step(replicas, normals, classes, 1.0, 0.2) - replicas
    error = updates.std(0) / math.sqrt(samples)
    # 5 standard errors for 3 components
    assert ((updates.mean(0) - mean_update(w, classes, 0.2, rule)).abs() < 5 * error).all()


@pytest.mark.parametrize("rule", RULES)
def test_reductions_agree_with_the_general_flow(rule):
    mu = torch.tensor([1.0, 0.3, -0.2], dtype=F64)
    var = torch.tensor([0.5, 1.5, 2.0], dtype=F64)
    w = torch.tensor([[0.8, -0.5, 1.2], [0.1, 0.0, 2.0]], dtype=F64)
    classes = GaussianClasses.make(mu, -mu, torch.diag(var))
    torch.testing.assert_close(symmetric_mean_update(w, mu, var, 0.1, rule),
                               mean_update(w, classes, 0.1, rule), rtol=1e-13, atol=1e-15)
    sigma = 0.7
    update = symmetric_mean_update(w, mu, torch.full((3,), sigma**2, dtype=F64), 0.1, rule)
    dm, dq = isotropic_flow(w @ mu, (w * w).sum(-1), sigma, mu @ mu, 0.1, rule)
    torch.testing.assert_close(dm, update @ mu, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(dq, 2 * (update * w).sum(-1), rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("sigmoid", ["erf", "logistic"])
def test_isotropic_fast_path_equals_the_generic_step(rule, sigmoid):
    mu = torch.tensor([1.0, 0.3, -0.2], dtype=F64)
    fast = GaussianClasses.make(mu, -0.5 * mu, 0.49, 0.25)
    generic = GaussianClasses.make(mu, -0.5 * mu, 0.49 * torch.eye(3, dtype=F64) + 1e-300,
                                   0.25 * torch.eye(3, dtype=F64))
    assert fast.isotropic and not generic.isotropic
    generator = torch.Generator().manual_seed(5)
    w = torch.randn(64, 3, generator=generator, dtype=F64)
    normals = torch.randn(64, 5, generator=generator, dtype=F64)
    normals = normals if rule == "rl" else normals[:, :4]
    torch.testing.assert_close(learning_step(fast, 0.1, 0.3, rule, sigmoid)(w, normals),
                               learning_step(generic, 0.1, 0.3, rule, sigmoid)(w, normals),
                               rtol=1e-14, atol=1e-14)


@pytest.mark.parametrize("rule", RULES)
def test_fixed_point_is_a_zero_of_the_flow(rule):
    cases = ((0.0, 0.1), (0.5, 0.0), (1.0, 0.3)) if rule == "sl" else ((0.0, 0.1), (1.0, 0.3))
    for sigma, lam in cases:
        r = torch.tensor(fixed_point_norm(sigma, lam, rule), dtype=F64)
        w = torch.stack([r, torch.zeros((), dtype=F64)])
        update = symmetric_mean_update(w, torch.tensor([1.0, 0.0], dtype=F64),
                                       torch.full((2,), sigma**2, dtype=F64), lam, rule)
        assert update.abs().max() < 1e-12
    with pytest.raises(ValueError, match="lam=0"):
        fixed_point_norm(0.0 if rule == "sl" else 0.5, 0.0, rule)


def test_simulate_records_the_ensemble_and_covariance_flow_runs():
    classes = GaussianClasses.make([1.0, 0.0], [-1.0, 0.0], 0.25)
    w0 = torch.zeros(16, 2, dtype=F64)
    result = simulate(classes, w0, 0.01, 50, rule="rl", record=10,
                      generator=torch.Generator().manual_seed(0))
    assert result.records["state"].shape == (6, 16, 2)
    means, covs = integrate_moments(lambda w: mean_update(w, classes, 0.1, "rl"), [0.1, 0.2],
                                    0.01 * torch.eye(2, dtype=F64), [0.0, 0.5, 1.0])
    assert covs.shape == (3, 2, 2) and torch.isfinite(means).all()
    assert torch.trace(covs[-1]) < torch.trace(covs[0])


def test_gaussian_accuracy_against_monte_carlo():
    classes = anisotropic_classes("cpu")
    w = torch.tensor([0.8, -0.5, 1.2], dtype=F64)
    generator = torch.Generator().manual_seed(2)
    samples = 400_000
    x, y = classes.sample(torch.randn(samples, 4, generator=generator, dtype=F64))
    correct = ((x @ w).sign() == y).to(F64)
    error = correct.std() / math.sqrt(samples)
    assert abs(correct.mean() - gaussian_accuracy(w, classes)) < 5 * error


def test_bad_input_raises_value_errors_naming_the_argument():
    with pytest.raises(ValueError, match="cov_plus"):
        GaussianClasses.make([1.0, 0.0], [-1.0, 0.0], [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="mu_minus"):
        GaussianClasses.make([1.0, 0.0], [-1.0, 0.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="cov_minus"):
        GaussianClasses.make([1.0, 0.0], [-1.0, 0.0], 1.0, -2.0)
    classes = GaussianClasses.make([1.0, 0.0], [-1.0, 0.0], 1.0)
    with pytest.raises(ValueError, match="rule"):
        mean_update(torch.zeros(2, dtype=F64), classes, 0.0, "hebb")
    with pytest.raises(ValueError, match="lam"):
        mean_update(torch.zeros(2, dtype=F64), classes, -1.0)
    with pytest.raises(ValueError, match="w0"):
        simulate(classes, torch.zeros(4, 3), 0.1, 5)
    with pytest.raises(ValueError, match="eta"):
        simulate(classes, torch.zeros(4, 2), -0.1, 5)
    with pytest.raises(ValueError, match="sigmoid"):
        learning_step(classes, 0.1, sigmoid="tanh")


@pytest.mark.parametrize("rule", RULES)
def test_symmetric_step_matches_the_class_based_step(rule):
    mu = torch.tensor([0.6, -0.8, 0.1], dtype=F64)
    classes = GaussianClasses.make(mu, -mu, 0.3**2)
    generator = torch.Generator().manual_seed(7)
    w = torch.randn(32, 3, generator=generator, dtype=F64)
    normals = torch.randn(32, 5, generator=generator, dtype=F64)
    normals = normals if rule == "rl" else normals[:, :4]
    lam = torch.full((32, 1), 0.2, dtype=F64)
    torch.testing.assert_close(symmetric_step(mu, 0.3, 0.05, lam, rule)(w, normals),
                               learning_step(classes, 0.05, 0.2, rule)(w, normals),
                               rtol=1e-13, atol=1e-14)
    with pytest.raises(ValueError, match="std"):
        symmetric_step(mu, -1.0, 0.05)
    with pytest.raises(ValueError, match="lam"):
        symmetric_step(mu, 0.3, 0.05, torch.tensor([-0.1]))


# --- the chapter-3 helpers: wrong theories, finite training sets, halving, alignment ----------

def test_wrong_theories_reduce_to_the_true_ones_without_input_noise():
    from learndyn.perceptron import frozen_inputs_sl_update, shortcut_rl_update

    mu = torch.tensor([1.0, 0.3, -0.2], dtype=F64)
    w = torch.tensor([[0.8, -0.5, 1.2], [0.1, 0.0, 2.0]], dtype=F64)
    tiny = GaussianClasses.make(mu, -0.7 * mu, 1e-14)
    torch.testing.assert_close(frozen_inputs_sl_update(w, tiny, 0.1), mean_update(w, tiny, 0.1, "sl"),
                               rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(shortcut_rl_update(w, tiny, 0.1), mean_update(w, tiny, 0.1, "rl"),
                               rtol=1e-6, atol=1e-8)
    noisy = anisotropic_classes("cpu")
    assert (shortcut_rl_update(w, noisy, 0.1) - mean_update(w, noisy, 0.1, "rl")).abs().max() > 1e-3
    assert (frozen_inputs_sl_update(w, noisy, 0.1) - mean_update(w, noisy, 0.1, "sl")).abs().max() > 1e-3


def test_training_set_step_averages_to_the_empirical_mean_update():
    from learndyn.perceptron import empirical_mean_update, training_set_step

    generator = torch.Generator().manual_seed(3)
    x = torch.randn(7, 3, generator=generator, dtype=F64)
    y = torch.tensor([1.0, -1, 1, 1, -1, -1, 1], dtype=F64)
    w = torch.tensor([0.4, -0.3, 0.9], dtype=F64)
    step = training_set_step(x, y, 0.1, 0.2)
    average = (step(w.expand(7, 3), torch.arange(7)) - w).mean(0) / 0.1
    torch.testing.assert_close(average, empirical_mean_update(w, x, y, 0.2), rtol=1e-13, atol=1e-15)
    with pytest.raises(ValueError, match="x has shape"):
        empirical_mean_update(w, x, y[:3])
    with pytest.raises(ValueError, match="eta"):
        training_set_step(x, y, -0.1)


def test_trace_decay_matches_the_moment_equations_and_the_printed_prefactor_decays_slower():
    from learndyn.perceptron import trace_decay

    mu, centre, times = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.3, 0.5], dtype=F64), [0, 1, 2]
    ratio = trace_decay([0.0, 1.0], times, mu=mu, centre=centre, lam=0.1)
    for j, noise in enumerate((0.0, 1.0)):
        var = torch.full((2,), noise**2, dtype=F64)
        _, covs = integrate_moments(lambda w, var=var: symmetric_mean_update(w, mu, var, 0.1, "sl"),
                                    centre, torch.eye(2, dtype=F64), times, covariance_in_mean=False,
                                    substeps=2)
        torch.testing.assert_close(ratio[:, j], covs.diagonal(dim1=-2, dim2=-1).sum(-1) / 2)
    printed = trace_decay([0.0], times, mu=mu, centre=centre, lam=0.1, slope_factor=0.5)
    assert (printed[1:, 0] > ratio[1:, 0]).all() and ratio[-1, 1] < ratio[-1, 0]
    with pytest.raises(ValueError, match="noises"):
        trace_decay([-1.0], times, mu=mu, centre=centre, lam=0.1)


def test_halved_run_shares_its_random_numbers_and_extrapolation_removes_the_first_order():
    from learndyn.perceptron import extrapolated, halved_run

    def noisy(eta):
        return lambda w, noise: w + eta * noise

    run = halved_run(noisy(0.1), noisy(0.05), torch.zeros(4, 2, dtype=F64), 3, noise_shape=(4, 2),
                     record=[3], generator=torch.Generator().manual_seed(1))
    draws = torch.randn(3, 2, 4, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    torch.testing.assert_close(run.state[0], 0.1 * draws[:, 0].sum(0))  # the first draw of each step
    torch.testing.assert_close(run.state[1], 0.05 * draws.sum((0, 1)))  # both, in two half steps

    def decay(eta):
        return lambda w, noise: w - eta * w

    eta, n_steps = 0.05, 20
    run = halved_run(decay(eta), decay(eta / 2), torch.ones(3, 1, dtype=F64), n_steps,
                     noise_shape=(3, 1), record=[n_steps], generator=torch.Generator().manual_seed(0))
    mean, se = extrapolated(run.records["state0"], run.records["state1"], dim=1)
    exact = math.exp(-eta * n_steps)
    assert abs(mean.item() - exact) < abs(run.state[0][0].item() - exact) / 20 and se.item() < 1e-14
    with pytest.raises(ValueError, match="must match"):
        extrapolated(torch.zeros(3, 2), torch.zeros(3, 1))


def test_alignment_standard_error_matches_the_spread_of_repeated_experiments():
    from learndyn.perceptron import alignment

    generator = torch.Generator().manual_seed(4)
    direction = torch.tensor([1.0, 0.0], dtype=F64)
    samples = torch.tensor([0.8, 0.6], dtype=F64) + 0.3 * torch.randn(400, 200, 2, generator=generator,
                                                                     dtype=F64)
    result = alignment(samples, direction, dim=1)  # 400 experiments of 200 replicas
    mean = samples.mean(1)
    torch.testing.assert_close(result.value, mean[:, 0] / mean.norm(dim=-1))
    assert result.influence.shape == (400, 200)
    assert abs(result.value.std() / result.se.mean() - 1) < 0.15
    with pytest.raises(ValueError, match="weight axis"):
        alignment(samples, direction, dim=-1)


def test_crossing_with_error_on_a_straight_line():
    from learndyn.perceptron import crossing_with_error

    times = np.linspace(0, 1, 11)
    values = np.stack([2 * times, times], -1)
    crossing, error = crossing_with_error(times, values, np.full_like(values, 0.01), 0.5)
    np.testing.assert_allclose(crossing, [0.25, 0.5])
    np.testing.assert_allclose(error, [0.005, 0.01])
    with pytest.raises(ValueError, match="never reach"):
        crossing_with_error(times, values, np.zeros_like(values), 3.0)


@pytest.mark.parametrize("rule", RULES)
def test_alignment_rate_and_decay_rate_are_the_flow_in_other_coordinates(rule):
    from learndyn.perceptron import alignment_rate, orthogonal_decay_rate

    m = torch.tensor([0.3, 1.2, 2.0, -0.4], dtype=F64)
    q = torch.tensor([1.0, 2.0, 4.5, 0.3], dtype=F64)
    for lam in (0.0, 0.3):
        dm, dq = isotropic_flow(m, q, 0.7, 1.3, lam, rule)
        torch.testing.assert_close(alignment_rate(m, q, 0.7, 1.3, rule), dm / m - dq / (2 * q),
                                   rtol=1e-12, atol=1e-14)
        f2 = orthogonal_decay_rate(m, q, 0.7, lam, rule)
        f1 = (dm + m * f2) / 1.3  # dm/dt = |mu|^2 f1 - m f2, then 1/2 dq/dt = m f1 - q f2
        torch.testing.assert_close(dq / 2, m * f1 - q * f2, rtol=1e-12, atol=1e-14)
    # an orthogonal component decays at f2: mu = e_1, the component along e_2
    w = torch.tensor([1.1, 0.4, -0.2], dtype=F64)
    update = symmetric_mean_update(w, torch.tensor([1.0, 0.0, 0.0], dtype=F64),
                                   torch.full((3,), 0.49, dtype=F64), 0.2, rule)
    rate = orthogonal_decay_rate(w[0], w @ w, 0.7, 0.2, rule)
    torch.testing.assert_close(update[1:], -rate * w[1:], rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="rule"):
        alignment_rate(m, q, 0.7, 1.0, "hebb")


@pytest.mark.parametrize("rule", RULES)
def test_fixed_point_noise_against_the_sampled_updates(rule):
    from learndyn.perceptron import fixed_point_noise

    sigma, lam = 0.5, 0.3
    r = fixed_point_norm(sigma, lam, rule)
    classes = GaussianClasses.make([1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], sigma**2)
    w = torch.tensor([r, 0.0, 0.0], dtype=F64)
    samples = 400_000
    generator = torch.Generator().manual_seed(8)
    normals = torch.randn(samples, 5, generator=generator, dtype=F64)
    replicas = w.expand(samples, 3)
    step = sl_step(replicas, normals[:, :4], classes, 1.0, lam) if rule == "sl" else rl_step(
        replicas, normals, classes, 1.0, lam)
    f = step - replicas
    second = f[:, :, None] * f[:, None, :]  # <f> = 0 at the fixed point, so B = <f f^T>
    noise = fixed_point_noise(r, sigma, lam, rule, dim=3)
    assert noise.shape == (3, 3) and torch.equal(noise, torch.diag(noise.diagonal()))
    error = second.std(0) / math.sqrt(samples)
    assert ((second.mean(0) - noise).abs() < 5 * error).all()
    with pytest.raises(ValueError, match="sigma"):
        fixed_point_noise(r, -1.0, lam, rule)
    with pytest.raises(ValueError, match="dim"):
        fixed_point_noise(r, sigma, lam, rule, dim=0)


def test_task_sequence_carries_the_state_and_follows_the_flow():
    from learndyn.perceptron import task_sequence

    tasks = torch.eye(3, dtype=F64)[:2]
    w0 = torch.full((2000, 3), 0.2, dtype=F64)
    ends = task_sequence(tasks, [0.5, 0.5], 0.5, 0.02, 0.3, "sl", w0,
                         generator=lambda k: torch.Generator().manual_seed(k))
    assert ends.shape == (2, 2000, 3)
    var = torch.full((3,), 0.25, dtype=F64)
    w, expected = w0[0], []
    for task in tasks:
        for _ in range(100):  # Euler steps of the flow, dt = 0.005
            w = w + 0.005 * symmetric_mean_update(w, task, var, 0.3, "sl")
        expected.append(w)
    error = ends.std(1) / math.sqrt(2000)
    assert ((ends.mean(1) - torch.stack(expected)).abs() < 5 * error + 2e-3).all()
    with pytest.raises(ValueError, match="durations"):
        task_sequence(tasks, [0.5] * 3, 0.5, 0.02, 0.3, "sl", w0, generator=torch.Generator)
