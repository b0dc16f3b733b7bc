"""Gaussian expectations used by the flow equations.

For a standard normal ``U`` and ``s = sqrt(1 + b^2)``,

    E[Phi(a + b U)]   = Phi(a / s),                                   (3.33)
    E[phi(a + b U)]   = phi(a / s) / s,                               (3.34)

and for ``x ~ N(mu, Sigma)`` with ``a = v . mu`` and ``b^2 = v^T Sigma v`` Stein's lemma gives

    E[Phi(v . x)]     = Phi(a / s),
    E[Phi(v . x) x]   = mu Phi(a / s) + Sigma v phi(a / s) / s.       (3.15)

``Phi`` is the standard normal CDF and ``phi`` its density. Equation numbers refer to the chapters.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .backend import as_tensor

SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
ERF_SIGMOID_SCALE = math.sqrt(math.pi / 8.0)


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2, accurate in both tails (through erfc)."""
    return 0.5 * torch.special.erfc(-z / SQRT2)


def normal_pdf(z: torch.Tensor) -> torch.Tensor:
    """phi(z) = exp(-z^2 / 2) / sqrt(2 pi)."""
    return INV_SQRT_2PI * torch.exp(-0.5 * z * z)


def erf_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """The perceptron's sigmoid (1 + erf(sqrt(pi) z / 4)) / 2 = Phi(sqrt(pi/8) z).

    It has the slope 1/4 of the logistic sigmoid at the origin, and Gaussian averages in closed
    form.
    """
    return normal_cdf(ERF_SIGMOID_SCALE * z)


def expected_cdf(a: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """E[Phi(a + b U)] for U ~ N(0, 1), given ``a`` and the variance ``b2 = b^2``."""
    return normal_cdf(a / torch.sqrt(1.0 + b2))


def expected_pdf(a: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """E[phi(a + b U)] for U ~ N(0, 1), given ``a`` and the variance ``b2 = b^2``."""
    s = torch.sqrt(1.0 + b2)
    return normal_pdf(a / s) / s


def expected_cdf_times_input(v: torch.Tensor, mean: torch.Tensor,
                             cov: torch.Tensor) -> torch.Tensor:
    """E[Phi(v . x) x] for x ~ N(mean, cov) (Eq. 3.38), batched over the leading axes of ``v``
    (shape (..., n))."""
    a = v @ mean
    cov_v = v @ cov
    b2 = (cov_v * v).sum(-1)
    return (expected_cdf(a, b2)[..., None] * mean
            + expected_pdf(a, b2)[..., None] * cov_v)


# --- Owen's T function and the squared-CDF expectations (chapter 3) -------------------------------

OWENS_T_NODES = 16
_LEGENDRE_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, torch.Tensor]] = {}
_CHUNK = 1 << 15


