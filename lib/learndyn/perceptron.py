"""The nonlinear perceptron on two Gaussian classes (chapters 1 and 3, Schmid & Murray).

Inputs ``x ~ N(mu_y, Sigma_y)`` with labels ``y = +-1`` of probability 1/2 each. Online supervised
learning (logistic regression with an L2 term, Eq. 3.12) updates

    w <- w + eta [ (y~ - sigma(w . x)) x - lambda w ],    y~ = (y + 1) / 2,

and its mean update for the erf sigmoid is the closed form (3.15), built from
:mod:`learndyn.gaussian`. REINFORCE (Eq. 3.13) has the mean update (3.20), which needs Owen's T.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from scipy.optimize import brentq

from .backend import as_tensor, check_covariance, check_nonnegative, check_positive, check_shape
from .ensemble import run_ensemble
from .flows import drift_derivatives, rk4
from .gaussian import (
    ERF_SIGMOID_SCALE,
    erf_sigmoid,
    expected_cdf_squared_times_input,
    expected_cdf_times_input,
    normal_cdf,
    normal_pdf,
    owens_t,
)
from .stats import first_crossing

SIGMOIDS = {"erf": erf_sigmoid, "logistic": torch.sigmoid}


@dataclass(frozen=True)
class GaussianClasses:
    """Two Gaussian classes ``N(mu_plus, cov_plus)`` (y = +1) and ``N(mu_minus, cov_minus)``
    (y = -1)."""

    mu_plus: torch.Tensor
    mu_minus: torch.Tensor
    cov_plus: torch.Tensor
    cov_minus: torch.Tensor
    chol_plus: torch.Tensor
    chol_minus: torch.Tensor
    std_plus: torch.Tensor | None = None
    std_minus: torch.Tensor | None = None

    @classmethod
    def make(cls, mu_plus, mu_minus, cov_plus, cov_minus=None, *, device=None, dtype=None):
        """Validated classes; ``cov_minus`` defaults to ``cov_plus``; a scalar covariance means
        that multiple of the identity."""
        mu_plus = as_tensor(mu_plus, "mu_plus", device=device, dtype=dtype)
        check_shape(mu_plus, (None,), "mu_plus")
        n = mu_plus.shape[-1]
        mu_minus = check_shape(as_tensor(mu_minus, "mu_minus", device=mu_plus.device,
                                         dtype=mu_plus.dtype), (n,), "mu_minus")
        covs = []
        for name, cov in (("cov_plus", cov_plus), ("cov_minus", cov_plus if cov_minus is None
                                                   else cov_minus)):
            cov = as_tensor(cov, name, device=mu_plus.device, dtype=mu_plus.dtype)
            if cov.dim() == 0:
                check_positive(cov.item(), name)
                cov = cov * torch.eye(n, device=mu_plus.device, dtype=mu_plus.dtype)
            check_shape(cov, (n, n), name)
            covs.append(check_covariance(cov, name))
        chols = [torch.linalg.cholesky(c) for c in covs]
        stds = [_isotropic_std(c) for c in covs]
        if any(std is None for std in stds):
            stds = [None, None]
        return cls(mu_plus, mu_minus, covs[0], covs[1], chols[0], chols[1], stds[0], stds[1])

    @property
    def isotropic(self) -> bool:
        """Whether both covariances are multiples of the identity (the sampling fast path)."""
        return self.std_plus is not None

    @property
    def dim(self) -> int:
        return self.mu_plus.shape[-1]

    def sample(self, normals: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and labels from standard normals of shape ``(..., dim + 1)``.

        The label is the sign of the first normal (each sign has probability 1/2), the input is
        ``mu_y + L_y xi`` with the other ``dim`` normals ``xi``. Returns ``(x, y)``.
        """
        positive = normals[..., :1] >= 0
        xi = normals[..., 1:]
        if self.isotropic:
            mean = torch.where(positive, self.mu_plus, self.mu_minus)
            x = torch.addcmul(mean, xi, torch.where(positive, self.std_plus, self.std_minus))
            return x, positive.squeeze(-1).to(normals.dtype) * 2 - 1
        x = torch.where(positive, self.mu_plus + xi @ self.chol_plus.T,
                        self.mu_minus + xi @ self.chol_minus.T)
        return x, positive.squeeze(-1).to(normals.dtype) * 2 - 1


def sl_mean_update(w: torch.Tensor, classes: GaussianClasses, lam: float = 0.0) -> torch.Tensor:
    """The SL mean update <f>(w) of Eq. (3.15) for the erf sigmoid, batched over ``w`` (..., n):

    ``<f> = 1/2 (mu_+ - E_+[Phi(w~ . x) x]) - 1/2 E_-[Phi(w~ . x) x] - lambda w``,
    ``w~ = sqrt(pi/8) w``.
    """
    w_tilde = ERF_SIGMOID_SCALE * w
    plus = expected_cdf_times_input(w_tilde, classes.mu_plus, classes.cov_plus)
    minus = expected_cdf_times_input(w_tilde, classes.mu_minus, classes.cov_minus)
    return 0.5 * (classes.mu_plus - plus) - 0.5 * minus - lam * w


