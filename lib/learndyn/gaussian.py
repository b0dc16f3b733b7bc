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

# T(h, a) is even in h and odd in a; the kernels below take h >= 0 and 0 <= a. For |a| <= 1 the
# integral (3.21) is written as exp(-h^2/2)/(2 pi) * int_0^a exp(-h^2 x^2/2)/(1 + x^2) dx. Where
# c = h a <= OWENS_T_SWITCH the integral is smooth on the scale of [0, a] and Gauss-Legendre
# quadrature resolves it; beyond, the integrand is a narrow peak at 0 and T = Q(h)/2 - tail, with
# the tail int_a^inf by Gauss-Laguerre quadrature in s = h^2 a (x - a). The tail is then below
# 3e-7 T, so its quadrature error does not show. Every Gaussian factor exp(-x^2/2) is computed with
# x^2 split exactly (Veltkamp), so the relative error stays at a few ulp out to |h| = 38, where T
# underflows.
OWENS_T_SWITCH = 5.0
OWENS_T_NODES = 16
_SPLITTER = 134217729.0  # 2^27 + 1
_TWO_PI = 2.0 * math.pi
_QUADRATURE_CACHE: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}
_CHUNK = 1 << 15


def _quadrature(device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Squared Gauss-Legendre nodes and weights on [0, 1], Gauss-Laguerre nodes and weights; cached."""
    key = (device, dtype)
    if key not in _QUADRATURE_CACHE:
        legendre_x, legendre_w = np.polynomial.legendre.leggauss(OWENS_T_NODES)
        laguerre_x, laguerre_w = np.polynomial.laguerre.laggauss(OWENS_T_NODES)
        arrays = (((legendre_x + 1) / 2) ** 2, legendre_w / 2, laguerre_x, laguerre_w)
        _QUADRATURE_CACHE[key] = tuple(torch.as_tensor(v, device=device, dtype=dtype) for v in arrays)
    return _QUADRATURE_CACHE[key]


def _input(value, name: str, device, dtype) -> torch.Tensor:
    """A floating tensor that keeps a tensor argument's device (and autograd graph) by default."""
    if isinstance(value, torch.Tensor):
        device = value.device if device is None else device
        dtype = value.dtype if dtype is None and value.is_floating_point() else dtype
    return as_tensor(value, name, device=device, dtype=dtype, allow_nan=True)


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = hi + lo with hi of 26 significant bits, so that hi * hi is exact."""
    scaled = x * _SPLITTER
    hi = scaled - (scaled - x)
    return hi, x - hi


def _two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a * b = p + e exactly (Dekker); e is zero where the product overflows."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    e = ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo
    return p, torch.where(torch.isfinite(e), e, torch.zeros_like(e))


def _gaussian_factor(x: torch.Tensor, x_err: torch.Tensor | None = None) -> torch.Tensor:
    """exp(-(x + x_err)^2 / 2) to a few ulp for x >= 0 (x_err: the rounding error of x, if known)."""
    hi, lo = _split(x)
    rest = hi * lo + 0.5 * lo * lo
    if x_err is not None:
        rest = rest + x * x_err
    return torch.exp(-0.5 * hi * hi) * torch.exp(-rest)


def _upper_tail(x: torch.Tensor, x_err: torch.Tensor | None = None) -> torch.Tensor:
    """Q(x) = 1 - Phi(x) for x >= 0, with full relative precision in the tail."""
    return 0.5 * torch.special.erfcx(x / SQRT2) * _gaussian_factor(x, x_err)


def _owens_t_unit(h: torch.Tensor, a: torch.Tensor, h_err: torch.Tensor | None = None) -> torch.Tensor:
    """T(h, a) for h >= 0 and 0 <= a <= 1 (h_err: the rounding error of h, when h is a product)."""
    legendre_t2, legendre_w, laguerre_s, laguerre_w = _quadrature(h.device, h.dtype)
    c = h * a
    out = torch.empty_like(h)
    near = c <= OWENS_T_SWITCH
    far = ~near
    h_near, a_near, c_near = h[near], a[near], c[near]
    q = torch.addcmul(torch.ones((), device=h.device, dtype=h.dtype), (a_near * a_near)[:, None],
                      legendre_t2)
    integral = (torch.exp((-0.5 * c_near * c_near)[:, None] * legendre_t2) / q) @ legendre_w
    err_near = None if h_err is None else h_err[near]
    out[near] = _gaussian_factor(h_near, err_near) * integral * a_near / _TWO_PI
    h_far, a_far, c_far = h[far], a[far], c[far]
    err_far = None if h_err is None else h_err[far]
    rate = h_far * c_far  # h^2 a
    x = a_far[:, None] + laguerre_s / rate[:, None]
    tail = (torch.exp(-0.5 * (laguerre_s / c_far[:, None]) ** 2) / (1.0 + x * x)) @ laguerre_w
    tail = _gaussian_factor(h_far, err_far) * torch.exp(-0.5 * c_far * c_far) * tail / (rate * _TWO_PI)
    out[far] = 0.5 * _upper_tail(h_far, err_far) - tail
    return out


def _owens_t_kernel(h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    nan = torch.isnan(h) | torch.isnan(a)
    # |x| as x * sign with sign(0) = 1, so that autograd sees dT/da at a = 0
    sign = torch.where(a < 0, -1.0, 1.0).to(a.dtype)
    h_sign = torch.where(h < 0, -1.0, 1.0).to(h.dtype)
    h = torch.where(nan, torch.zeros_like(h), (h * h_sign).clamp(max=50.0))  # T(h >= 39, a) = 0
    a = torch.where(nan, torch.zeros_like(a), a * sign)
    out = torch.empty_like(h)
    unit = a <= 1.0
    out[unit] = _owens_t_unit(h[unit], a[unit])
    # a > 1: T(h, a) = Q(h)/2 + Q(ah)/2 - Q(h) Q(ah) - T(ah, 1/a); no term is much larger than T
    wide = ~unit
    h_wide, a_wide = h[wide], a[wide]
    infinite = torch.isinf(a_wide)
    a_finite = torch.where(infinite, torch.ones_like(a_wide), a_wide)
    ah, ah_err = _two_product(h_wide, a_finite)
    capped = ah > 50.0
    ah = torch.where(capped, torch.full_like(ah, 50.0), ah)
    ah_err = torch.where(capped, torch.zeros_like(ah_err), ah_err)
    q_h, q_ah = _upper_tail(h_wide), _upper_tail(ah, ah_err)
    t_wide = 0.5 * q_h + 0.5 * q_ah - q_h * q_ah - _owens_t_unit(ah, 1.0 / a_finite, ah_err)
    out[wide] = torch.where(infinite, 0.5 * q_h, t_wide)
    return torch.where(nan, torch.full_like(out, math.nan), out * sign)


def owens_t(h, a, *, device=None, dtype=None) -> torch.Tensor:
    """Owen's T function T(h, a) = 1/(2 pi) int_0^a exp(-h^2 (1 + x^2)/2) / (1 + x^2) dx (Eq. 3.21).

    Vectorized over broadcast ``h`` and ``a`` (any real values: negative, zero and infinite ``a``,
    large ``|h|``; NaN in gives NaN out), in the dtype and on the device of a tensor input (float64
    by default), differentiable by autograd. Relative error below 1e-13 wherever ``|T| > 1e-300``
    against a 40-digit mpmath evaluation (``tests/test_gaussian.py``): 16-node Gauss-Legendre
    quadrature of (3.21) where ``|a h| <= 5``, ``Q(h)/2`` minus a Gauss-Laguerre tail beyond, and
    Owen's identity ``T(h, a) + T(a h, 1/a) = [Q(h) + Q(a h)]/2 - Q(h) Q(a h)`` (``h, a >= 0``)
    for ``|a| > 1``.
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


__all__ = [
    "normal_cdf", "normal_pdf", "erf_sigmoid", "expected_cdf", "expected_pdf",
    "expected_cdf_times_input", "owens_t", "expected_cdf_squared", "expected_cdf_pdf",
    "expected_cdf_squared_times_input"
]
