"""Noise injection nodes (chapter "Noise injection nodes", label prefix ``ni-``).

A noise injection node (NIN) adds ``w_NI * eps`` to the pre-activation of a layer, with a fresh
random ``eps`` per sample and a trainable weight ``w_NI``. This module holds the chapter's kernels:

* the linear toy model ``f(x, eps) = w1 (w0 x + wn eps)`` trained on ``y = M x`` with the mean
  squared error :eq:`ni-toy-loss`. Its minibatch gradient depends on the batch only through the
  three batch moments ``<x^2>, <x eps>, <eps^2>`` (:eq:`ni-batch-gradients`), so one update rule,
  :func:`toy_update`, serves every variant: moments computed from samples (:func:`batch_moments`),
  drawn exactly from their Wishart law (:func:`sample_batch_moments`), or replaced by the reduced
  stochastic map of Eqs. 5-6 of the paper (:func:`reduced_batch_moments`);
* the coefficients of that map, the phase thresholds and the decay time scales;
* a one-hidden-layer ReLU network with a NIN on its hidden layer, trained by SGD on the squared
  error or the cross-entropy with a leading model axis, so a sweep over replicas *and* noise
  strengths is one batched run.

Every ensemble runs on :func:`learndyn.ensemble.run_ensemble`: the replica axis leads, and one step
is one batched tensor operation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .backend import (
    as_tensor,
    check_count,
    check_nonnegative,
    check_positive,
    make_generator,
    placement,
    resolve_device,
)
from .checks import CheckFailed
from .ensemble import EnsembleResult, run_ensemble

#: How ``sample_batch_moments`` draws a minibatch (from samples, from the Wishart law, or the
#: reduced map's moments, all of them or the even ones only).
MOMENT_MODES = ("samples", "wishart", "reduced", "reduced_even")
#: The noise at the NIN, drawn anew every step or fixed per example.
NIN_MODES = ("rerandomized", "fixed")
#: The losses of the MLP with a NIN, squared error or cross-entropy.
MLP_LOSSES = ("mse", "cross_entropy")


# --------------------------------------------------------------------------------------------------
# The toy model: loss, gradients, one SGD update
# --------------------------------------------------------------------------------------------------

def toy_loss(w0, w1, wn, x2, xe, e2, target_slope=1.0):
    """Batch loss of the toy model, :eq:`ni-toy-loss` written in the batch moments.

    ``L = 1/2 (r^2 <x^2> + 2 r w1 wn <x eps> + w1^2 wn^2 <eps^2>)`` with ``r = w1 w0 - M``. With
    ``xe = 0`` and ``e2 = 0`` it is the noise-free loss ``L_{eps=0}`` of Eq. 9.
    """
    r = w1 * w0 - target_slope
    return 0.5 * (r * r * x2 + 2 * r * w1 * wn * xe + (w1 * wn) ** 2 * e2)


def toy_gradients(w0, w1, wn, x2, xe, e2, target_slope=1.0):
    """Batch-averaged gradients of the toy loss, :eq:`ni-batch-gradients`.

    Returns ``(dL/dw0, dL/dw1, dL/dwn)``; all arguments broadcast (a leading replica axis).
    """
    r = w1 * w0 - target_slope
    g0 = w1 * (r * x2 + w1 * wn * xe)
    g1 = r * w0 * x2 + wn * (r + w1 * w0) * xe + w1 * wn * wn * e2
    gn = w1 * (r * xe + w1 * wn * e2)
    return g0, g1, gn


def toy_update(state, moments, eta, target_slope=1.0):
    """One SGD step of the toy model on a minibatch summarised by its moments.

    ``state = (w0, w1, wn)`` (each of shape ``(R,)``), ``moments = (x2, xe, e2)`` (broadcastable),
    ``eta`` the learning rate (a number or a per-replica tensor). Implements
    ``w <- w - eta * grad L`` with the gradients of :eq:`ni-batch-gradients`.
    """
    w0, w1, wn = state
    g0, g1, gn = toy_gradients(w0, w1, wn, *moments, target_slope=target_slope)
    return w0 - eta * g0, w1 - eta * g1, wn - eta * gn


def batch_moments(x, eps):
    """The batch moments ``(<x^2>, <x eps>, <eps^2>)`` over the last axis of ``x`` and ``eps``."""
    if x.shape != eps.shape:
        raise ValueError(f"x has shape {tuple(x.shape)} but eps has shape {tuple(eps.shape)}")
    return (x * x).mean(-1), (x * eps).mean(-1), (eps * eps).mean(-1)


def sample_batch_moments(shape, batch_size, sigma_x, sigma_eps, generator=None, *, device=None,
                         dtype=None):
    """Draw the batch moments of ``batch_size`` fresh samples ``x ~ N(0, sigma_x^2)``,
    ``eps ~ N(0, sigma_eps^2)`` exactly, at a cost that does not grow with the batch size.

    ``B * [[<x^2>, <x eps>], [<x eps>, <eps^2>]]`` is a 2x2 Wishart matrix with ``B`` degrees of
    freedom; the Bartlett decomposition ``A = L L^T`` with ``L11^2 ~ chi2(B)``, ``L21 ~ N(0, 1)``,
    ``L22^2 ~ chi2(B - 1)`` samples it. ``sigma_eps`` may be a tensor broadcasting against
    ``shape``.
    Returns ``(x2, xe, e2)`` of shape ``shape``: the law of :func:`batch_moments` of the samples.
    """
    device, dtype = placement(device, dtype, shape, batch_size, sigma_x, sigma_eps, generator)
    check_count(batch_size, "batch_size")
    check_positive(sigma_x, "sigma_x")
    sigma_eps = _nonnegative(sigma_eps, "sigma_eps", device, dtype)
    shape = tuple(shape)
    l11_sq = _chi2(shape, batch_size, generator, device, dtype)
    l21 = torch.randn(shape, generator=generator, device=device, dtype=dtype)
    l22_sq = _chi2(shape, batch_size - 1, generator, device, dtype)
    x2 = sigma_x**2 * l11_sq / batch_size
    xe = sigma_x * sigma_eps * l11_sq.sqrt() * l21 / batch_size
    e2 = sigma_eps**2 * (l21 * l21 + l22_sq) / batch_size
    return x2, xe, e2


def _chi2(shape, dof, generator, device, dtype):
    """chi2(dof) variates drawn from ``generator`` (``dof = 0`` gives zeros).

    ``chi2(k) = 2 Gamma(k/2, 1)``; ``torch._standard_gamma`` is the one gamma sampler in torch that
    takes a generator (``torch.distributions.Gamma`` does not), so a seeded run stays reproducible.
    """
    if dof == 0:
        return torch.zeros(shape, device=device, dtype=dtype)
    alpha = torch.full(shape, dof / 2.0, device=device, dtype=dtype)
    return 2.0 * torch._standard_gamma(alpha, generator=generator)


def reduced_batch_moments(phi, sigma_x, sigma_eps, batch_size, *, even_fluctuations=None):
    """The batch moments of the reduced stochastic map, :eq:`ni-reduced-map`.

    The odd moment is ``<x eps> = Phi sigma_x sigma_eps / sqrt(B)`` with ``Phi = phi`` (zero mean,
    unit variance, Theorem 1); the even moments are frozen at ``sigma_x^2`` and ``sigma_eps^2`` as
    in the paper. With ``even_fluctuations=(chi_x, chi_e)`` (unit normals) the even moments get
    their Gaussian fluctuations of variance ``2 sigma^4 / B`` as well: the terms that the paper's
    footnote 3 neglects.
    """
    root_b = math.sqrt(batch_size)
    x2 = sigma_x**2 + 0 * phi
    e2 = sigma_eps**2 + 0 * phi
    xe = phi * sigma_x * sigma_eps / root_b
    if even_fluctuations is not None:
        chi_x, chi_e = even_fluctuations
        x2 = x2 * (1 + math.sqrt(2.0) * chi_x / root_b)
        e2 = e2 * (1 + math.sqrt(2.0) * chi_e / root_b)
    return x2, xe, e2


# --------------------------------------------------------------------------------------------------
# The reduced map: coefficients, thresholds, time scales
# --------------------------------------------------------------------------------------------------

def reduced_map_coefficients(w0, w1, wn, eta, sigma_x=1.0, batch_size=1, target_slope=1.0, *,
                             device=None, dtype=None):
    """Coefficients of the reduced map, :eq:`ni-coefficients` (Eq. 6 of the paper, Phi = 1).

    Returns a dict with ``A``, ``A_tilde``, ``B``, ``B_tilde``, ``C`` as printed (``A`` and
    ``A_tilde`` are the coefficients of ``Phi``), and ``A_0``, ``C_0``: the same for the update of
    ``w0`` that Eq. 5 leaves out, ``w0' = w0 + A_0 Phi sigma_eps - C_0``.
    """
    w0, w1, wn = (as_tensor(v, name, device=device, dtype=dtype)
                  for v, name in ((w0, "w0"), (w1, "w1"), (wn, "wn")))
    eta = check_positive(eta, "eta")
    sigma_x = check_positive(sigma_x, "sigma_x")
    check_count(batch_size, "batch_size")
    r = w1 * w0 - target_slope
    kick = eta * sigma_x / math.sqrt(batch_size)
    return {
        "A": kick * wn * (2 * w1 * w0 - target_slope),
        "A_tilde": kick * w1 * r,
        "B": eta * wn * wn,
        "B_tilde": eta * w1 * w1,
        "C": eta * r * w0 * sigma_x**2,
        "A_0": kick * w1 * w1 * wn,
        "C_0": eta * r * w1 * sigma_x**2,
    }


@dataclass
class PhaseThresholds:
    """Noise strengths that separate the phases of the toy model, :eq:`ni-thresholds`.

    ``decoupled``: ``2 |A~_0| / (B~_0 |wn_0|)``, the paper's criterion with the factor ``1/|wn_0|``
    it needs to be a noise strength; ``catapult = sqrt(min(2/B_0, 2/B~_0))`` and
    ``divergent = sqrt(max(2/B_0, 2/B~_0))`` from the linear stability of Eq. 7.
    """

    decoupled: torch.Tensor
    catapult: torch.Tensor
    divergent: torch.Tensor


def phase_thresholds(w0, w1, wn, eta, sigma_x=1.0, batch_size=1, target_slope=1.0, *, device=None,
                     dtype=None) -> PhaseThresholds:
    """The phase thresholds of :eq:`ni-thresholds` at the initial weights (vectorized)."""
    c = reduced_map_coefficients(w0, w1, wn, eta, sigma_x, batch_size, target_slope, device=device,
                                 dtype=dtype)
    wn_size = as_tensor(wn, "wn", device=c["B"].device, dtype=c["B"].dtype).abs()
    decoupled = 2 * c["A_tilde"].abs() / (c["B_tilde"] * wn_size)
    first, second = 2 / c["B"], 2 / c["B_tilde"]
    return PhaseThresholds(decoupled, torch.minimum(first, second).sqrt(),
                           torch.maximum(first, second).sqrt())


def decay_time_scales(w0, w1, sigma_x, sigma_eps, *, device=None, dtype=None):
    """``(tau_noise, tau_loss)`` of :eq:`ni-time-scales`, in units of ``eta * steps``.

    ``tau_noise = 1 / (sigma_eps^2 w1^2)`` and ``tau_loss = 1 / (2 sigma_x^2 (w0^2 + w1^2))``.
    """
    w0 = as_tensor(w0, "w0", device=device, dtype=dtype)
    w1 = as_tensor(w1, "w1", device=device, dtype=dtype)
    sigma_x = check_positive(sigma_x, "sigma_x")
    sigma_eps = _nonnegative(sigma_eps, "sigma_eps", w0.device, w0.dtype)
    return 1.0 / (sigma_eps**2 * w1 * w1), 1.0 / (2 * sigma_x**2 * (w0 * w0 + w1 * w1))


def divergence_onset(w1, wn, eta, *, device=None, dtype=None):
    """The noise strength above which the noise-dominated map diverges, :eq:`ni-divergence-onset`.

    The map :eq:`ni-noise-map` is gradient descent with unit step on ``(a/2) w1^2 wn^2``,
    ``a = eta sigma_eps^2``; with ``u = a w1^2``, ``v = a wn^2`` the sum ``S = u + v`` obeys
    ``S' - 4 = (S - 4)(1 + u v)``, so the map diverges if and only if ``S_0 > 4``:
    ``sigma_onset = 2 / sqrt(eta (w1^2 + wn^2))``, which tends to ``sqrt(2) sigma_cat`` as
    ``wn / w1 -> 0``.
    """
    w1 = as_tensor(w1, "w1", device=device, dtype=dtype)
    wn = as_tensor(wn, "wn", device=device, dtype=dtype)
    eta = check_positive(eta, "eta")
    return 2 / torch.sqrt(eta * (w1 * w1 + wn * wn))


def noise_dominated_divergence(w1, wn, eta, sigma_eps, *, n_steps=200, bound=1e6, device=None,
                               dtype=None):
    """Whether the noise-dominated map, :eq:`ni-noise-map`, diverges from ``(w1, wn)``.

    Iterates ``w1 <- w1 (1 - eta sigma^2 wn^2)``, ``wn <- wn (1 - eta sigma^2 w1^2)`` (simultaneous
    update) for ``n_steps`` steps and reports, per element, whether ``|w1| + |wn|`` exceeded
    ``bound``. Linear stability predicts certain divergence above ``sigma_div`` and none below
    ``sigma_cat``; between the two this decides.
    """
    w1 = as_tensor(w1, "w1", device=device, dtype=dtype)
    wn = as_tensor(wn, "wn", device=device, dtype=dtype)
    eta = check_positive(eta, "eta")
    s2 = _nonnegative(sigma_eps, "sigma_eps", w1.device, w1.dtype) ** 2
    w1, wn = torch.broadcast_tensors(w1 + 0 * s2, wn + 0 * s2)
    diverged = torch.zeros(w1.shape, dtype=torch.bool, device=w1.device)
    for _ in range(check_count(n_steps, "n_steps")):
        w1, wn = w1 * (1 - eta * s2 * wn * wn), wn * (1 - eta * s2 * w1 * w1)
        diverged |= ~((w1.abs() + wn.abs()) <= bound)
        w1 = torch.where(diverged, torch.zeros_like(w1), w1)
        wn = torch.where(diverged, torch.zeros_like(wn), wn)
    return diverged


def mean_map_trajectory(initial, eta, sigma_eps, n_steps, *, sigma_x=1.0, target_slope=1.0,
                        bound=1e6, device=None, dtype=None):
    """The reduced map of :eq:`ni-reduced-map` with ``Phi = 0``: the batch-averaged update.

    ``initial = (w0, w1, wn)`` (broadcastable tensors), ``sigma_eps`` a number or a tensor of the
    same shape. Returns ``(w0, w1, wn)`` stacked over time, each of shape ``(n_steps + 1, ...)``.
    A run whose weights leave the ball of radius ``bound`` is clamped to ``bound`` in every weight
    from then on, so ``|w| >= bound`` on the result marks divergence.
    """
    eta = check_positive(eta, "eta")
    sigma_x = check_positive(sigma_x, "sigma_x")
    check_count(n_steps, "n_steps", minimum=0)
    state = [as_tensor(v, name, device=device, dtype=dtype)
             for v, name in zip(initial, ("w0", "w1", "wn"), strict=True)]
    s2 = _nonnegative(sigma_eps, "sigma_eps", state[0].device, state[0].dtype) ** 2
    state = list(torch.broadcast_tensors(*state, s2))[:3]
    moments = (sigma_x**2, 0.0, s2)
    path = [torch.stack(state)]
    for _ in range(n_steps):
        new = torch.stack(toy_update(tuple(state), moments, eta, target_slope))
        escaped = ~(new.abs().amax(0) <= bound)
        new = torch.where(escaped, torch.full_like(new, bound), new)
        state = list(new)
        path.append(new)
    path = torch.stack(path)
    return path[:, 0], path[:, 1], path[:, 2]


# --------------------------------------------------------------------------------------------------
# Reading phases and decay rates off an ensemble, and predicting them
# --------------------------------------------------------------------------------------------------

PHASES = ("decoupled", "decay", "catapult", "divergent")
"""The phases of the toy model, :eq:`ni-thresholds` of :doc:`/book/noise_injection`, by class number."""


def initial_decay_rate(log_values, n_fit, eta):
    """The decay rate at ``t = 0`` of ``log_values`` (time along the first axis, one record a step).

    Fits a quadratic in the step ``k`` to ``log_values[: n_fit + 1]`` by least squares, per column,
    and returns minus its slope at ``k = 0`` divided by ``eta``: the rate in units of
    ``1 / (eta * steps)``, the time of the flow. Implements the measurement of
    :eq:`ni-time-scales` of :doc:`/book/noise_injection`.
    """
    log_values = torch.as_tensor(log_values)
    check_count(n_fit, "n_fit", minimum=2)
    eta = check_positive(eta, "eta")
    if log_values.shape[0] < n_fit + 1:
        raise ValueError(f"log_values has {log_values.shape[0]} records; n_fit={n_fit} needs {n_fit + 1}")
    steps = torch.arange(n_fit + 1, dtype=log_values.dtype, device=log_values.device)
    design = torch.stack([torch.ones_like(steps), steps, steps**2], 1)
    window = log_values[: n_fit + 1].reshape(n_fit + 1, -1)
    slope = torch.linalg.lstsq(design, window).solution[1]
    return (-slope / eta).reshape(log_values.shape[1:])


def observed_phase(wn_path, wn_start, diverged, *, growth=1.05, decay=math.e):
    """The phase each run of the toy model shows: 0 decoupled, 1 decay, 2 catapult, 3 divergent.

    ``wn_path`` is ``|w_NI|`` or ``w_NI`` over the records (shape ``(T, R)``), ``wn_start`` the
    initial NIW (``(R,)``), ``diverged`` the runs that left the ball (``(R,)``). Divergent runs are
    those flagged; a catapult's NIW rises above ``growth`` times its start at some record; a decay
    run's NIW ends below ``1/decay`` of its start; the rest are decoupled. The phases of
    :eq:`ni-thresholds` of :doc:`/book/noise_injection`, read off a simulation.
    """
    ratio = (torch.as_tensor(wn_path).abs() / torch.as_tensor(wn_start).abs().to(wn_path.device)).cpu()
    diverged = torch.as_tensor(diverged).cpu()
    catapult = (ratio.amax(0) > growth) & ~diverged
    decayed = (ratio[-1] < 1 / decay) & ~diverged & ~catapult
    phase = torch.zeros(ratio.shape[1], dtype=torch.long)
    phase[decayed], phase[catapult], phase[diverged] = 1, 2, 3
    return phase


class PhasePrediction(NamedTuple):
    """The phase theory gives each run, whether the run lies in an uncertain band, the thresholds."""

    phase: torch.Tensor
    band: torch.Tensor
    thresholds: PhaseThresholds


def predicted_phase(initial, sigma_eps, n_steps, *, eta, batch_size, sigma_x=1.0, target_slope=1.0,
                    z=5.0, growth=1.05, decay=math.e, bound=1e6, catapult=None,
                    divergent=None) -> PhasePrediction:
    """The phase of each run predicted from its initial weights, with the band of runs too close to a
    boundary to be decided. Implements :eq:`ni-thresholds` and :eq:`ni-reduced-map` of
    :doc:`/book/noise_injection`.

    Catapult (or worse) if ``sigma_eps`` exceeds the linear-stability threshold ``catapult``
    (default: ``sigma_cat`` of :func:`phase_thresholds`); divergent if the averaged map
    (:func:`mean_map_trajectory`) escapes the ball ``bound`` within ``n_steps`` (or, when a
    threshold ``divergent`` is given, such as :func:`divergence_onset`, if ``sigma_eps`` exceeds it,
    with a band like the catapult's, without its growth margin); decay if that map shrinks the
    NIW by ``decay`` within ``n_steps``. The bands are ``z`` standard deviations of the sources of
    spread: the fluctuation ``s = sqrt(2/B)`` of ``<eps^2>`` (``z s`` in ``sigma_eps^2``), the margin
    ``growth - 1`` of the catapult criterion, twice the first step's relative change ``|C/w1|`` of
    ``w1``, and the random walk of ``w_NI`` (kicks ``A~`` and ``<eps^2>`` fluctuations) along the
    averaged path for the decay criterion.
    """
    eta = check_positive(eta, "eta")
    check_count(batch_size, "batch_size")
    z = check_positive(z, "z")
    if len(initial) != 3:
        raise ValueError(f"initial must be (w0, w1, wn), got {len(initial)} tensors")
    w0, w1, wn = (torch.as_tensor(v) for v in initial)
    initial = (w0, w1, wn)
    sigma_eps = torch.as_tensor(sigma_eps, dtype=w0.dtype, device=w0.device)
    spread = math.sqrt(2 / batch_size)
    options = dict(device=w0.device, dtype=w0.dtype)
    th = phase_thresholds(w0, w1, wn, eta, sigma_x, batch_size, target_slope, **options)
    coeff = reduced_map_coefficients(w0, w1, wn, eta, sigma_x, batch_size, target_slope, **options)
    paths = {f: mean_map_trajectory(initial, eta, sigma_eps * math.sqrt(max(f, 0.0)), n_steps,
                                    sigma_x=sigma_x, target_slope=target_slope, bound=bound, **options)
             for f in (1 - z * spread, 1.0, 1 + z * spread)}
    escaped = {f: p[1][-1].abs().ge(bound) | p[2][-1].abs().ge(bound) for f, p in paths.items()}
    w0p, w1p, wnp = paths[1.0]
    relative = (sigma_eps / (th.catapult if catapult is None else catapult)) ** 2 - 1
    catapult_band = relative.abs() < z * spread + (growth - 1) + 2 * (coeff["C"] / w1).abs()
    u = eta * sigma_eps**2 * w1p[:-1] ** 2
    kick = eta * sigma_x * sigma_eps * (w1p * (w1p * w0p - target_slope))[:-1] / math.sqrt(batch_size)
    to_end = wnp[-1] / wnp[1:]                                 # the propagator from t + 1 to T
    var_end = (kick * to_end).square().sum(0) + wnp[-1] ** 2 * (u * spread / (1 - u)).square().sum(0)
    decayed = wnp[-1].abs() < wn.abs() / decay
    decay_band = (wnp[-1].abs() - wn.abs() / decay).abs() < z * var_end.sqrt()
    if divergent is None:
        diverges = escaped[1.0]
        divergent_band = escaped[1 - z * spread] != escaped[1 + z * spread]
    else:
        diverges = sigma_eps > divergent
        divergent_band = ((sigma_eps / divergent) ** 2 - 1).abs() < z * spread + 2 * (coeff["C"] / w1).abs()
    phase = torch.where(diverges, 3, torch.where(relative > 0, 2, torch.where(decayed, 1, 0)))
    band = divergent_band | (catapult_band & ~diverges) | (decay_band & (relative <= 0) & ~diverges)
    return PhasePrediction(phase.cpu(), band.cpu(), th)


# --------------------------------------------------------------------------------------------------
# Ensembles of the toy model
# --------------------------------------------------------------------------------------------------

def toy_phase_point(sigma_eps: float, *, seed: int, n_runs: int = 32, centre=(1.5, 1.0, 0.1),
                    spread: float = 0.1, eta: float = 0.01, batch_size: int = 1024,
                    n_steps: int = 1000, device=None) -> dict[str, list[float]]:
    """One point of the toy model's phase diagram, for :func:`learndyn.sweep.sweep`.

    ``n_runs`` SGD runs at noise strength ``sigma_eps`` from initial weights ``centre * (1 + spread
    z)`` (``z`` standard normal), seeded by ``seed``. Returns the fraction of runs in each of the
    :data:`PHASES`, observed (``"observed"``) and predicted from each run's initial weights by
    :eq:`ni-thresholds` (``"predicted"``), as plain lists, so the result pickles across machines.
    """
    check_positive(sigma_eps, "sigma_eps")
    check_count(n_runs, "n_runs")
    device = resolve_device(device)
    generator = make_generator(seed, device=device)
    initial = tuple(c * (1 + spread * torch.randn(n_runs, generator=generator, dtype=torch.float64,
                                                  device=device)) for c in centre)
    sigma = torch.full((n_runs,), float(sigma_eps), dtype=torch.float64, device=device)
    record = np.unique(np.concatenate([np.arange(min(101, n_steps + 1)),
                                       np.arange(100, n_steps + 1, 10)]))
    run = run_toy_sgd(initial, eta, sigma, n_steps, batch_size=batch_size, record=record,
                      generator=generator, device=device)
    observed = observed_phase(run.records["wn"], initial[2], run.diverged)
    predicted = predicted_phase(initial, sigma, n_steps, eta=eta, batch_size=batch_size).phase
    return {kind: [float((phases == k).double().mean()) for k in range(len(PHASES))]
            for kind, phases in (("observed", observed), ("predicted", predicted))}


def run_toy_sgd(initial, eta, sigma_eps, n_steps, *, sigma_x=1.0, batch_size=32, target_slope=1.0,
                moments="wishart", nin="rerandomized", n_train=None, record=1, bound=1e6,
                generator=None, device=None, dtype=None) -> EnsembleResult:
    """An ensemble of toy-model SGD runs, one batched update per step.

    ``initial = (w0, w1, wn)``, each of shape ``(R,)``; ``sigma_eps`` a number or a per-replica
    tensor of shape ``(R,)``, so a sweep over noise strengths is one run. ``moments`` picks how a
    step's batch is made:

    * ``"samples"``: ``batch_size`` samples ``(x, eps)`` per replica, moments by
      :func:`batch_moments` (exact minibatch SGD). With ``n_train=m`` each replica owns a training
      set of ``m`` inputs drawn once and each step samples a batch from it; ``nin="fixed"`` also
      draws each training sample's ``eps`` once, ``nin="rerandomized"`` afresh at every step.
    * ``"wishart"``: fresh samples every step, moments drawn exactly by :func:`sample_batch_moments`
      (the same law as ``"samples"`` without ``n_train``, at a cost free of ``batch_size``).
    * ``"reduced"``: the reduced map of Eqs. 5-6 (plus the ``w0`` update), :eq:`ni-reduced-map`.
    * ``"reduced_even"``: the reduced map with the even-moment fluctuations restored.

    Records ``w0``, ``w1``, ``wn`` and the noise-free loss ``loss`` on the schedule ``record``;
    replicas whose weights leave the ball of radius ``bound`` are flagged as diverged and frozen.
    """
    device, dtype = placement(device, dtype, initial, eta, sigma_eps, n_steps)
    if moments not in MOMENT_MODES:
        raise ValueError(f"moments={moments!r} must be one of {MOMENT_MODES}")
    if nin not in NIN_MODES:
        raise ValueError(f"nin={nin!r} must be one of {NIN_MODES}")
    eta = check_positive(eta, "eta")
    sigma_x = check_positive(sigma_x, "sigma_x")
    check_count(batch_size, "batch_size")
    if len(initial) != 3:
        raise ValueError(f"initial must be (w0, w1, wn), got {len(initial)} tensors")
    state = tuple(as_tensor(v, name, device=device, dtype=dtype).reshape(-1).clone()
                  for v, name in zip(initial, ("w0", "w1", "wn"), strict=True))
    n_rep = state[0].shape[0]
    if any(s.shape != (n_rep,) for s in state):
        shapes = [tuple(s.shape) for s in state]
        raise ValueError(f"initial weights must share shape (R,); got {shapes}")
    sigma_eps = _nonnegative(sigma_eps, "sigma_eps", device, dtype)
    if sigma_eps.dim() > 0 and sigma_eps.shape != (n_rep,):
        raise ValueError(f"sigma_eps has shape {tuple(sigma_eps.shape)}, expected () or ({n_rep},)")
    if n_train is not None and moments != "samples":
        raise ValueError(f"n_train={n_train!r} needs moments='samples', got moments={moments!r}")
    if nin == "fixed" and n_train is None:
        raise ValueError("nin='fixed' needs a fixed training set: pass n_train")
    generator = make_generator(device=device) if generator is None else generator
    options = dict(device=device, dtype=dtype)

    if moments == "samples" and n_train is not None:
        check_count(n_train, "n_train")
        train_x = sigma_x * torch.randn(n_rep, n_train, generator=generator, **options)
        train_eps = sigma_eps.reshape(-1, 1) * torch.randn(n_rep, n_train, generator=generator,
                                                             **options)

        def draw(gen):
            index = torch.randint(n_train, (n_rep, batch_size), generator=gen, device=device)
            x = train_x.gather(1, index)
            if nin == "fixed":
                eps = train_eps.gather(1, index)
            else:
                eps = sigma_eps.reshape(-1, 1) * torch.randn(n_rep, batch_size, generator=gen,
                                                             **options)
            return batch_moments(x, eps)
    elif moments == "samples":
        def draw(gen):
            x = sigma_x * torch.randn(n_rep, batch_size, generator=gen, **options)
            eps = sigma_eps.reshape(-1, 1) * torch.randn(n_rep, batch_size, generator=gen,
                                                         **options)
            return batch_moments(x, eps)
    elif moments == "wishart":
        def draw(gen):
            return sample_batch_moments((n_rep,), batch_size, sigma_x, sigma_eps, gen, **options)
    else:
        even = moments == "reduced_even"

        def draw(gen):
            z = torch.randn(3 if even else 1, n_rep, generator=gen, **options)
            return reduced_batch_moments(z[0], sigma_x, sigma_eps, batch_size,
                                         even_fluctuations=(z[1], z[2]) if even else None)

    def step(weights, gen):
        return toy_update(weights, draw(gen), eta, target_slope)

    def observe(weights):
        w0, w1, wn = weights
        return {"w0": w0, "w1": w1, "wn": wn,
                "loss": toy_loss(w0, w1, wn, sigma_x**2, 0.0, 0.0, target_slope)}

    return run_ensemble(step, state, n_steps, record=record, observe=observe, bound=bound,
                        generator=generator)


# --------------------------------------------------------------------------------------------------
# A ReLU network with a noise injection node, batched over models
# --------------------------------------------------------------------------------------------------

def init_nin_mlp(n_models, d_in, width, d_out, *, nin_scale=1.0, generator=None, device=None,
                 dtype=None) -> dict[str, torch.Tensor]:
    """Parameters of ``n_models`` one-hidden-layer ReLU networks with a NIN on the hidden layer.

    ``W0 ~ N(0, 1/d_in)`` (shape ``(n, d_in, width)``), ``W1 ~ N(0, 1/width)`` (``(n, width,
    d_out)``), zero biases, and the NIN weights ``w_ni ~ N(0, nin_scale^2 / width)`` (shape
    ``(n, width)``).
    """
    device, dtype = placement(device, dtype, n_models, d_in, width, d_out)
    for value, name in ((n_models, "n_models"), (d_in, "d_in"), (width, "width"), (d_out, "d_out")):
        check_count(value, name)
    nin_scale = check_positive(nin_scale, "nin_scale")
    generator = make_generator(device=device) if generator is None else generator
    options = dict(generator=generator, device=device, dtype=dtype)
    return {
        "W0": torch.randn(n_models, d_in, width, **options) / math.sqrt(d_in),
        "b0": torch.zeros(n_models, 1, width, device=device, dtype=dtype),
        "w_ni": nin_scale * torch.randn(n_models, width, **options) / math.sqrt(width),
        "W1": torch.randn(n_models, width, d_out, **options) / math.sqrt(width),
        "b1": torch.zeros(n_models, 1, d_out, device=device, dtype=dtype),
    }


def nin_mlp_forward(params, x, eps):
    """Outputs of the batched network: ``relu(x W0 + b0 + eps w_ni) W1 + b1``, :eq:`ni-mlp`.

    ``x`` has shape ``(n_models, batch, d_in)`` (or ``(batch, d_in)``, shared by every model) and
    ``eps`` ``(n_models, batch)``.
    """
    if x.dim() == 2:
        z = torch.matmul(x, params["W0"])
    else:
        z = torch.bmm(x, params["W0"])
    z = z + params["b0"] + eps.unsqueeze(-1) * params["w_ni"].unsqueeze(1)
    return torch.bmm(torch.relu(z), params["W1"]) + params["b1"]


def _check_loss(loss: str) -> str:
    if loss not in MLP_LOSSES:
        raise ValueError(f"loss must be one of {MLP_LOSSES}, got {loss!r}")
    return loss


def nin_mlp_loss(params, x, y_onehot, eps, loss: str = "mse"):
    """Per-model batch loss, shape ``(n_models,)``: the squared error ``1/2 <||f - y||^2>`` or the
    cross-entropy ``-<y log softmax(f)>`` (``loss="cross_entropy"``, Fig. 3 of the paper)."""
    out = nin_mlp_forward(params, x, eps)
    if _check_loss(loss) == "mse":
        return 0.5 * (out - y_onehot).square().sum(-1).mean(-1)
    return -(y_onehot * torch.log_softmax(out, -1)).sum(-1).mean(-1)


def nin_mlp_gradients(params, x, y_onehot, eps, loss: str = "mse"):
    """Gradients of :func:`nin_mlp_loss` for every model at once (backpropagation written out).

    ``x`` ``(n_models, batch, d_in)``, ``y_onehot`` ``(n_models, batch, d_out)``, ``eps``
    ``(n_models, batch)``. Returns a dict with the keys of ``params``; the NIW gradient is
    ``<eps * dL/dz>_batch``, the batch average of :eq:`ni-niw-update` before any expansion.
    The two losses differ only in the output residual: ``f - y`` or ``softmax(f) - y``.
    """
    _check_loss(loss)
    batch = x.shape[-2]
    z = torch.bmm(x, params["W0"]) + params["b0"] + eps.unsqueeze(-1) * params["w_ni"].unsqueeze(1)
    hidden = torch.relu(z)
    out = torch.bmm(hidden, params["W1"]) + params["b1"]
    residual = ((out if loss == "mse" else torch.softmax(out, -1)) - y_onehot) / batch
    dz = torch.bmm(residual, params["W1"].transpose(1, 2)) * (z > 0).to(z.dtype)
    return {
        "W0": torch.bmm(x.transpose(1, 2), dz),
        "b0": dz.sum(1, keepdim=True),
        "w_ni": (eps.unsqueeze(-1) * dz).sum(1),
        "W1": torch.bmm(hidden.transpose(1, 2), residual),
        "b1": residual.sum(1, keepdim=True),
    }


def nin_noise_hessian_rates(params, x, loss: str = "mse"):
    """Curvatures of the noise-dominated NIN dynamics in the network, :eq:`ni-mlp-rates`.

    Returns ``(b_ni, b_next)`` per model: ``b_ni = <v^T H v>`` with ``v = W1^T D u`` for the unit
    vector ``u = w_ni/|w_ni|`` (the local Hessian along the NIN weights, the analogue of ``B~/eta``),
    and ``b_next = <|D w_ni|^2>`` (the curvature the noise adds to the next layer, the analogue of
    ``B/eta``), with ``D`` the ReLU mask at ``eps = 0`` and ``H`` the Hessian of the loss in the
    outputs (``I`` for ``"mse"``, ``diag(p) - p p^T`` with ``p = softmax(f)`` for
    ``"cross_entropy"``), averaged over the inputs ``x``. ``b_ni`` is the slope of the NIW's decay
    at ``t = 0``; its stability limit is set by the largest eigenvalue of the NIW Hessian instead
    (:func:`nin_curvature_spectrum`), several times larger.
    """
    _check_loss(loss)
    with torch.no_grad():
        z = torch.matmul(x, params["W0"]) + params["b0"]        # (n, N, width)
        mask = (z > 0).to(z.dtype)
        u = params["w_ni"] / params["w_ni"].norm(dim=-1, keepdim=True)
        v = torch.bmm(mask * u.unsqueeze(1), params["W1"])       # (n, N, d_out)
        if loss == "mse":
            curvature = v.square().sum(-1)
        else:
            p = torch.softmax(torch.bmm(torch.relu(z), params["W1"]) + params["b1"], -1)
            curvature = (p * v.square()).sum(-1) - (p * v).sum(-1).square()
        b_ni = curvature.mean(-1)
        b_next = (mask * params["w_ni"].unsqueeze(1)).square().sum(-1).mean(-1)
    return b_ni, b_next


def nin_curvature_spectrum(params, x, loss: str = "mse"):
    """Eigenvalues (ascending, shape ``(n_models, width)``) and eigenvectors (columns) of the NIW
    Hessian ``K = <D W1 H W1^T D>_x`` of :eq:`ni-mlp-spectral`.

    ``D`` is the ReLU mask at ``eps = 0`` and ``H`` the output Hessian of the loss (as in
    :func:`nin_noise_hessian_rates`); ``sigma_eps^2 K`` is the Hessian of the expanded loss
    :eq:`ni-loss-expansion` in ``w_ni``. Its largest eigenvalue sets the NIW's stability limit
    ``eta sigma_eps^2 lambda_max < 2``; ``u^T K u`` along the NIW's direction ``u`` is ``b_NI``.
    The eigen-decomposition is done in float64.
    """
    _check_loss(loss)
    with torch.no_grad():
        z = torch.matmul(x, params["W0"]) + params["b0"]
        mask = (z > 0).to(torch.float64)                          # (n, N, width)
        w1 = params["W1"].to(torch.float64)
        if loss == "mse":                                          # H = I: (W1 W1^T) o <D D^T>
            curvature = torch.bmm(w1, w1.transpose(1, 2)) * torch.bmm(mask.transpose(1, 2), mask)
        else:
            # J[n, i, j, k] = D_ij W1_jk, the output's derivative along NIW component j, input i
            jac = mask.unsqueeze(-1) * w1.unsqueeze(1)
            p = torch.softmax(torch.bmm(torch.relu(z), params["W1"]) + params["b1"], -1)
            p = p.to(torch.float64).unsqueeze(2)                  # (n, N, 1, d_out)
            hj = p * jac - p * (p * jac).sum(-1, keepdim=True)
            curvature = torch.einsum("nijk,nilk->njl", jac, hj)
        return torch.linalg.eigh(curvature / x.shape[-2])


def spectral_niw_decay(eigenvalues, eigenvectors, direction, rate, steps):
    """``u^T (1 - rate K)^t u`` for ``t`` in ``steps``: the NIW's component along its initial
    direction ``u`` under the frozen noise map, :eq:`ni-mlp-spectral`, a sum of exponentials.

    ``eigenvalues`` ``(n, width)`` and ``eigenvectors`` ``(n, width, width)`` from
    :func:`nin_curvature_spectrum`, ``direction`` ``(n, width)`` (normalised here), ``rate`` the
    factor ``eta sigma_eps^2`` per model ``(n,)``. Returns ``(len(steps), n)``.
    """
    u = torch.as_tensor(direction, dtype=torch.float64, device=eigenvalues.device)
    u = u / u.norm(dim=-1, keepdim=True)
    weight = torch.einsum("nwk,nw->nk", eigenvectors, u).square()          # c_k^2
    factor = 1 - torch.as_tensor(rate, dtype=torch.float64, device=u.device).reshape(-1, 1) * eigenvalues
    t = torch.as_tensor(np.asarray(steps), dtype=torch.float64, device=u.device).reshape(-1, 1, 1)
    return (weight * factor.unsqueeze(0) ** t).sum(-1)


def loss_decay_rates(params, x_train, y_train, x_eval, y_eval, *, sigma_eps=0.0, loss: str = "mse",
                     layers=("W0", "b0", "W1", "b1"), n_classes=10):
    """The initial decay rate of a loss under SGD on the training loss, Eq. 8 of the paper
    (:eq:`ni-eq8`): ``delta L_A = -eta grad L_A . grad L_train``, so the rate per unit of
    ``eta * steps`` is ``grad L_A . grad L_train / L_A`` (``|grad L|^2 / L`` for ``A = train``).

    ``(x_eval, y_eval)`` is the set ``A`` the loss ``L_A`` (at ``eps = 0``) is read on; the dot
    product runs over the parameter blocks in ``layers`` (leave out ``"W0"``, ``"b0"`` for the part
    the NIN's own layer does not see). With ``sigma_eps > 0`` (a number or one per model) the
    training gradient is that of the expanded loss :eq:`ni-loss-expansion` averaged over the
    noise, ``L_train + sigma^2/2 <v^T H v>`` with ``v = W1^T D w_ni``: the NIN's pull on the data
    weights. Gradients by autograd (ReLU masks held fixed). Returns ``(n_models,)``.
    """
    _check_loss(loss)
    n_models = params["W0"].shape[0]
    sigma_eps = torch.as_tensor(sigma_eps, dtype=params["W0"].dtype, device=params["W0"].device)
    p = {k: v.detach().clone().requires_grad_(k in layers) for k, v in params.items()}
    data = [p[k] for k in layers]

    def batch(x, y):
        hot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype).expand(n_models, -1, -1)
        return x.expand(n_models, -1, -1), hot, torch.zeros(n_models, x.shape[0], device=x.device,
                                                            dtype=x.dtype)

    with torch.enable_grad():
        x_a, hot_a, zeros_a = batch(x_eval, y_eval)
        value = nin_mlp_loss(p, x_a, hot_a, zeros_a, loss)
        g_eval = torch.autograd.grad(value.sum(), data)
        x_t, hot_t, zeros_t = batch(x_train, y_train)
        expanded = nin_mlp_loss(p, x_t, hot_t, zeros_t, loss)
        if bool((sigma_eps != 0).any()):
            z = torch.matmul(x_t, p["W0"]) + p["b0"]
            v = torch.bmm((z > 0).to(z.dtype) * p["w_ni"].unsqueeze(1), p["W1"])
            if loss == "mse":
                curvature = v.square().sum(-1)
            else:
                prob = torch.softmax(torch.bmm(torch.relu(z), p["W1"]) + p["b1"], -1)
                curvature = (prob * v.square()).sum(-1) - (prob * v).sum(-1).square()
            expanded = expanded + 0.5 * sigma_eps**2 * curvature.mean(-1)
        g_train = torch.autograd.grad(expanded.sum(), data)
    overlap = sum((a * b).flatten(1).sum(-1) for a, b in zip(g_eval, g_train, strict=True))
    return (overlap / value).detach()


def nin_kink_curvature(params, x, y, sigma_eps, *, loss: str = "mse", n_classes=10):
    """The part of the NIW Hessian that the ReLU's kink adds, :eq:`ni-mlp-kink`: per unit ``j``,
    ``kappa_j = < phi(z_j / s_j) / s_j * (W1 grad_f l)_j >_x`` with ``s_j = sigma_eps |w_ni,j|``.

    ``relu'' = delta`` puts ``delta(z_j) (W1 grad_f l)_j`` on the diagonal of the Hessian in the
    pre-activations; averaged over the noise it is smeared by the Gaussian of width ``s_j`` (the
    exact first-order mean of the NIW gradient). ``y`` are integer labels, ``sigma_eps`` a number
    or one per model. The full NIW Hessian is ``K + diag(kappa)`` (``K`` of
    :func:`nin_curvature_spectrum`). Returns ``(n_models, width)``.
    """
    _check_loss(loss)
    with torch.no_grad():
        z = torch.matmul(x, params["W0"]) + params["b0"]                      # (n, N, width)
        out = torch.bmm(torch.relu(z), params["W1"]) + params["b1"]
        hot = torch.nn.functional.one_hot(y, n_classes).to(out.dtype)
        residual = (out if loss == "mse" else torch.softmax(out, -1)) - hot
        back = torch.bmm(residual, params["W1"].transpose(1, 2))               # (W1 grad_f l)_j
        sigma = torch.as_tensor(sigma_eps, dtype=z.dtype, device=z.device).reshape(-1, 1, 1)
        width = (sigma * params["w_ni"].abs().unsqueeze(1)).clamp_min(torch.finfo(z.dtype).tiny)
        density = torch.exp(-0.5 * (z / width) ** 2) / (math.sqrt(2 * math.pi) * width)
        return (density * back).mean(-2)


def full_batch_descent(params, x_train, y_train, x_eval, y_eval, *, eta, n_steps, loss: str = "mse",
                       n_classes=10):
    """Losses on ``(x_eval, y_eval)`` along full-batch gradient descent on the training loss at
    ``eps = 0``: the averaged update of SGD without the NIN, whose loss rate tends to Eq. 8
    (:eq:`ni-eq8`) as ``eta -> 0``. Returns ``(n_steps + 1, n_models)``."""
    eta = check_positive(eta, "eta")
    check_count(n_steps, "n_steps")
    n_models = params["W0"].shape[0]

    def batch(x, y):
        hot = torch.nn.functional.one_hot(y, n_classes).to(x.dtype).expand(n_models, -1, -1)
        zeros = torch.zeros(n_models, x.shape[0], device=x.device, dtype=x.dtype)
        return x.expand(n_models, -1, -1).contiguous(), hot.contiguous(), zeros

    train, evaluation = batch(x_train, y_train), batch(x_eval, y_eval)
    current = {k: v.clone() for k, v in params.items()}
    losses = []
    with torch.no_grad():
        for step in range(n_steps + 1):
            losses.append(nin_mlp_loss(current, *evaluation, loss))
            if step < n_steps:
                grads = nin_mlp_gradients(current, *train, loss)
                current = {k: v - eta * grads[k] for k, v in current.items()}
    return torch.stack(losses)


def mean_decay_rate(values, n_fit, eta):
    """Initial decay rate of the replica mean of ``values`` and its standard error.

    ``values`` has time along the first axis (one record a step) and replicas along the last;
    the rate is :func:`initial_decay_rate` of ``log(mean)`` (the mean of the logs would add a
    Jensen term), and its standard error comes from the rate's linearisation in each replica's
    values, ``rate = sum_t a_t log m_t``, so ``se = std_r(sum_t a_t v_tr / m_t) / sqrt(R)``.
    Implements the measurement of :eq:`ni-mlp-spectral`. Returns ``(rate, se)``, the shape of
    ``values`` without its first and last axes.
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    check_count(n_fit, "n_fit", minimum=2)
    eta = check_positive(eta, "eta")
    if values.shape[0] < n_fit + 1 or values.shape[-1] < 2:
        raise ValueError(f"values has shape {tuple(values.shape)}; need {n_fit + 1} records and 2 replicas")
    window = values[: n_fit + 1]
    mean = window.mean(-1)
    steps = torch.arange(n_fit + 1, dtype=torch.float64)
    design = torch.stack([torch.ones_like(steps), steps, steps**2], 1)
    slope_weights = torch.linalg.pinv(design)[1]                  # slope = a @ log(mean)
    shape = (-1,) + (1,) * (mean.dim() - 1)
    rate = -(slope_weights.reshape(shape) * mean.log()).sum(0) / eta
    influence = -(slope_weights.reshape(shape + (1,)) * window / mean.unsqueeze(-1)).sum(0) / eta
    return rate, influence.std(-1) / math.sqrt(values.shape[-1])


def train_nin_mlp(params, x_train, y_train, x_test, y_test, sigma_eps, *, eta, batch_size,
                  n_steps, record=50, n_classes=10, loss: str = "mse", monitor=None, bound=1e8,
                  nin="rerandomized", record_losses=True, generator=None):
    """Train every model in ``params`` by plain SGD with its own noise strength, in one batched run.

    ``sigma_eps`` has one entry per model (shape ``(n_models,)``): replicas and noise strengths
    share the leading model axis. Each model draws its own minibatches and its own NIN values. The
    losses are evaluated with ``eps = 0`` (the network as used) on ``x_test`` and on the first
    ``monitor`` training samples (all of them by default); ``loss`` is ``"mse"`` or
    ``"cross_entropy"``, as in :func:`nin_mlp_loss`. ``nin="fixed"`` draws one ``eps`` per model
    and training sample before training and reuses it at every visit (the fixed NIN of Fig. 1,
    centre); ``"rerandomized"`` (default) draws it afresh at every step. ``record_losses=False``
    records the two NIW observables only (a cheaper run).
    Returns a dict of numpy arrays over the record steps: ``steps``, ``nin_norm``, ``nin_along``
    (the NIW's component along its initial direction, :eq:`ni-mlp-spectral`), ``next_norm``
    (Frobenius norm of ``W1``), ``train_loss``, ``test_loss``, ``test_accuracy``, and ``diverged``
    (per model, bool; a diverged model is frozen at its last good state); ``final`` holds the
    parameters at the end (torch tensors, the keys of ``params``).
    """
    n_models = params["W0"].shape[0]
    device, dtype = params["W0"].device, params["W0"].dtype
    eta = check_positive(eta, "eta")
    _check_loss(loss)
    check_count(batch_size, "batch_size")
    check_count(n_steps, "n_steps")
    sigma_eps = _nonnegative(sigma_eps, "sigma_eps", device, dtype).reshape(-1)
    if sigma_eps.shape != (n_models,):
        raise ValueError(f"sigma_eps has shape {tuple(sigma_eps.shape)}, expected ({n_models},)")
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError(f"x_train/y_train have {x_train.shape[0]}/{y_train.shape[0]} rows and "
                         f"x_test/y_test {x_test.shape[0]}/{y_test.shape[0]}")
    if nin not in NIN_MODES:
        raise ValueError(f"nin={nin!r} must be one of {NIN_MODES}")
    generator = make_generator(device=device) if generator is None else generator
    y_train_hot = torch.nn.functional.one_hot(y_train, n_classes).to(dtype)
    y_test_hot = torch.nn.functional.one_hot(y_test, n_classes).to(dtype)
    names = ("W0", "b0", "w_ni", "W1", "b1")
    state = tuple(params[k].clone() for k in names)
    n_train = x_train.shape[0]
    monitor = n_train if monitor is None else min(check_count(monitor, "monitor"), n_train)
    no_noise = {n: torch.zeros(n_models, n, device=device, dtype=dtype)
                for n in (monitor, x_test.shape[0])}
    direction = params["w_ni"] / params["w_ni"].norm(dim=-1, keepdim=True)
    fixed_eps = None
    if nin == "fixed":
        fixed_eps = sigma_eps.unsqueeze(1) * torch.randn(n_models, n_train, generator=generator,
                                                         device=device, dtype=dtype)

    def step(current, gen):
        p = dict(zip(names, current, strict=True))
        index = torch.randint(n_train, (n_models, batch_size), generator=gen, device=device)
        if fixed_eps is None:
            eps = sigma_eps.unsqueeze(1) * torch.randn(n_models, batch_size, generator=gen,
                                                       device=device, dtype=dtype)
        else:
            eps = fixed_eps.gather(1, index)
        grads = nin_mlp_gradients(p, x_train[index], y_train_hot[index], eps, loss)
        return tuple(p[k] - eta * grads[k] for k in names)

    def observe(current):
        p = dict(zip(names, current, strict=True))
        if not record_losses:
            return {"nin_norm": p["w_ni"].norm(dim=-1), "nin_along": (p["w_ni"] * direction).sum(-1)}
        out = nin_mlp_forward(p, x_test, no_noise[x_test.shape[0]])
        return {"nin_norm": p["w_ni"].norm(dim=-1), "nin_along": (p["w_ni"] * direction).sum(-1),
                "next_norm": p["W1"].flatten(1).norm(dim=-1),
                "train_loss": nin_mlp_loss(p, x_train[:monitor], y_train_hot[:monitor],
                                           no_noise[monitor], loss),
                "test_loss": nin_mlp_loss(p, x_test, y_test_hot, no_noise[x_test.shape[0]], loss),
                "test_accuracy": (out.argmax(-1) == y_test).to(dtype).mean(-1)}

    result = run_ensemble(step, state, n_steps, record=record, observe=observe, bound=bound,
                          generator=generator)
    history = {name: value.cpu().numpy() for name, value in result.records.items()}
    history["steps"] = result.steps
    history["diverged"] = result.diverged.cpu().numpy()
    history["final"] = dict(zip(names, result.state, strict=True))
    return history


def standardized_digits(generator=None, *, test_fraction=0.25, device=None, dtype=None):
    """scikit-learn's 8x8 digits split into ``(x_train, y_train, x_test, y_test)`` by ``generator``
    and standardised with the training set's pixel means and overall spread: the data of
    :eq:`ni-mlp` (the offline stand-in for the paper's Fashion-MNIST)."""
    from .data import load_digits, train_test_split

    x_all, y_all = load_digits(device=device, dtype=dtype)
    x_train, y_train, x_test, y_test = train_test_split(x_all, y_all, test_fraction,
                                                        generator=generator)
    mean, scale = x_train.mean(0), x_train.std()
    return (x_train - mean) / scale, y_train, (x_test - mean) / scale, y_test


def replicate_nin_mlp(params, n):
    """``n`` copies of a single network (``params`` with a model axis of length 1), for replica
    means of :eq:`ni-mlp-spectral`."""
    if params["W0"].shape[0] != 1:
        raise ValueError(f"params holds {params['W0'].shape[0]} networks; replicate one")
    return {k: v.expand(check_count(n, "n"), *v.shape[1:]).contiguous() for k, v in params.items()}


def train_nin_mlp_replicas(params, sigmas, replicas, x_train, y_train, x_test, y_test, **options):
    """:func:`train_nin_mlp` on ``replicas`` copies of one network at each noise strength in
    ``sigmas`` (models ordered by noise strength, then replica): the replica ensembles of check 7
    of :doc:`/book/noise_injection`, :eq:`ni-mlp-spectral` and :eq:`ni-eq8`. ``options`` go to
    :func:`train_nin_mlp`."""
    device, dtype = params["W0"].device, params["W0"].dtype
    models = torch.as_tensor(sigmas, dtype=dtype, device=device).reshape(-1)
    models = models.repeat_interleave(check_count(replicas, "replicas"))
    return train_nin_mlp(replicate_nin_mlp(params, len(models)), x_train, y_train, x_test,
                         y_test, models, **options)


def nin_mlp_sweep(sigmas, x_train, y_train, x_test, y_test, *, loss: str, eta, n_steps, nin_scale,
                  generators, replicas=3, width=32, batch_size=128, monitor=300):
    """``replicas`` networks per noise strength in ``sigmas``, trained in one batched run by
    :func:`train_nin_mlp` (the experiment of check 6 of :doc:`/book/noise_injection`).

    ``generators = (init, run)``: the streams of the initial weights (:func:`init_nin_mlp`) and
    of the training. Records every step up to 20, then every 20. Returns ``(history, sigma,
    b_ni, lambda_max)``: the history, each model's noise strength, and its curvatures at
    initialisation, ``b_NI`` of :eq:`ni-mlp-rates` and the largest eigenvalue of the NIW
    Hessian, :eq:`ni-mlp-spectral` (numpy arrays).
    """
    device, dtype = x_train.device, x_train.dtype
    models = torch.as_tensor(sigmas, dtype=dtype, device=device).repeat_interleave(replicas)
    init, run = generators
    params = init_nin_mlp(len(models), x_train.shape[1], width, int(y_train.max()) + 1,
                          nin_scale=nin_scale, generator=init, device=device, dtype=dtype)
    b_ni = nin_noise_hessian_rates(params, x_train, loss=loss)[0].cpu().numpy()
    lam_max = nin_curvature_spectrum(params, x_train, loss=loss)[0][:, -1].cpu().numpy()
    record = np.unique(np.concatenate([np.arange(min(21, n_steps + 1)),
                                       np.arange(20, n_steps + 1, 20)]))
    history = train_nin_mlp(params, x_train, y_train, x_test, y_test, models, eta=eta,
                            batch_size=batch_size, n_steps=n_steps, record=record,
                            monitor=monitor, loss=loss, generator=run)
    return history, models.cpu().numpy(), b_ni, lam_max


def classify_nin_mlp(history, *, decay_factor=math.e, growth=2.0, runaway=100.0):
    """Phase of each network trained by :func:`train_nin_mlp` and its NIW-norm ratio over time.

    0 decoupled, 1 decay, 2 catapult, 3 divergent (the order of :data:`PHASES`): divergent if the
    model was flagged or its NIW norm ends ``runaway`` times above its start; catapult if the norm
    rises to ``growth`` times its start; decay if it ends below ``1/decay_factor`` of its start.
    The phases of :eq:`ni-thresholds` of :doc:`/book/noise_injection`, read off a network.
    Returns ``(phase, nin_ratio)``, numpy arrays of shapes ``(n_models,)`` and ``(T, n_models)``.
    """
    nin_ratio = history["nin_norm"] / history["nin_norm"][0]
    divergent = history["diverged"] | (nin_ratio[-1] > runaway)
    catapult = (nin_ratio.max(0) >= growth) & ~divergent
    decay = (nin_ratio[-1] < 1 / decay_factor) & ~catapult & ~divergent
    return np.select([divergent, catapult, decay], [3, 2, 1], default=0), nin_ratio


def nin_mlp_signatures(history, phase, sigmas, *, learned_accuracy, z=0.0):
    """The qualitative signatures of the four phases in a network, each as ``(holds, detail)``.

    Implements the phase signatures of :eq:`ni-mlp-rates` of :doc:`/book/noise_injection`: the four
    phases occur in the order of increasing median ``sigmas``; decoupled and decay networks learn
    (test accuracy above ``learned_accuracy``, test loss down 4 times); the median catapult's NIW
    falls by a third from its peak and every catapult network learns; the next layer's norm dips
    lower in a catapult than in a decay (the mean minimum of ``|W1| / |W1|_0``, by more than ``z``
    standard errors); divergent
    networks end below 60 % accuracy with a test loss above its start.
    """
    accuracy, test_loss = history["test_accuracy"][-1], history["test_loss"]
    nin_ratio = history["nin_norm"] / history["nin_norm"][0]
    medians = [np.median(sigmas[phase == k]) for k in range(4) if (phase == k).any()]
    learned, cat, div = phase <= 1, phase == 2, phase == 3
    dip = (history["next_norm"] / history["next_norm"][0]).min(0)
    dip_cat, dip_decay = dip[cat], dip[phase == 1]
    if min(len(dip_cat), len(dip_decay)) >= 2:
        gap = dip_decay.mean() - dip_cat.mean()
        gap_se = math.sqrt(dip_cat.var(ddof=1) / len(dip_cat) + dip_decay.var(ddof=1) / len(dip_decay))
    else:
        gap, gap_se = np.nan, np.nan                 # no standard error from fewer than 2 networks
    return {
        "four phases in order of noise": (
            len(medians) == 4 and all(a < b for a, b in zip(medians, medians[1:], strict=False)),
            "medians " + ", ".join(f"{m:.3g}" for m in medians)),
        "decoupled and decay networks learn": (
            bool((accuracy[learned] > learned_accuracy).all()
                 and (test_loss[-1, learned] < test_loss[0, learned] / 4).all()),
            f"lowest accuracy {accuracy[learned].min():.2f}"),
        "catapult NIWs fall back and the network learns": (
            bool(cat.any() and np.median(nin_ratio[-1, cat] / nin_ratio[:, cat].max(0)) < 1 / 1.5
                 and (accuracy[cat] > learned_accuracy).all()),
            f"{int(cat.sum())} networks"),
        "next layer dips deeper in a catapult": (
            bool(gap > z * gap_se), f"gap {gap:.3f}, {gap / gap_se:.1f} se (need > {z:g} se)"),
        "divergent networks fail": (
            bool(div.any() and (accuracy[div] < 0.6).all()
                 and (test_loss[-1, div] > test_loss[0, div]).all()),
            f"{int(div.sum())} networks"),
    }


def assert_signatures(signatures):
    """Print one line per qualitative signature ``name: (holds, detail)`` and raise
    :class:`learndyn.checks.CheckFailed` naming the first that does not hold."""
    for name, (holds, detail) in signatures.items():
        print(f"{'ok ' if holds else 'FAIL'} {name}: {detail}")
    failed = [name for name, (holds, _) in signatures.items() if not holds]
    if failed:
        raise CheckFailed(f"{failed[0]}: the signature does not hold ({signatures[failed[0]][1]})")


def plot_nin_mlp_phases(history, phase, b_ni, eta, sigmas, loss_name):
    """One network of each phase (the median noise strength of its class): NIW and next-layer norms,
    losses, test accuracy, and the NIW decay ``exp(-eta sigma^2 b_NI t)`` of :eq:`ni-mlp-rates` of
    :doc:`/book/noise_injection`. Returns the figure."""
    from .plotting import PALETTE, new_figure, theory_line

    fig, axes = new_figure(2, 2, width=4.6, height=3.2, sharex=True)
    steps = history["steps"]
    for k, ax in enumerate(axes.flat):
        members = np.flatnonzero(phase == k)
        if len(members) == 0:
            continue
        index = int(members[np.argsort(sigmas[members])[len(members) // 2]])
        for key, colour, label in (("nin_norm", 0, r"$|\mathbf{w}_{\rm NI}|$"),
                                   ("next_norm", 1, r"$\|W_1\|$"),
                                   ("train_loss", 3, f"train {loss_name}"),
                                   ("test_loss", 2, f"test {loss_name}")):
            ax.plot(steps, history[key][:, index], color=PALETTE[colour], label=label)
        rate = eta * sigmas[index] ** 2 * b_ni[index]
        theory_line(ax, steps, history["nin_norm"][0, index] * np.exp(-rate * steps), lw=2.4, alpha=0.35,
                    label=r"$|\mathbf{w}_{\rm NI,0}|e^{-\eta\sigma_\epsilon^2 b_{\rm NI} t}$")
        twin = ax.twinx()
        twin.plot(steps, history["test_accuracy"][:, index], color=PALETTE[2], ls="--", lw=1)
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("test accuracy (dashed)", fontsize="x-small")
        ax.set(yscale="log", ylim=(1e-3, 1e4), title=f"{PHASES[k]}: $\\sigma_\\epsilon = {sigmas[index]:g}$")
        ax.set_xscale("symlog", linthresh=20)
    for ax in axes[1]:
        ax.set_xlabel("SGD step $t$")
    for ax in axes[:, 0]:
        ax.set_ylabel("norm, loss")
    axes[0, 0].legend(fontsize="x-small", loc="upper right")
    return fig


def _nonnegative(value, name, device, dtype):
    return check_nonnegative(value, name, device=device, dtype=dtype)


__all__ = [
    "MLP_LOSSES", "MOMENT_MODES", "NIN_MODES", "PHASES", "PhasePrediction", "PhaseThresholds",
    "assert_signatures", "batch_moments", "classify_nin_mlp", "decay_time_scales", "divergence_onset",
    "full_batch_descent", "init_nin_mlp", "initial_decay_rate", "loss_decay_rates", "mean_decay_rate",
    "mean_map_trajectory", "nin_curvature_spectrum", "nin_kink_curvature", "nin_mlp_signatures",
    "nin_mlp_sweep", "replicate_nin_mlp", "standardized_digits", "train_nin_mlp_replicas",
    "observed_phase",
    "spectral_niw_decay",
    "plot_nin_mlp_phases", "predicted_phase", "nin_mlp_forward", "nin_mlp_gradients", "nin_mlp_loss",
    "nin_noise_hessian_rates", "noise_dominated_divergence", "phase_thresholds",
    "reduced_batch_moments", "reduced_map_coefficients", "run_toy_sgd", "sample_batch_moments",
    "toy_gradients", "toy_loss", "toy_phase_point", "toy_update", "train_nin_mlp",
]