def sl_step(w: torch.Tensor, normals: torch.Tensor, classes: GaussianClasses, eta: float,
            lam: float = 0.0, sigmoid: str = "erf") -> torch.Tensor:
    """One online SL update (3.12) of every replica: ``w`` (R, n), ``normals`` (R, n + 1)."""
    x, y = classes.sample(normals)
    return sl_update(w, x, y, eta, lam, sigmoid)


def sl_update(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, eta: float, lam: float = 0.0,
              sigmoid: str = "erf") -> torch.Tensor:
    """The SL update (3.12) from drawn inputs ``x`` (R, n) and labels ``y`` (R,) of +-1.

    Drawing the inputs of many steps at once (``classes.sample`` on normals of shape (k, R, n + 1),
    as the ``noise`` sampler of :func:`learndyn.ensemble.run_ensemble`) leaves this as the whole
    per-step work: a dot product, the sigmoid and one fused multiply-add.
    """
    error = 0.5 * (y + 1) - SIGMOIDS[sigmoid](torch.linalg.vecdot(w, x))
    return torch.addcmul(w * (1.0 - eta * lam), x, error[..., None], value=eta)


def sl_noise_covariance(w: torch.Tensor, classes: GaussianClasses, lam: float = 0.0,
                        *, n_samples: int = 200_000, generator=None) -> torch.Tensor:
    """Monte Carlo estimate of the update covariance B(w) = <f f^T> - <f><f>^T at one ``w`` (n,).

    It sets the O(eta) diffusion term of (1.11) that the Liouville limit leaves out.
    """
    normals = torch.randn(n_samples, classes.dim + 1, generator=generator, device=w.device,
                          dtype=w.dtype)
    x, y = classes.sample(normals)
    f = (0.5 * (y + 1) - erf_sigmoid(x @ w))[:, None] * x - lam * w
    return torch.cov(f.T)


def _isotropic_std(cov: torch.Tensor) -> torch.Tensor | None:
    """``sqrt(c)`` when ``cov`` is exactly ``c I``, else ``None``."""
    c = cov[0, 0]
    if torch.equal(cov, c * torch.eye(cov.shape[-1], device=cov.device, dtype=cov.dtype)):
        return torch.sqrt(c)
    return None


RULES = ("sl", "rl")


def _check_rule(rule: str) -> str:
    if rule not in RULES:
        raise ValueError(f"rule={rule!r} must be one of {RULES}")
    return rule


def _check_lam(lam):
    """A non-negative penalty: a number, or a tensor that broadcasts against the weights (read back
    once, not on every step: :func:`learndyn.backend.check_nonnegative`)."""
    if isinstance(lam, torch.Tensor):
        if lam.numel() == 0:
            raise ValueError("lam is an empty tensor")
        return check_nonnegative(lam, "lam")
    return check_positive(lam, "lam", allow_zero=True)


def _check_sigmoid(sigmoid: str) -> str:
    if sigmoid not in SIGMOIDS:
        raise ValueError(f"sigmoid={sigmoid!r} must be one of {tuple(SIGMOIDS)}")
    return sigmoid


def _sigmoid_variance_times_input(v, mean, cov):
    """E[Phi(v . x) (1 - Phi(v . x)) x] for x ~ N(mean, cov), from Eqs. (3.38) and (3.40)."""
    return (expected_cdf_times_input(v, mean, cov)
            - expected_cdf_squared_times_input(v, mean, cov))


def rl_mean_update(w: torch.Tensor, classes: GaussianClasses, lam: float = 0.0) -> torch.Tensor:
    """The RL (REINFORCE) mean update <f>(w) of Eq. (3.20) for the erf sigmoid, batched over ``w``:

    ``<f> = E_+[phi(w.x) phi(-w.x) x] - E_-[phi(w.x) phi(-w.x) x] - lambda w``,

    with ``phi(w.x) phi(-w.x) = Phi(w~.x) - Phi(w~.x)^2`` and ``w~ = sqrt(pi/8) w``; the Phi^2 terms bring
    in Owen's T function (3.21).
    """
    w_tilde = ERF_SIGMOID_SCALE * w
    plus = _sigmoid_variance_times_input(w_tilde, classes.mu_plus, classes.cov_plus)
    minus = _sigmoid_variance_times_input(w_tilde, classes.mu_minus, classes.cov_minus)
    return plus - minus - lam * w


def mean_update(w: torch.Tensor, classes: GaussianClasses, lam: float = 0.0,
                rule: str = "sl") -> torch.Tensor:
    """<f>(w) of rule ``"sl"`` (Eq. 3.15) or ``"rl"`` (Eq. 3.20); differentiable in ``w``, so it
    is the drift of the moment equations (3.10)-(3.11) in
    :func:`learndyn.flows.integrate_moments`."""
    check_positive(lam, "lam", allow_zero=True)
    update = sl_mean_update if _check_rule(rule) == "sl" else rl_mean_update
    return update(w, classes, lam)


