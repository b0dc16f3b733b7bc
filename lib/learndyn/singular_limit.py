"""Noisy gradient descent near a zero-loss manifold and its singular limit (chapter 6).

Shalova, Schlichting & Peletier: gradient descent ``w <- w - alpha grad_w L^(w, eta)`` with
i.i.d. mean-zero noise ``eta`` of variance ``sigma^2`` falls onto the zero-loss set ``Gamma`` and
then drifts along it. With ``Reg(w) = 1/2 Laplacian_eta L^(w, 0)`` (Eq. sl-reg) the drift is

* non-degenerate noise (``P_T grad Reg != 0`` on ``Gamma``): the constrained gradient flow
  ``dW/dt = -P_T grad Reg(W)`` in ``t = alpha sigma^2 k`` (Eq. sl-flow-nondegenerate);
* label noise (``Reg`` constant): ``dW/dtau = -1/(4n) P_T grad tr H(W)`` in
  ``tau = alpha^2 sigma^2 k`` (Eq. sl-flow-label), ``H`` the Gauss-Newton matrix;
* minibatch resampling on consistent data: no motion at all.

The model is a diagonal linear network ``f(x; u, v) = sum_j u_j v_j x_j`` with squared loss
``L = 1/(2n) sum_i (f(x_i) - y_i)^2``; the product model ``f = uv`` is width 1 with ``x = 1``. The
parameters are stored as ``w = (u_1..u_d, v_1..v_d)``, shape ``(..., 2d)``, the leading axes being
replicas. Noise types and their noisy loss ``L^(w, eta)`` (Eq. sl-noisy-losses):

=========== ============================================================ ==============
kind        L^(w, eta)                                                   eta has size
=========== ============================================================ ==============
label       ``1/(2n) sum_i (f_i - y_i - eta_i)^2``                       n
dropout     ``f_i -> sum_j (1 + eta_j) u_j v_j x_ij``                    d
dropconnect ``u -> u (1 + eta_u), v -> v (1 + eta_v)``                   2d
weight      ``L(w + eta)``                                               2d
isotropic   ``L(w) - eta . w``                                           2d
minibatch   ``1/n sum_i (1 + eta_i) l_i(w)``                             n
=========== ============================================================ ==============

Gaussian noise for label, weight and isotropic; Bernoulli masks rescaled by the keep probability
for dropout and DropConnect (drop probability ``sigma^2 / (1 + sigma^2)``, so that
``Var eta = sigma^2``); for minibatch, ``batch_size`` indices drawn with replacement and
``eta_i = (n / b) count_i - 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .backend import (
    as_tensor,
    check_count,
    check_positive,
    check_shape,
    make_generator,
    resolve_device,
    resolve_dtype,
)
from .ensemble import EnsembleResult, run_ensemble
from .flows import rk4

#: The noise types of the chapter, as in the table above.
NOISE_KINDS = ("label", "dropout", "dropconnect", "weight", "isotropic", "minibatch")
#: The kinds whose ``Reg`` is constant on every zero-loss set of the model, so that the limit lives
#: on the scale ``alpha^2 sigma^2``.
DEGENERATE_KINDS = ("label", "isotropic", "minibatch")
#: The power ``p`` of the slow time ``alpha^p sigma^2 k`` on which each limiting flow is written.
TIME_SCALE_POWER = {"label": 2, "dropout": 1, "dropconnect": 1, "weight": 1}


@dataclass(frozen=True)
class DiagonalNetwork:
    """Data ``inputs`` (n, d) and ``targets`` (n,) for ``f(x; u, v) = sum_j u_j v_j x_j``, the
    diagonal network of :eq:`sl-noisy-losses` of :doc:`/book/singular_limit`."""

    inputs: torch.Tensor
    targets: torch.Tensor

    @classmethod
    def make(cls, inputs, targets, *, device=None, dtype=None) -> DiagonalNetwork:
        """Validated data; ``inputs`` of shape (n, d), ``targets`` of shape (n,)."""
        inputs = as_tensor(inputs, "inputs", device=device, dtype=dtype)
        if inputs.dim() != 2 or inputs.shape[0] < 1 or inputs.shape[1] < 1:
            raise ValueError(f"inputs has shape {tuple(inputs.shape)}, expected (n, d), n, d >= 1")
        targets = as_tensor(targets, "targets", device=inputs.device, dtype=inputs.dtype)
        if targets.shape != inputs.shape[:1]:
            raise ValueError(f"targets has shape {tuple(targets.shape)}, expected "
                             f"({inputs.shape[0]},) to match inputs")
        return cls(inputs, targets)

    @classmethod
    def product(cls, target: float = 1.0, *, device=None, dtype=None) -> DiagonalNetwork:
        """The product model ``f(u, v) = u v`` fitted to one datum ``y = target``."""
        return cls.make([[1.0]], [float(target)], device=device, dtype=dtype)

    @property
    def n_samples(self) -> int:
        return self.inputs.shape[0]

    @property
    def width(self) -> int:
        return self.inputs.shape[1]

    def check_parameters(self, w, name: str = "w") -> torch.Tensor:
        w = as_tensor(w, name, device=self.inputs.device, dtype=self.inputs.dtype)
        return check_shape(w, (2 * self.width,), name)

    def split(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w[..., : self.width], w[..., self.width:]

    def outputs(self, w: torch.Tensor) -> torch.Tensor:
        """``f(x_i; w)`` for every datum, shape ``(..., n)``."""
        u, v = self.split(w)
        return (u * v) @ self.inputs.T

    def loss(self, w: torch.Tensor) -> torch.Tensor:
        """``L(w) = 1/(2n) sum_i (f_i - y_i)^2``, shape ``(...)``."""
        return 0.5 * (self.outputs(w) - self.targets).square().mean(-1)

    def output_jacobian(self, w: torch.Tensor) -> torch.Tensor:
        """``J[..., i, :] = grad_w f_i``, shape ``(..., n, 2d)``."""
        u, v = self.split(w)
        return torch.cat([self.inputs * v.unsqueeze(-2), self.inputs * u.unsqueeze(-2)], dim=-1)

    def input_power(self) -> torch.Tensor:
        """``c_j = sum_i x_ij^2``, shape (d,)."""
        return self.inputs.square().sum(0)


def noise_size(kind: str, network: DiagonalNetwork) -> int:
    """The number of noise variables ``eta`` of a noise type of :eq:`sl-noisy-losses` of
    :doc:`/book/singular_limit` (table in the module docstring)."""
    _check_kind(kind)
    n, d = network.n_samples, network.width
    return {"label": n, "minibatch": n, "dropout": d}.get(kind, 2 * d)


def _perturbed(kind: str, w: torch.Tensor, eta: torch.Tensor, network: DiagonalNetwork):
    """Effective (u, v), chain-rule factors d(u~)/du, d(v~)/dv, label shift and sample weights."""
    u, v = network.split(w)
    d = network.width
    one = torch.ones((), dtype=w.dtype, device=w.device)
    shift, weights = 0.0, one
    scale_u, scale_v = one, one
    if kind == "label":
        shift = eta
    elif kind == "minibatch":
        weights = 1.0 + eta
    elif kind == "dropout":
        scale_u = 1.0 + eta
        u = u * scale_u
    elif kind == "dropconnect":
        scale_u, scale_v = 1.0 + eta[..., :d], 1.0 + eta[..., d:]
        u, v = u * scale_u, v * scale_v
    elif kind == "weight":
        u, v = u + eta[..., :d], v + eta[..., d:]
    return u, v, scale_u, scale_v, shift, weights


def noisy_loss(kind: str, w, eta, network: DiagonalNetwork) -> torch.Tensor:
    """``L^(w, eta)``, batched over leading axes; differentiable.

    Implements :eq:`sl-noisy-losses` of :doc:`/book/singular_limit`.
    """
    w, eta = _check_pair(kind, w, eta, network)
    u, v, _, _, shift, weights = _perturbed(kind, w, eta, network)
    residual = (u * v) @ network.inputs.T - network.targets - shift
    value = 0.5 * (weights * residual.square()).mean(-1)
    if kind == "isotropic":
        value = value - (eta * w).sum(-1)
    return value


def noisy_gradient(kind: str, w, eta, network: DiagonalNetwork) -> torch.Tensor:
    """``grad_w L^(w, eta)`` in closed form, shape ``(..., 2d)``.

    Implements the update of :eq:`sl-noisy-gd` of :doc:`/book/singular_limit`.
    """
    w, eta = _check_pair(kind, w, eta, network)
    return _gradient(kind, w, eta, network)


def _gradient(kind: str, w, eta, network: DiagonalNetwork) -> torch.Tensor:
    u, v, scale_u, scale_v, shift, weights = _perturbed(kind, w, eta, network)
    residual = (u * v) @ network.inputs.T - network.targets - shift
    error = (weights * residual) @ network.inputs / network.n_samples
    gradient = torch.cat([scale_u * error * v, scale_v * error * u], dim=-1)
    return gradient - eta if kind == "isotropic" else gradient


def regularizer(kind: str, w, network: DiagonalNetwork) -> torch.Tensor:
    """``Reg(w) = 1/2 Laplacian_eta L^(w, 0)``, shape ``(...)``.

    Implements :eq:`sl-reg-table` of :doc:`/book/singular_limit`:

    label: 1/2; dropout: 1/(2n) sum_j c_j (u_j v_j)^2; DropConnect: twice dropout;
    weight perturbation: 1/(2n) sum_j c_j (u_j^2 + v_j^2) = 1/2 tr Hess L; isotropic, minibatch: 0.
    Here ``c_j = sum_i x_ij^2``.
    """
    _check_kind(kind)
    w = network.check_parameters(w)
    u, v = network.split(w)
    c = network.input_power() / network.n_samples
    if kind == "label":
        return torch.full(w.shape[:-1], 0.5, dtype=w.dtype, device=w.device)
    if kind in ("isotropic", "minibatch"):
        return torch.zeros(w.shape[:-1], dtype=w.dtype, device=w.device)
    if kind == "weight":
        return 0.5 * (c * (u.square() + v.square())).sum(-1)
    factor = 0.5 if kind == "dropout" else 1.0
    return factor * (c * (u * v).square()).sum(-1)


def regularizer_gradient(kind: str, w, network: DiagonalNetwork) -> torch.Tensor:
    """``grad_w Reg`` of :func:`regularizer`, shape ``(..., 2d)``: the gradient of
    :eq:`sl-reg-table` of :doc:`/book/singular_limit`."""
    _check_kind(kind)
    return _regularizer_gradient(kind, network.check_parameters(w), network)


def _regularizer_gradient(kind: str, w: torch.Tensor, network: DiagonalNetwork) -> torch.Tensor:
    u, v = network.split(w)
    c = network.input_power() / network.n_samples
    if kind in DEGENERATE_KINDS:
        return torch.zeros_like(w)
    if kind == "weight":
        return torch.cat([c * u, c * v], dim=-1)
    factor = 1.0 if kind == "dropout" else 2.0
    p = u * v
    return factor * torch.cat([c * p * v, c * p * u], dim=-1)


def tangent_projection(w, network: DiagonalNetwork) -> torch.Tensor:
    """``P_T = I - J^T (J J^T)^+ J``, the projection onto the tangent space of the level set of the
    outputs through ``w`` (on ``Gamma`` this is ``T_w Gamma``), shape ``(..., 2d, 2d)``: the
    projection of :eq:`sl-flow-nondegenerate` of :doc:`/book/singular_limit`."""
    return _tangent_projection(network.check_parameters(w), network)


def _tangent_projection(w: torch.Tensor, network: DiagonalNetwork) -> torch.Tensor:
    # J^T (J J^T + delta I)^-1 J has the eigenvalues s^2 / (s^2 + delta) on J's row space (zero off
    # it), so with delta at rounding level it is the pseudo-inverse's projection without the
    # eigendecomposition (and the host synchronization) that pinv needs; a Cholesky solve is enough.
    jacobian = network.output_jacobian(w)
    gram = jacobian @ jacobian.transpose(-1, -2)
    scale = gram.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    eye_n = torch.eye(gram.shape[-1], dtype=w.dtype, device=w.device)
    delta = gram.shape[-1] * torch.finfo(w.dtype).eps * scale + torch.finfo(w.dtype).tiny
    factor, _info = torch.linalg.cholesky_ex(gram + delta * eye_n)
    solved = torch.cholesky_solve(jacobian, factor)
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    return eye - jacobian.transpose(-1, -2) @ solved


def limiting_drift(kind: str, w, network: DiagonalNetwork) -> torch.Tensor:
    """The right-hand side of the limiting flow on ``Gamma``, shape ``(..., 2d)``.

    dropout, dropconnect, weight: ``-P_T grad Reg`` in ``t = alpha sigma^2 k``
    (implements :eq:`sl-flow-nondegenerate` of :doc:`/book/singular_limit`). label: ``-1/(4n) P_T grad tr H``
    in ``tau = alpha^2 sigma^2 k`` (implements :eq:`sl-flow-label` of :doc:`/book/singular_limit`); for this
    model ``tr H = 2 Reg_weight``. minibatch: zero on both scales.
    isotropic noise has a tangential noise term (an SDE on ``Gamma``), so it is refused here.
    """
    _check_kind(kind)
    if kind == "isotropic":
        raise ValueError("kind='isotropic' has no deterministic limiting flow: its limit is an "
                         "SDE on the zero-loss set")
    return _limiting_drift(kind, network.check_parameters(w), network)


def _limiting_drift(kind: str, w: torch.Tensor, network: DiagonalNetwork) -> torch.Tensor:
    if kind == "minibatch":
        return torch.zeros_like(w)
    if kind == "label":
        gradient = _regularizer_gradient("weight", w, network) / (2 * network.n_samples)
    else:
        gradient = _regularizer_gradient(kind, w, network)
    return -(_tangent_projection(w, network) @ gradient.unsqueeze(-1)).squeeze(-1)


def limiting_flow(kind: str, w0, times, network: DiagonalNetwork, *, substeps: int = 8):
    """Integrate :func:`limiting_drift` from ``w0`` (on ``Gamma``) over ``times`` with
    :func:`learndyn.flows.rk4`; returns shape ``(len(times), ..., 2d)``. Time is
    ``t = alpha sigma^2 k`` or, for label noise, ``tau = alpha^2 sigma^2 k``
    (see ``TIME_SCALE_POWER``). Implements :eq:`sl-flow-nondegenerate` and :eq:`sl-flow-label` of
    :doc:`/book/singular_limit`."""
    w0 = network.check_parameters(w0, "w0")
    limiting_drift(kind, w0, network)  # validates kind once; the steps then read nothing back
    return rk4(lambda _t, w: _limiting_drift(kind, w, network), w0, times, substeps=substeps)


def sample_noise(kind: str, shape, network: DiagonalNetwork, generator: torch.Generator, *,
                 sigma: float | None = None, batch_size: int | None = None) -> torch.Tensor:
    """Noise ``eta`` of shape ``(*shape, noise_size)``: mean zero, variance ``sigma^2`` per entry
    (minibatch: variance ``(n - 1) / batch_size``), the noise of :eq:`sl-noisy-losses` of
    :doc:`/book/singular_limit`."""
    _check_kind(kind)
    sigma, batch_size = _check_noise_parameters(kind, sigma, batch_size)
    size = (*shape, noise_size(kind, network))
    dtype, device = network.inputs.dtype, network.inputs.device
    if kind == "minibatch":
        n = network.n_samples
        picks = torch.randint(n, (*shape, batch_size), generator=generator, device=device)
        counts = torch.zeros(size, dtype=dtype, device=device)
        counts.scatter_add_(-1, picks, torch.ones(picks.shape, dtype=dtype, device=device))
        return counts * (n / batch_size) - 1.0
    if kind in ("dropout", "dropconnect"):
        keep = 1.0 / (1.0 + sigma**2)
        mask = torch.rand(size, generator=generator, dtype=dtype, device=device) < keep
        return mask.to(dtype) / keep - 1.0
    return sigma * torch.randn(size, generator=generator, dtype=dtype, device=device)


def run_noisy_gd(kind: str, network: DiagonalNetwork, w0, alpha: float, n_steps: int, *,
                 sigma: float | None = None, batch_size: int | None = None, record=1,
                 observe=None, generator: torch.Generator | None = None, noise_chunk: int = 512,
                 bound: float = 1e6, check_every: int = 64) -> EnsembleResult:
    """Noisy gradient descent ``w <- w - alpha grad_w L^(w, eta_k)`` for an ensemble ``w0`` of
    shape ``(R, 2d)``, one batched update per step through :func:`learndyn.ensemble.run_ensemble`;
    the noise of ``noise_chunk`` steps is drawn at once. Replicas leaving the ball of radius
    ``bound`` are frozen (checked every ``check_every`` steps).

    Implements :eq:`sl-noisy-gd` of :doc:`/book/singular_limit`.
    """
    _check_kind(kind)
    alpha = check_positive(alpha, "alpha")
    check_count(n_steps, "n_steps", minimum=0)
    w0 = network.check_parameters(w0, "w0")
    if w0.dim() != 2:
        raise ValueError(f"w0 has shape {tuple(w0.shape)}, expected (R, {2 * network.width})")
    _check_noise_parameters(kind, sigma, batch_size)
    generator = make_generator(device=w0.device) if generator is None else generator
    replicas = w0.shape[0]

    def noise(k, gen):
        return sample_noise(kind, (k, replicas), network, gen, sigma=sigma, batch_size=batch_size)

    def step(w, eta):
        return w - alpha * _gradient(kind, w, eta, network)

    return run_ensemble(step, w0, n_steps, record=record, observe=observe, noise=noise,
                        noise_chunk=noise_chunk, bound=bound, check_every=check_every,
                        generator=generator)


def balance(w, network: DiagonalNetwork) -> torch.Tensor:
    """The balances ``q_j = u_j^2 - v_j^2`` of :eq:`sl-q-identity` of :doc:`/book/singular_limit`, shape
    ``(..., d)``."""
    u, v = network.split(network.check_parameters(w))
    return u.square() - v.square()


def product_on_manifold(q, target: float = 1.0, *, device=None, dtype=None) -> torch.Tensor:
    """The point ``(u, v)`` with ``u v = target``, ``u > 0`` and balance ``u^2 - v^2 = q`` on the
    hyperbola ``Gamma`` of the product model: ``u^2 = (q + sqrt(q^2 + 4 y^2)) / 2``, the
    coordinate of :eq:`sl-q-label` of :doc:`/book/singular_limit`."""
    q = as_tensor(q, "q", device=device, dtype=dtype)
    u = torch.sqrt(0.5 * (q + torch.sqrt(q.square() + 4.0 * target**2)))
    return torch.stack([u, target / u], dim=-1)


def _check_kind(kind: str) -> None:
    if kind not in NOISE_KINDS:
        raise ValueError(f"kind={kind!r} is not a noise type; choose from {NOISE_KINDS}")


def _check_pair(kind: str, w, eta, network: DiagonalNetwork):
    _check_kind(kind)
    w = network.check_parameters(w)
    eta = as_tensor(eta, "eta", device=w.device, dtype=w.dtype)
    check_shape(eta, (noise_size(kind, network),), "eta")
    return w, eta


def _check_noise_parameters(kind: str, sigma, batch_size):
    if kind == "minibatch":
        if sigma is not None:
            raise ValueError(f"sigma={sigma!r}: minibatch noise is set by batch_size, not sigma")
        return None, check_count(batch_size, "batch_size")
    if batch_size is not None:
        raise ValueError(f"batch_size={batch_size!r} only applies to kind='minibatch'")
    if sigma is None:
        raise ValueError(f"sigma=None: kind={kind!r} needs a noise standard deviation sigma > 0")
    return check_positive(sigma, "sigma"), None


def slow_time(kind: str, steps, alpha: float, sigma: float) -> np.ndarray:
    """``alpha^p sigma^2 k`` with the power ``p`` of ``TIME_SCALE_POWER[kind]``: the clock ``t`` of
    :eq:`sl-flow-nondegenerate` or ``tau`` of :eq:`sl-flow-label` of :doc:`/book/singular_limit`."""
    if kind not in TIME_SCALE_POWER:
        raise ValueError(f"kind={kind!r} has no slow time; choose from {tuple(TIME_SCALE_POWER)}")
    alpha, sigma = check_positive(alpha, "alpha"), check_positive(sigma, "sigma")
    return np.asarray(steps, dtype=float) * alpha ** TIME_SCALE_POWER[kind] * sigma**2





#: The kinds for which :func:`corrected_balance` has the O(alpha) correction.
CORRECTED_KINDS = ("label", "weight")


def corrected_balance(kind: str, q0: float, times, alpha: float, sigma: float, *,
                      target: float = 1.0, substeps: int = 20, device=None,
                      dtype=None) -> torch.Tensor:
    """The mean balance ``<q>`` of the product model with its terms of first order in ``alpha``.

    ``times`` are on the slow clock of ``kind`` (:func:`slow_time`); returns shape ``(len(times),)``.
    Each step multiplies ``<q>`` by ``1 - lam``, integrated with :func:`learndyn.flows.rk4` as
    ``dq/ds = q log(1 - lam) / (alpha^p sigma^2)``.

    * ``label``: implements :eq:`sl-q-label-corrected` of :doc:`/book/singular_limit`,
      ``lam = alpha^2 sigma^2 * 2 / (2 - alpha m(q))``, ``m = sqrt(q^2 + 4 y^2)``, and the start-up
      shift ``exp(alpha^2 sigma^2 / (2 - alpha m0)^2)`` of a run started on the zero-loss set.
    * ``weight``: implements :eq:`sl-q-weight-exact` of :doc:`/book/singular_limit`,
      ``lam = 2 alpha sigma^2 + alpha^2 (r^2 + sigma^2 m + 3 sigma^4)`` on the shifted set
      ``uv = y + r``, ``r = -2 sigma^2 (y + r) / m`` (solved by fixed-point iteration).
    """
    if kind not in CORRECTED_KINDS:
        raise ValueError(f"kind={kind!r} has no corrected balance flow; choose from {CORRECTED_KINDS}")
    alpha, sigma = check_positive(alpha, "alpha"), check_positive(sigma, "sigma")
    target = float(target)
    if target <= 0:
        raise ValueError(f"target={target!r} must be > 0")
    q0 = as_tensor(q0, "q0", device=device, dtype=dtype)
    if q0.dim() != 0:
        raise ValueError(f"q0 must be a scalar, got shape {tuple(q0.shape)}")
    m0 = math.sqrt(q0.item() ** 2 + 4 * target**2)
    if alpha * m0 >= 2:
        raise ValueError(f"alpha={alpha!r}: alpha * m(q0) = {alpha * m0:.3g} >= 2, the step is unstable")
    scale = alpha ** TIME_SCALE_POWER[kind] * sigma**2

    def label_rhs(_t, q):
        lam = alpha**2 * sigma**2 * 2 / (2 - alpha * torch.sqrt(q.square() + 4 * target**2))
        return q * torch.log1p(-lam) / scale

    def weight_rhs(_t, q):
        shift = torch.zeros_like(q)
        for _ in range(40):  # contraction factor 2 sigma^2 / m < 0.1 for the sigma used
            m = torch.sqrt(q.square() + 4 * (target + shift).square())
            shift = -2 * sigma**2 * (target + shift) / m
        lam = 2 * alpha * sigma**2 + alpha**2 * (shift.square() + sigma**2 * m + 3 * sigma**4)
        return q * torch.log1p(-lam) / scale

    path = rk4(label_rhs if kind == "label" else weight_rhs, q0, times, substeps=substeps)
    if kind == "label":
        start_up = alpha**2 * sigma**2 / (2 - alpha * m0) ** 2
        grid = torch.as_tensor(np.asarray(times, dtype=float), device=path.device)
        path = path * torch.where(grid > 0, math.exp(start_up), 1.0).to(path.dtype)
    return path


def isotropic_second_moment(tau: float, *, drift_factor: float = 0.5, spacing: float = 0.02,
                            half_width: float = 4.0, tau0: float = 0.01, device=None,
                            dtype=None) -> float:
    """``<l^2>(tau)`` of ``dl = c D'(l) dtau + sqrt(D(l)) dB``, ``D = 1/(2 cosh 2l)``, ``l(0) = 0``.

    Implements the Fokker-Planck equation of :eq:`sl-isotropic-sde` of :doc:`/book/singular_limit`
    (``c = drift_factor``; the SDE has ``c = 1/2``): finite volumes of width ``spacing`` on
    ``[-half_width, half_width]`` with no flux at the ends, RK4 below the stability limit, started at
    ``tau0`` from the Gaussian of variance ``D(0) tau0`` (an error ``O(tau0^2)``). The grid error is
    ``O(spacing^2)``.
    """
    tau, spacing = check_positive(tau, "tau"), check_positive(spacing, "spacing")
    half_width, tau0 = check_positive(half_width, "half_width"), check_positive(tau0, "tau0")
    if tau0 >= tau:
        raise ValueError(f"tau0={tau0!r} must be smaller than tau={tau!r}")
    if spacing > half_width / 4:
        raise ValueError(f"spacing={spacing!r} is too coarse for half_width={half_width!r}")
    dtype = resolve_dtype(dtype)
    grid = torch.arange(-half_width, half_width + spacing / 2, spacing, dtype=dtype,
                        device=resolve_device(device))
    faces = grid[:-1] + spacing / 2
    diffusion = 1 / (2 * torch.cosh(2 * grid))
    face_slope = -torch.sinh(2 * faces) / torch.cosh(2 * faces).square()  # D'(l) at the faces

    def rhs(_t, rho):
        flux = (drift_factor * face_slope * (rho[1:] + rho[:-1]) / 2
                - (diffusion[1:] * rho[1:] - diffusion[:-1] * rho[:-1]) / (2 * spacing))
        return torch.cat([-flux[:1], flux[:-1] - flux[1:], flux[-1:]]) / spacing

    rho0 = torch.exp(-grid.square() / tau0)  # variance D(0) tau0 = tau0 / 2
    substeps = math.ceil((tau - tau0) / (0.5 * spacing**2))  # RK4 limit 2.78 spacing^2 / max(D)
    rho = rk4(rhs, rho0 / rho0.sum(), [tau0, tau], substeps=substeps)[-1]
    return ((grid.square() * rho).sum() / rho.sum()).item()


def richardson(coarse, coarse_se, fine, fine_se):
    """Richardson extrapolation ``2 fine - coarse`` of :eq:`sl-richardson` of
    :doc:`/book/singular_limit`, for a quantity with a first-order term in the small parameter that
    halves from ``coarse`` to ``fine``.

    Returns ``(extrapolated, standard_error, first_order)`` with the standard error of independent
    runs, ``sqrt(4 fine_se^2 + coarse_se^2)``, and ``first_order = |coarse - fine|``, the measured
    size of the first-order term at ``fine``.
    """
    coarse, fine = np.asarray(coarse, dtype=float), np.asarray(fine, dtype=float)
    coarse_se, fine_se = np.asarray(coarse_se, dtype=float), np.asarray(fine_se, dtype=float)
    if np.any(coarse_se < 0) or np.any(fine_se < 0):
        raise ValueError("coarse_se and fine_se must be >= 0")
    return 2 * fine - coarse, np.sqrt(4 * fine_se**2 + coarse_se**2), np.abs(coarse - fine)


def observe_balance(network: DiagonalNetwork):
    """An ``observe`` callback for :func:`run_noisy_gd`: the balances ``q`` of :eq:`sl-q-identity` of
    :doc:`/book/singular_limit` and the unit products ``p_j = u_j v_j``, each of shape ``(R, d)``."""

    def observe(w):
        u, v = network.split(w)
        return {"q": u.square() - v.square(), "p": u * v}

    return observe


def unit_share(p, network: DiagonalNetwork) -> torch.Tensor:
    """The share ``p_j x_0j / f(x_0)`` of each unit in the output on the first datum, shape
    ``(..., d)``, from unit products ``p`` of shape ``(..., d)``: the split ``s`` of
    :eq:`sl-dropout-flow` and of :eq:`sl-weighted-l1` of :doc:`/book/singular_limit`. On
    rank-one data it does not change when all ``p_j`` are scaled by one factor, so it removes the
    ``O(sigma^2)`` offset of the noisy runs from ``Gamma``."""
    p = as_tensor(p, "p", device=network.inputs.device, dtype=network.inputs.dtype)
    if p.dim() < 1 or p.shape[-1] != network.width:
        raise ValueError(f"p has shape {tuple(p.shape)}, expected (..., {network.width})")
    contributions = p * network.inputs[0]
    return contributions / contributions.sum(-1, keepdim=True)


def run_on_slow_clock(kind: str, network: DiagonalNetwork, w0, alpha: float, times, *,
                      sigma: float, replicas: int, generator: torch.Generator | None = None,
                      observe=None) -> EnsembleResult:
    """:func:`run_noisy_gd` from one point ``w0`` copied to ``replicas`` replicas, recorded at the
    slow times ``times`` of ``kind`` (:func:`slow_time`; the last one ends the run).

    Implements :eq:`sl-noisy-gd` of :doc:`/book/singular_limit` on the clock of
    :eq:`sl-flow-nondegenerate` or :eq:`sl-flow-label`. ``observe`` defaults to
    :func:`observe_balance`.
    """
    w0 = network.check_parameters(w0, "w0")
    if w0.dim() != 1:
        raise ValueError(f"w0 has shape {tuple(w0.shape)}, expected ({2 * network.width},)")
    check_count(replicas, "replicas")
    scale = float(slow_time(kind, 1, alpha, sigma))
    record = np.rint(np.asarray(times, dtype=float) / scale).astype(int)
    if record.ndim != 1 or record.size < 1 or np.any(np.diff(record) < 0) or record[0] < 0:
        raise ValueError(f"times={times!r} must be an increasing list of times >= 0")
    return run_noisy_gd(kind, network, w0.expand(replicas, -1).clone(), alpha, int(record[-1]),
                        sigma=sigma, record=record, generator=generator,
                        observe=observe_balance(network) if observe is None else observe)


def _loss_gradient(w: torch.Tensor, network: DiagonalNetwork) -> torch.Tensor:
    u, v = network.split(w)
    error = (network.outputs(w) - network.targets) @ network.inputs / network.n_samples
    return torch.cat([error * v, error * u], dim=-1)


def run_anticorrelated_gd(network: DiagonalNetwork, w0, alpha: float, n_steps: int, *,
                          sigma: float, record=1, observe=None,
                          generator: torch.Generator | None = None, noise_chunk: int = 512,
                          bound: float = 1e6, check_every: int = 64) -> EnsembleResult:
    """Anti-correlated perturbed gradient descent ``theta <- theta - alpha grad L(theta) + xi_{k+1}
    - xi_k`` with i.i.d. ``xi_k ~ N(0, sigma^2 I)``, for an ensemble ``w0`` of shape ``(R, 2d)``.

    Implements :eq:`sl-anti-pgd` of :doc:`/book/singular_limit`. The run starts at
    ``theta_0 = w0 + xi_0``, so that ``z_k = theta_k - xi_k`` starts at ``w0``; ``z`` is then
    noisy gradient descent with weight perturbation from ``w0``. ``observe`` (by default the
    weights, ``{"w": theta}``) sees ``theta``, shape ``(R, 2d)``.
    """
    alpha, sigma = check_positive(alpha, "alpha"), check_positive(sigma, "sigma")
    check_count(n_steps, "n_steps", minimum=0)
    w0 = network.check_parameters(w0, "w0")
    if w0.dim() != 2:
        raise ValueError(f"w0 has shape {tuple(w0.shape)}, expected (R, {2 * network.width})")
    generator = make_generator(device=w0.device) if generator is None else generator
    xi0 = sigma * torch.randn(w0.shape, generator=generator, dtype=w0.dtype, device=w0.device)

    def noise(k, gen):
        return sigma * torch.randn((k, *w0.shape), generator=gen, dtype=w0.dtype, device=w0.device)

    def step(state, xi):
        theta, xi_old = state
        return theta - alpha * _loss_gradient(theta, network) + xi - xi_old, xi

    def observe_theta(state):
        return {"w": state[0]} if observe is None else observe(state[0])

    return run_ensemble(step, (w0 + xi0, xi0), n_steps, record=record, observe=observe_theta,
                        noise=noise, noise_chunk=noise_chunk, bound=bound,
                        check_every=check_every, generator=generator)


__all__ = [
    "CORRECTED_KINDS", "DEGENERATE_KINDS", "NOISE_KINDS", "TIME_SCALE_POWER", "DiagonalNetwork",
    "balance", "corrected_balance", "isotropic_second_moment", "limiting_drift", "limiting_flow",
    "noise_size", "noisy_gradient", "noisy_loss", "observe_balance", "product_on_manifold",
    "regularizer", "regularizer_gradient", "richardson", "run_anticorrelated_gd", "run_noisy_gd",
    "run_on_slow_clock", "sample_noise", "slow_time", "tangent_projection", "unit_share",
]