def _legendre(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Squared Gauss-Legendre nodes and the weights on [0, 1] (``OWENS_T_NODES``), cached."""
    key = (device, dtype)
    if key not in _LEGENDRE_CACHE:
        nodes, weights = np.polynomial.legendre.leggauss(OWENS_T_NODES)
        _LEGENDRE_CACHE[key] = (torch.as_tensor(((nodes + 1) / 2) ** 2, device=device, dtype=dtype),
                                torch.as_tensor(weights / 2, device=device, dtype=dtype))
    return _LEGENDRE_CACHE[key]


def _input(value, name: str, device, dtype) -> torch.Tensor:
    """A floating tensor that keeps a tensor argument's device (and autograd graph) by default."""
    if isinstance(value, torch.Tensor):
        device = value.device if device is None else device
    return as_tensor(value, name, device=device, dtype=dtype, allow_nan=True)


def _owens_t_quadrature(h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """T(h, a) for |a| <= 1 by Gauss-Legendre quadrature of (3.21) on x = a t, t in [0, 1].

    The integrand exp(-h^2 (1 + x^2) / 2) / (1 + x^2) is entire apart from poles at x = +-i, at
    distance >= 1 from the path, and carries the factor exp(-h^2 / 2), so 16 nodes give an
    absolute error of order 1e-17 for every h.
    """
    nodes2, weights = _legendre(h.device, h.dtype)
    q = torch.addcmul(torch.ones((), device=h.device, dtype=h.dtype), (a * a)[..., None], nodes2)
    values = torch.exp(q * (-0.5 * h * h)[..., None]) / q
    return (values @ weights) * a / (2.0 * math.pi)


def _owens_t_kernel(h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    abs_a = a.abs()
    small = abs_a <= 1.0
    infinite = torch.isinf(a)
    # |a| > 1 (finite): T(h, a) = Q(h)/2 + Q(ah)/2 - Q(h) Q(ah) - T(ah, 1/a) for h >= 0, a > 0,
    # written with the upper tails Q so that nothing cancels when h is large. One quadrature
    # serves both branches: T(h, a) where |a| <= 1, T(|a| h, 1/|a|) elsewhere.
    a_big = torch.where(small | infinite, torch.full_like(a, 2.0), abs_a)
    h_abs = h.abs()
    ah = a_big * h_abs
    quadrature = _owens_t_quadrature(torch.where(small, h, ah),
                                     torch.where(small, a, 1.0 / a_big))
    q_h, q_ah = normal_cdf(-h_abs), normal_cdf(-ah)
    t_big = 0.5 * q_h + 0.5 * q_ah - q_h * q_ah - quadrature
    t_big = torch.where(infinite, 0.5 * q_h, t_big) * torch.sign(a)
    result = torch.where(small, quadrature, t_big)
    return torch.where(torch.isnan(h) | torch.isnan(a), torch.full_like(result, math.nan), result)


def owens_t(h, a, *, device=None, dtype=None) -> torch.Tensor:
    """Owen's T function T(h, a) = 1/(2 pi) int_0^a exp(-h^2 (1 + x^2)/2) / (1 + x^2) dx (Eq. 3.21).

    Vectorized over broadcast ``h`` and ``a`` (any real values: negative, zero and infinite ``a``,
    large ``|h|``; NaN in gives NaN out), float64 by default, on CPU or CUDA, differentiable by
    autograd (``dT/da = exp(-h^2 (1 + a^2)/2) / (2 pi (1 + a^2))``,
    ``dT/dh = -phi(h) (Phi(a h) - 1/2)``). For ``|a| <= 1`` it integrates (3.21) by 16-node
    Gauss-Legendre quadrature; for ``|a| > 1`` it uses Owen's identity
    ``T(h, a) + T(a h, 1/a) = [Phi(h) + Phi(a h)]/2 - Phi(h) Phi(a h)`` (``h >= 0``, ``a > 0``,
    in upper-tail form), and ``T(h, +-inf) = +-(1 - Phi(|h|))/2``. Absolute error below 1e-16 on
    the chapter's test grid (chapter 3, check 1).
    """
    h = _input(h, "h", device, dtype)
    a = _input(a, "a", h.device, h.dtype)
    h, a = torch.broadcast_tensors(h, a)
    if h.requires_grad or a.requires_grad or h.numel() <= _CHUNK:
        return _owens_t_kernel(h, a)
    flat_h, flat_a = h.reshape(-1), a.reshape(-1)
    out = torch.empty_like(flat_h)
    for start in range(0, flat_h.numel(), _CHUNK):
        piece = slice(start, start + _CHUNK)
        out[piece] = _owens_t_kernel(flat_h[piece], flat_a[piece])
    return out.reshape(h.shape)


def expected_cdf_squared(a: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """E[Phi(a + b U)^2] = Phi(a/s) - 2 T(a/s, 1/sqrt(1 + 2 b^2)), s = sqrt(1 + b^2) (Eq. 3.39)."""
    s = torch.sqrt(1.0 + b2)
    return normal_cdf(a / s) - 2.0 * owens_t(a / s, torch.rsqrt(1.0 + 2.0 * b2))


def expected_cdf_pdf(a: torch.Tensor, b2: torch.Tensor) -> torch.Tensor:
    """E[Phi(a + b U) phi(a + b U)] = phi(a/s)/s Phi(a / (s sqrt(1 + 2 b^2))) (half of Eq. 3.40's
    Stein term), s = sqrt(1 + b^2)."""
    s = torch.sqrt(1.0 + b2)
    return normal_pdf(a / s) / s * normal_cdf(a / (s * torch.sqrt(1.0 + 2.0 * b2)))


def expected_cdf_squared_times_input(v: torch.Tensor, mean: torch.Tensor,
                                     cov: torch.Tensor) -> torch.Tensor:
    """E[Phi(v . x)^2 x] = mean E[Phi^2] + 2 cov v E[Phi phi] for x ~ N(mean, cov) (Eq. 3.40),
    batched over the leading axes of ``v`` (shape (..., n))."""
    a = v @ mean
    cov_v = v @ cov
    b2 = (cov_v * v).sum(-1)
    return (expected_cdf_squared(a, b2)[..., None] * mean
            + 2.0 * expected_cdf_pdf(a, b2)[..., None] * cov_v)