def symmetric_mean_update(w: torch.Tensor, mu: torch.Tensor, var: torch.Tensor, lam: float = 0.0,
                          rule: str = "sl") -> torch.Tensor:
    """<f>(w) for classes ``N(+-mu, diag(var))``, broadcast over ``w``, ``mu``, ``var`` (..., n).

    The special case of Eqs. (3.15) and (3.20) with mu_+- = +-mu and one diagonal covariance,
    batched over problems as well as weights (Fig. 3: one row per noise level or anisotropy).
    ``lam`` may be a tensor that broadcasts too. With a = mu . w~, b^2 = w~^T Sigma w~,
    s = sqrt(1 + b^2):

    - SL: ``<f> = mu (1 - Phi(a/s)) - Sigma w~ phi(a/s)/s - lambda w``,
    - RL: ``<f> = 4 mu T(a/s, 1/sqrt(1 + 2 b^2)) - 2 Sigma w~ phi(a/s)/s erf(a / (s sqrt(2 + 4 b^2)))
      - lambda w``.
    """
    _check_lam(lam)
    w_tilde = ERF_SIGMOID_SCALE * w
    cov_w = var * w_tilde
    a = (mu * w_tilde).sum(-1, keepdim=True)
    b2 = (cov_w * w_tilde).sum(-1, keepdim=True)
    s = torch.sqrt(1.0 + b2)
    if _check_rule(rule) == "sl":
        drive = mu * normal_cdf(-a / s) - cov_w * (normal_pdf(a / s) / s)
    else:
        drive = (4.0 * mu * owens_t(a / s, torch.rsqrt(1.0 + 2.0 * b2))
                 - 2.0 * cov_w * (normal_pdf(a / s) / s)
                 * torch.special.erf(a / (s * torch.sqrt(2.0 + 4.0 * b2))))
    return drive - lam * w


def isotropic_flow(m: torch.Tensor, q: torch.Tensor, sigma, mu2=1.0, lam: float = 0.0,
                   rule: str = "sl") -> tuple[torch.Tensor, torch.Tensor]:
    """The closed flow of ``m = mu·<w>`` and ``q = |<w>|^2`` for classes ``N(+-mu, sigma^2 I)``:
    Eqs. (3.18)-(3.19) (SL) and (3.22)-(3.23) (RL), with the regularization terms ``-lambda m`` and
    ``-2 lambda q`` added. Returns ``(dm/dt, dq/dt)``; everything broadcasts.
    """
    _check_lam(lam)
    sigma2 = torch.as_tensor(sigma, dtype=m.dtype, device=m.device) ** 2
    a = ERF_SIGMOID_SCALE * m
    b2 = sigma2 * (math.pi / 8.0) * q
    s = torch.sqrt(1.0 + b2)
    gauss = normal_pdf(a / s) / s
    if _check_rule(rule) == "sl":
        drive = normal_cdf(-a / s)
        dm = mu2 * drive - sigma2 * a * gauss
        dq = 2.0 * m * drive - 0.5 * sigma2 * q * gauss * math.sqrt(2.0 * math.pi)
    else:
        owen = owens_t(a / s, torch.rsqrt(1.0 + 2.0 * b2))
        error = torch.special.erf(a / (s * torch.sqrt(2.0 + 4.0 * b2)))
        dm = 4.0 * mu2 * owen - 2.0 * sigma2 * a * gauss * error
        dq = 8.0 * m * owen - sigma2 * q * gauss * error * math.sqrt(2.0 * math.pi)
    return dm - lam * m, dq - 2.0 * lam * q


def fixed_point_norm(sigma: float, lam: float, rule: str = "sl", *, upper: float = 1e3) -> float:
    """``|<w*>|`` at the fixed point for classes ``N(+-mu, sigma^2 I)``, ``|mu| = 1`` (Eqs. 3.41-3.43).

    The fixed point is aligned with ``mu`` (appendix of chapter 3), so ``m = r``, ``q = r^2`` and
    ``dm/dt = 0`` is one equation in ``r``, solved by Brent's method on ``(0, upper)``. For SL it
    exists when ``lam > 0`` or ``sigma > 0``; for RL only when ``lam > 0`` (at ``lam = 0`` the
    expected reward grows with ``r`` for ever, ``dm/dt ~ c / r^3 > 0``: see the chapter's erratum).
    """
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    lam = check_positive(lam, "lam", allow_zero=True)
    _check_rule(rule)
    if lam == 0 and (sigma == 0 or rule == "rl"):
        raise ValueError(f"sigma={sigma} and lam=0 with rule={rule!r}: the weight norm grows "
                         "without bound (no fixed point)")

    def drift(r: float) -> float:
        m = torch.tensor(r, dtype=torch.float64)
        return float(isotropic_flow(m, m * m, sigma, 1.0, lam, rule)[0])

    if drift(upper) > 0:
        raise ValueError(f"no fixed point below upper={upper!r} for sigma={sigma}, lam={lam}")
    return brentq(drift, 0.0, upper, xtol=1e-14, rtol=1e-13)


def rl_step(w: torch.Tensor, normals: torch.Tensor, classes: GaussianClasses, eta: float,
            lam: float = 0.0, sigmoid: str = "erf") -> torch.Tensor:
    """One online REINFORCE update (3.13) of every replica: ``w`` (R, n), ``normals`` (R, n + 2).

    The first ``n + 1`` normals draw the input and label as in :func:`sl_step`; the last one draws
    the output, ``y^ = +1`` when ``Phi(normal) < sigma(w . x)``. With the baseline
    ``<y y^ | x> = y (2 sigma(w . x) - 1)``, ``f = y^ delta sigma(-y^ w . x) x - lambda w``.
    """
    x, y = classes.sample(normals[..., :-1])
    p = SIGMOIDS[sigmoid]((w * x).sum(-1))
    output = torch.where(normal_cdf(normals[..., -1]) < p, 1.0, -1.0).to(w.dtype)
    delta = y * output - y * (2.0 * p - 1.0)
    score = torch.where(output > 0, 1.0 - p, p)
    return w + eta * ((output * delta * score)[..., None] * x - lam * w)


def _fast_isotropic_step(w, normals, means, stds, eta, lam, sigmoid, rule):
    """:func:`sl_step` / :func:`rl_step` for isotropic classes without forming ``x``:
    ``w . x = w . mu_y + std_y (w . xi)`` and ``w += eta (err mu_y + err std_y xi) - eta lam w``.
    ``means`` is (2, n) (mu_plus, mu_minus), ``stds`` (2,)."""
    xi = normals[..., 1:w.shape[-1] + 1]
    positive = normals[..., 0] >= 0
    w_mu = w @ means.T
    std = torch.where(positive, stds[0], stds[1])
    z = torch.where(positive, w_mu[:, 0], w_mu[:, 1]) + std * (w * xi).sum(-1)
    p = SIGMOIDS[sigmoid](z)
    if rule == "sl":
        error = positive.to(w.dtype) - p
    else:
        y = positive.to(w.dtype) * 2 - 1
        output = torch.where(normal_cdf(normals[..., -1]) < p, 1.0, -1.0).to(w.dtype)
        error = output * (y * output - y * (2.0 * p - 1.0)) * torch.where(output > 0, 1.0 - p, p)
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    coefficients = torch.stack([torch.where(positive, error, zero),
                                torch.where(positive, zero, error)], dim=-1)
    new = torch.addmm(w, coefficients, means, beta=1.0 - eta * lam, alpha=eta)
    return new.addcmul_(xi, (eta * error * std)[:, None])


def learning_step(classes: GaussianClasses, eta: float, lam: float = 0.0, rule: str = "sl",
                  sigmoid: str = "erf"):
    """``step(w, normals)`` for :func:`learndyn.ensemble.run_ensemble`: one update (3.12) or (3.13)
    of every replica; isotropic classes take a fast path that never forms the inputs."""
    check_positive(eta, "eta")
    check_positive(lam, "lam", allow_zero=True)
    _check_rule(rule)
    _check_sigmoid(sigmoid)
    if classes.isotropic:
        means = torch.stack([classes.mu_plus, classes.mu_minus])
        stds = torch.stack([classes.std_plus, classes.std_minus])
        return lambda w, normals: _fast_isotropic_step(w, normals, means, stds, eta, lam, sigmoid,
                                                       rule)
    base = sl_step if rule == "sl" else rl_step
    return lambda w, normals: base(w, normals, classes, eta, lam, sigmoid)


def simulate(classes: GaussianClasses, w0, eta: float, n_steps: int, *, lam: float = 0.0,
             rule: str = "sl", sigmoid: str = "erf", record=1, observe=None, generator=None,
             noise_chunk: int = 64, check_every: int = 16):
    """An ensemble of online learners, ``w0`` (R, n) one replica per row, advanced ``n_steps``
    times by rule (3.12) or (3.13), one batched update per step
    (:func:`~learndyn.ensemble.run_ensemble`). Time in the flow equations is ``t = eta * step``;
    divergence is checked every ``check_every`` steps and at every record.
    Returns the :class:`~learndyn.ensemble.EnsembleResult`."""
    w0 = as_tensor(w0, "w0", device=classes.mu_plus.device, dtype=classes.mu_plus.dtype)
    check_shape(w0, (None, classes.dim), "w0")
    if w0.dim() != 2:
        raise ValueError(f"w0 has shape {tuple(w0.shape)}, expected (replicas, {classes.dim})")
    step = learning_step(classes, eta, lam, rule, sigmoid)
    width = classes.dim + (1 if rule == "sl" else 2)
    replicas = w0.shape[0]

    def noise(k, gen):
        return torch.randn(k, replicas, width, generator=gen, device=w0.device, dtype=w0.dtype)

    return run_ensemble(step, w0, n_steps, record=record, observe=observe, noise=noise,
                        noise_chunk=noise_chunk, check_every=check_every, generator=generator)


def gaussian_accuracy(w: torch.Tensor, classes: GaussianClasses) -> torch.Tensor:
    """Probability that ``sign(w·x)`` equals the label for the two Gaussian classes (the
    theoretical test accuracy of Fig. 3.5): ``1/2 Phi(w.mu_+ / |w|_+) + 1/2 Phi(-w.mu_- / |w|_-)``."""
    plus = normal_cdf((w @ classes.mu_plus) / torch.sqrt(((w @ classes.cov_plus) * w).sum(-1)))
    minus = normal_cdf(-(w @ classes.mu_minus) / torch.sqrt(((w @ classes.cov_minus) * w).sum(-1)))
    return 0.5 * (plus + minus)


def symmetric_step(mu, std, eta: float, lam: float = 0.0, rule: str = "sl",
                   sigmoid: str = "erf"):
    """``step(w, normals)`` for replicas that each learn their own symmetric task
    ``x ~ N(y mu, diag(std^2))``: ``mu`` and ``std`` broadcast against ``w`` (R, n), so one batched
    run sweeps noise levels or anisotropies (Fig. 3); ``lam`` may be a tensor that broadcasts too
    (Fig. 2E). ``normals`` is (R, n + 1) for SL and
    (R, n + 2) for RL, used as in :func:`sl_step` and :func:`rl_step`."""
    check_positive(eta, "eta")
    _check_lam(lam)
    _check_rule(rule)
    sigmoid_function = SIGMOIDS[_check_sigmoid(sigmoid)]
    if not isinstance(mu, torch.Tensor):
        mu = as_tensor(mu, "mu")
    std = torch.as_tensor(std, dtype=mu.dtype, device=mu.device)
    if torch.isnan(std).any() or (std < 0).any():
        raise ValueError(f"std must be >= 0, got minimum {std.min().item():.3g}")

    def step(w, normals):
        y = torch.where(normals[..., :1] >= 0, 1.0, -1.0).to(w.dtype)
        x = torch.addcmul(y * mu, std, normals[..., 1:w.shape[-1] + 1])
        p = sigmoid_function((w * x).sum(-1, keepdim=True))
        if rule == "sl":
            error = 0.5 * (y + 1) - p
        else:
            output = torch.where(normal_cdf(normals[..., -1:]) < p, 1.0, -1.0).to(w.dtype)
            error = output * y * (output - (2.0 * p - 1.0)) * torch.where(output > 0, 1.0 - p, p)
        return w + eta * (error * x - lam * w)

    return step


# --- wrong theories, finite training sets and the chapter's measurement helpers (chapter 3) -------

def frozen_inputs_sl_update(w: torch.Tensor, classes: GaussianClasses, lam: float = 0.0) -> torch.Tensor:
    """The SL mean update with every input frozen at its class mean (``Sigma_+- -> 0``): a wrong theory.

    Implements :eq:`pc-sl-flow` of :doc:`/book/nonlinear_perceptron` with the input noise left out,
    ``1/2 mu_+ (1 - phi(w . mu_+)) - 1/2 mu_- phi(w . mu_-) - lambda w``, the nearest alternative
    that ignores how the noise of the inputs shapes the flow.
    """
    check_positive(lam, "lam", allow_zero=True)
    means = torch.stack([classes.mu_plus, classes.mu_minus])
    p = erf_sigmoid(w @ means.T)
    return 0.5 * (1 - p[..., :1]) * classes.mu_plus - 0.5 * p[..., 1:] * classes.mu_minus - lam * w


def shortcut_rl_update(w: torch.Tensor, classes: GaussianClasses, lam: float = 0.0) -> torch.Tensor:
    """The RL mean update with ``E[Phi^2] -> E[Phi]^2`` and ``E[Phi phi] -> E[Phi] E[phi]``: a wrong theory.

    Implements :eq:`pc-rl-flow` of :doc:`/book/nonlinear_perceptron` with the mean-field shortcut
    that drops Owen's T (:eq:`pc-one-dim`); the true update is :func:`rl_mean_update`.
    """
    check_positive(lam, "lam", allow_zero=True)
    w_tilde = ERF_SIGMOID_SCALE * w
    total = torch.zeros_like(w)
    for sign, mean, cov in ((1.0, classes.mu_plus, classes.cov_plus),
                            (-1.0, classes.mu_minus, classes.cov_minus)):
        a, cov_w = w_tilde @ mean, w_tilde @ cov
        b2 = (cov_w * w_tilde).sum(-1)
        p, d = normal_cdf(a / torch.sqrt(1 + b2)), normal_pdf(a / torch.sqrt(1 + b2)) / torch.sqrt(1 + b2)
        total = total + sign * ((p - p * p)[..., None] * mean + (d - 2 * p * d)[..., None] * cov_w)
    return total - lam * w


def empirical_mean_update(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lam: float = 0.0,
                          sigmoid: str = "erf") -> torch.Tensor:
    """The SL mean update over a finite training set ``x`` (n, N), ``y`` (n,) of +-1, batched over ``w``.

    Implements :eq:`pc-sl-rule` of :doc:`/book/nonlinear_perceptron` averaged over the training
    images: ``(1/n) sum_j (y~_j - phi(w . x_j)) x_j - lambda w``, the drift of online SGD that
    draws one training image per step.
    """
    check_positive(lam, "lam", allow_zero=True)
    if x.dim() != 2 or y.shape != x.shape[:1]:
        raise ValueError(f"x has shape {tuple(x.shape)} and y {tuple(y.shape)}; expected (n, N) and (n,)")
    error = 0.5 * (y + 1) - SIGMOIDS[_check_sigmoid(sigmoid)](w @ x.T)
    return error @ x / x.shape[0] - lam * w


def trace_decay(noises, times, *, mu, centre, lam: float, rule: str = "sl", slope_factor: float = 1.0,
                substeps: int = 2) -> torch.Tensor:
    """``tr C(t) / tr C(0)`` of the covariance flow from ``C(0) = I`` around ``centre``, for classes
    ``N(+-mu, sigma^2 I)``, batched over the noise levels ``noises``: shape ``(len(times), len(noises))``.

    Implements :eq:`pc-trace-flow` of :doc:`/book/nonlinear_perceptron` (for ``sigma = 0``) and its
    generalization ``dC/dt = C J^T + J C`` with the autograd Jacobian of :func:`symmetric_mean_update`
    along the first-order mean path. ``slope_factor`` scales the Jacobian's data term (the printed
    Eq. 27 of the chapter's erratum is ``slope_factor = 1/2``); the mean path is unchanged by it.
    """
    check_positive(slope_factor, "slope_factor")
    mu = as_tensor(mu, "mu")
    centre = as_tensor(centre, "centre", device=mu.device, dtype=mu.dtype)
    noise = as_tensor(noises, "noises", device=mu.device, dtype=mu.dtype).reshape(-1, 1)
    if (noise < 0).any():
        raise ValueError(f"noises must be >= 0, got {noise.flatten().tolist()}")
    var = noise**2 * torch.ones_like(mu)
    n = mu.shape[-1]
    eye = torch.eye(n, device=mu.device, dtype=mu.dtype)

    def drift(w):
        return symmetric_mean_update(w, mu, var, lam, rule)

    def rhs(_t, y):
        mean, cov = y[..., :n], y[..., n:].unflatten(-1, (n, n))
        _, jac, _ = drift_derivatives(drift, mean, second=False)
        jac = slope_factor * (jac + lam * eye) - lam * eye
        return torch.cat([drift(mean), (cov @ jac.transpose(-1, -2) + jac @ cov).flatten(-2)], -1)

    start = torch.cat([centre.expand(noise.shape[0], n), eye.flatten().expand(noise.shape[0], n * n)], -1)
    path = rk4(rhs, start, times, substeps=substeps)
    return path[..., n:].unflatten(-1, (n, n)).diagonal(dim1=-2, dim2=-1).sum(-1) / n


def halved_run(coarse_step, fine_step, state, n_steps: int, *, noise_shape, record, generator,
               integers: int | None = None, noise_chunk: int = 64):
    """An ensemble at step ``eta`` and its twin at ``eta / 2`` driven by common random numbers.

    ``coarse_step(w, noise)`` is one step at ``eta``; ``fine_step`` one at ``eta / 2``. Per coarse
    step two draws of shape ``noise_shape`` (normals, or integers below ``integers``) are made; the
    coarse ensemble uses the first, the fine one both, in two half steps, so that the two runs share
    their randomness and the Richardson combination ``2 fine - coarse`` (:func:`extrapolated`)
    removes the O(eta) terms that the flows of :doc:`/book/nonlinear_perceptron` neglect
    (:eq:`pc-sl-flow`, :eq:`pc-rl-flow`) with little added noise. ``state`` is ``w0`` or a
    ``(coarse, fine)`` pair to continue from. Returns the
    :class:`~learndyn.ensemble.EnsembleResult` (records ``state0`` coarse, ``state1`` fine).
    """
    shape = (2, *noise_shape)
    if isinstance(state, torch.Tensor):
        state = (state.clone(), state.clone())
    device, dtype = state[0].device, state[0].dtype

    def draw(k, gen):
        if integers is not None:
            return torch.randint(integers, (k, *shape), generator=gen, device=device)
        return torch.randn(k, *shape, generator=gen, device=device, dtype=dtype)

    def step(pair, noise):
        coarse, fine = pair
        return coarse_step(coarse, noise[0]), fine_step(fine_step(fine, noise[0]), noise[1])

    return run_ensemble(step, state, n_steps, record=record, noise=draw, noise_chunk=noise_chunk,
                        generator=generator)


def extrapolated(coarse: torch.Tensor, fine: torch.Tensor, dim: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean over the replica axis ``dim`` of ``2 fine - coarse`` and its standard error.

    The Richardson step of :func:`halved_run`: for an ensemble mean ``m(eta) = m(0) + a eta +
    O(eta^2)`` the combination estimates the flow of :doc:`/book/nonlinear_perceptron`
    (:eq:`pc-sl-flow`, :eq:`pc-rl-flow`) to O(eta^2); replica ``r`` of both runs is one sample.
    """
    if coarse.shape != fine.shape:
        raise ValueError(f"coarse {tuple(coarse.shape)} and fine {tuple(fine.shape)} must match")
    combined = 2 * fine - coarse
    n = combined.shape[dim]
    if n < 2:
        raise ValueError(f"need >= 2 replicas along dim={dim}, got {n}")
    return combined.mean(dim), combined.std(dim) / math.sqrt(n)


class Alignment(NamedTuple):
    """``value``: alignment of the replica mean with a direction; ``se`` its standard error;
    ``influence``: each replica's linearized contribution (replica axis last), for the error of
    any linear combination of alignments of the same replicas."""

    value: torch.Tensor
    se: torch.Tensor
    influence: torch.Tensor


def alignment(samples: torch.Tensor, direction: torch.Tensor, dim: int = 0) -> Alignment:
    """The alignment ``u·<w> / |<w>|`` (``u`` the unit ``direction``) of the mean over the replica
    axis ``dim`` of ``samples`` (..., n), with its delta-method standard error.

    Implements the alignment of :doc:`/book/nonlinear_perceptron` (Fig. 3's learning time and
    Fig. 6's forgetting, :eq:`pc-sl-iso`).
    """
    dim = dim % samples.dim()
    if dim == samples.dim() - 1:
        raise ValueError("dim is the weight axis; the last axis must be the weights")
    n_replicas = samples.shape[dim]
    if n_replicas < 2:
        raise ValueError(f"need >= 2 replicas along dim={dim}, got {n_replicas}")
    unit = direction / direction.norm()
    mean = samples.mean(dim)
    norm = mean.norm(dim=-1, keepdim=True)
    value = (mean @ unit) / norm[..., 0]
    gradient = (unit - value[..., None] * mean / norm) / norm
    influence = ((samples - mean.unsqueeze(dim)) * gradient.unsqueeze(dim)).sum(-1).movedim(dim, -1)
    return Alignment(value, influence.std(-1) / math.sqrt(n_replicas), influence)


def crossing_with_error(times, values, se, level: float) -> tuple[np.ndarray, np.ndarray]:
    """First time each column of ``values`` (``(len(times), ...)``) reaches ``level``, and its error
    ``se / slope`` (the slope from the two records that bracket the crossing).

    Implements the learning time ``t_80`` of :doc:`/book/nonlinear_perceptron` (Fig. 3, from
    :eq:`pc-sl-iso` and :eq:`pc-rl-iso`) through :func:`learndyn.stats.first_crossing`.
    """
    times = np.asarray(times, dtype=np.float64)
    values = np.asarray(values.cpu() if hasattr(values, "cpu") else values, dtype=np.float64)
    se = np.asarray(se.cpu() if hasattr(se, "cpu") else se, dtype=np.float64)
    crossing = first_crossing(times, values, level)
    if np.isnan(crossing).any():
        raise ValueError(f"some columns never reach level={level}")
    k = np.clip(np.searchsorted(times, crossing), 1, len(times) - 1)
    columns = np.indices(crossing.shape)
    slope = ((values[(k, *columns)] - values[(k - 1, *columns)]) / (times[k] - times[k - 1]))
    bracket = np.maximum(se[(k, *columns)], se[(k - 1, *columns)])
    return crossing, bracket / np.abs(slope)


def training_set_step(x: torch.Tensor, y: torch.Tensor, eta: float, lam: float = 0.0,
                      sigmoid: str = "erf"):
    """``step(w, index)`` for :func:`learndyn.ensemble.run_ensemble`: replica ``r`` makes one SL
    update (:eq:`pc-sl-rule` of :doc:`/book/nonlinear_perceptron`) on the training example
    ``index[r]`` of ``x`` (n, N), ``y`` (n,) of +-1; its drift is :func:`empirical_mean_update`."""
    check_positive(eta, "eta")
    check_positive(lam, "lam", allow_zero=True)
    sigmoid_function = SIGMOIDS[_check_sigmoid(sigmoid)]

    def step(w, index):
        xb, yb = x[index], y[index]
        error = 0.5 * (yb + 1) - sigmoid_function((w * xb).sum(-1))
        return w + eta * (error[:, None] * xb - lam * w)

    return step


# --- the speed of alignment, the decay of orthogonal components and the stationary noise (chapter 3) ---

def _isotropic_arguments(m, q, sigma):
    sigma2 = torch.as_tensor(sigma, dtype=m.dtype, device=m.device) ** 2
    b2 = sigma2 * (math.pi / 8.0) * q
    s = torch.sqrt(1.0 + b2)
    return sigma2, b2, s, ERF_SIGMOID_SCALE * m / s


def alignment_rate(m: torch.Tensor, q: torch.Tensor, sigma, mu2=1.0, rule: str = "sl") -> torch.Tensor:
    """``d/dt ln(m / sqrt(q))`` of the isotropic flow, the exact form of Eqs. (3.24)-(3.25).

    Implements :eq:`pc-alignment-rate` of :doc:`/book/nonlinear_perceptron`:
    ``(1 - Phi(m~/s)) (|mu|^2/m - m/q)`` for SL and ``4 T(m~/s, 1/sqrt(1 + 2 sigma^2 q~))
    (|mu|^2/m - m/q)`` for RL; the explicit sigma^2 terms and the penalty cancel. Broadcasts.
    """
    _, b2, _, h = _isotropic_arguments(m, q, sigma)
    geometry = mu2 / m - m / q
    if _check_rule(rule) == "sl":
        return normal_cdf(-h) * geometry
    return 4.0 * owens_t(h, torch.rsqrt(1.0 + 2.0 * b2)) * geometry


def orthogonal_decay_rate(m: torch.Tensor, q: torch.Tensor, sigma, lam=0.0, rule: str = "sl") -> torch.Tensor:
    """The rate ``f_2`` at which every component of ``<w>`` orthogonal to ``mu`` decays (Eq. 3.41).

    Implements :eq:`pc-two-functions` of :doc:`/book/nonlinear_perceptron` for classes
    ``N(+-mu, sigma^2 I)`` with ``m = mu . <w>``, ``q = |<w>|^2``: ``lambda + sigma^2 sqrt(pi/8)
    phi_N(m~/s)/s`` for SL and ``lambda + 2 sigma^2 sqrt(pi/8) phi_N(m~/s)/s erf(m~/(s sqrt(2 + 4
    sigma^2 q~)))`` for RL. It is the forgetting rate of an old task (Fig. 6). Broadcasts.
    """
    _check_lam(lam)
    sigma2, b2, s, h = _isotropic_arguments(m, q, sigma)
    noise = sigma2 * ERF_SIGMOID_SCALE * normal_pdf(h) / s
    if _check_rule(rule) == "rl":
        noise = 2.0 * noise * torch.special.erf(h / torch.sqrt(2.0 + 4.0 * b2))
    return lam + noise


def fixed_point_noise(r: float, sigma: float, lam: float, rule: str = "sl", *, dim: int = 2, nodes: int = 96,
                      device=None, dtype=None) -> torch.Tensor:
    """The update covariance ``B = <f f^T>`` at the fixed point ``<w*> = r e_1`` (``mu = e_1``,
    ``Sigma = sigma^2 I``), by Gauss-Hermite quadrature over the first input component
    ``u = x_1 ~ N(1, sigma^2)``.

    Implements the noise ``D`` of :eq:`pc-stationary-lyapunov` of :doc:`/book/nonlinear_perceptron`:
    with ``<f> = 0`` there, ``B = E[e^2 x x^T] - lambda^2 r^2 e_1 e_1^T``, where ``E[e^2 | x]`` is
    ``(1 - phi(r u))^2`` for SL and ``4 p (1 - p) ((1 - p)^3 + p^3)``, ``p = phi(r u)``, for RL; ``B``
    is diagonal, ``sigma^2 E[e^2]`` across ``mu``. Returns ``(dim, dim)``.
    """
    sigma = check_positive(sigma, "sigma")
    lam = check_positive(lam, "lam", allow_zero=True)
    _check_rule(rule)
    if dim < 1:
        raise ValueError(f"dim={dim!r} must be >= 1")
    dtype = dtype or torch.float64
    points, weights = np.polynomial.hermite_e.hermegauss(nodes)
    u = torch.as_tensor(1.0 + sigma * points, device=device, dtype=dtype)
    weights = torch.as_tensor(weights / math.sqrt(2 * math.pi), device=device, dtype=dtype)
    p = erf_sigmoid(r * u)
    error2 = (1.0 - p) ** 2 if rule == "sl" else 4.0 * p * (1.0 - p) * ((1.0 - p) ** 3 + p**3)
    along = (weights * error2 * u * u).sum() - (lam * r) ** 2
    across = sigma**2 * (weights * error2).sum()
    return torch.diag(torch.cat([along[None], across.expand(dim - 1)]))


def task_sequence(tasks, durations, std, eta: float, lam: float, rule: str, w0, *, generator):
    """Online learners trained on ``tasks[k]`` (classes ``N(+-tasks[k], std^2 I)``) for ``durations[k]``
    in turn, each with its half-step twin (:func:`halved_run`), the state carried from task to task.

    The continual-learning experiment of :doc:`/book/nonlinear_perceptron` (Fig. 6, the forgetting
    rate of :eq:`pc-two-functions`). ``w0`` is (R, n); ``generator(k)`` gives the random stream of
    task ``k``; task ``k`` lasts ``round(durations[k] / eta)`` steps. Returns the Richardson
    combination ``2 w_{eta/2} - w_eta`` of every learner at the end of every task, (tasks, R, n).
    """
    check_positive(eta, "eta")
    if len(durations) > len(tasks):
        raise ValueError(f"{len(durations)} durations for {len(tasks)} tasks")
    state, ends = w0, []
    width = w0.shape[-1] + (1 if _check_rule(rule) == "sl" else 2)
    for k, duration in enumerate(durations):
        n_steps = math.floor(duration / eta + 0.5)
        steps = [symmetric_step(tasks[k], std, e, lam, rule) for e in (eta, eta / 2)]
        state = halved_run(*steps, state, n_steps, record=[n_steps], noise_shape=(w0.shape[0], width),
                           generator=generator(k)).state
        ends.append(2 * state[1] - state[0])
    return torch.stack(ends)


__all__ = [
    "GaussianClasses", "sl_mean_update", "sl_step", "sl_update", "sl_noise_covariance",
    "rl_mean_update", "mean_update", "symmetric_mean_update", "isotropic_flow", "fixed_point_norm",
    "rl_step", "learning_step", "simulate", "gaussian_accuracy", "symmetric_step",
    "frozen_inputs_sl_update", "shortcut_rl_update", "empirical_mean_update", "trace_decay",
    "halved_run", "extrapolated", "Alignment", "alignment", "crossing_with_error", "training_set_step",
    "alignment_rate", "orthogonal_decay_rate", "fixed_point_noise", "task_sequence",
]
