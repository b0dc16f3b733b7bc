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

import functools
import math
from fractions import Fraction

import numpy as np
import torch

from .backend import as_tensor

SQRT2 = math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
ERF_SIGMOID_SCALE = math.sqrt(math.pi / 8.0)
_MINUS_INV_SQRT2 = -1.0 / SQRT2
_ERF_SIGMOID_ARGUMENT = -math.sqrt(math.pi) / 4.0  # -ERF_SIGMOID_SCALE / sqrt 2: one multiply


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    """Phi(z) = (1 + erf(z / sqrt 2)) / 2, accurate in both tails (through erfc)."""
    return 0.5 * torch.special.erfc(z * _MINUS_INV_SQRT2)


def normal_pdf(z: torch.Tensor) -> torch.Tensor:
    """phi(z) = exp(-z^2 / 2) / sqrt(2 pi)."""
    return INV_SQRT_2PI * torch.exp(-0.5 * z * z)


def erf_sigmoid(z: torch.Tensor) -> torch.Tensor:
    """The perceptron's sigmoid (1 + erf(sqrt(pi) z / 4)) / 2 = Phi(sqrt(pi/8) z).

    It has the slope 1/4 of the logistic sigmoid at the origin, and Gaussian averages in closed
    form.
    """
    return 0.5 * torch.special.erfc(z * _ERF_SIGMOID_ARGUMENT)


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

# T(h, a) (3.21) is even in h and odd in a. For a > 1 Owen's identity
#     T(h, a) = [Q(h) + Q(a h)]/2 - Q(h) Q(a h) - T(a h, 1/a)                     (h, a >= 0)
# leaves 0 <= a <= 1, where Patefield and Tandy (2000, J. Stat. Softw. 5(5)) choose one of six
# short series or quadratures by the region of (h, a) and its number of terms:
#   T1  the series in a^2 whose coefficients are partial sums of exp(-h^2/2)   (small h),
#   T2  the asymptotic series in 1/h^2 of int_0^a exp(-h^2 x^2/2)/(1 + x^2)    (large h, small a),
#   T3  T2 with 1/(1 + x^2) replaced by its degree-40 Chebyshev series on [-1, 1] (large h, a ~ 1),
#   T4  the series in h^2 of the integrand at fixed a h                         (moderate h, small a),
#   T5  13-point Gauss-Legendre quadrature of (3.21) in x^2                     (moderate h, a ~ 1),
#   T6  T(h, 1) minus the small remainder, for 1 - a < 1e-5.
# Two changes make the error relative rather than absolute where T is tiny (|h| up to 38): every
# factor exp(-h^2/2) is computed with h^2 split exactly (Veltkamp), and a h from the identity
# carries its rounding error, which the Gaussian factors and Q(a h) see; Q(x) is erfc at a rounded
# argument, corrected for the exact rounding error of x / sqrt 2.
_H_EDGES = (0.02, 0.06, 0.09, 0.125, 0.26, 0.4, 0.6, 1.6, 1.7, 2.33, 2.4, 3.36, 3.4, 4.8)
_A_EDGES = (0.025, 0.09, 0.15, 0.36, 0.5, 0.9, 0.99999)
# the region code by a-band (rows) and h-band (columns); codes 0-7: T1, 8-10: T2, 11: T3,
# 12-15: T4, 16: T5, 17: T6 (Patefield and Tandy's table, counted from 0)
_REGION_CODE = (
    (0, 0, 1, 12, 12, 12, 12, 12, 12, 12, 12, 15, 15, 15, 8),
    (0, 1, 1, 2, 2, 4, 4, 13, 13, 14, 14, 15, 15, 15, 8),
    (1, 1, 2, 2, 2, 4, 4, 14, 14, 14, 14, 15, 15, 15, 9),
    (1, 1, 2, 4, 4, 4, 4, 6, 6, 15, 15, 15, 15, 15, 9),
    (1, 2, 2, 4, 4, 5, 5, 7, 7, 16, 16, 16, 11, 11, 10),
    (1, 2, 4, 4, 4, 5, 5, 7, 7, 16, 16, 16, 11, 11, 11),
    (1, 2, 3, 3, 5, 5, 7, 7, 16, 16, 16, 16, 16, 11, 11),
    (1, 2, 3, 3, 5, 5, 17, 17, 17, 17, 16, 16, 16, 11, 11),
)
_N_CODES = 18
# the number of terms of each of a method's codes
_T1_TERMS = (2, 3, 4, 5, 7, 10, 12, 18)
_T2_TERMS = (11, 21, 31)
_T4_TERMS = (5, 8, 9, 21)
# 1/(1 + x^2) = sum_i c_i x^(2i) + O(2e-16) on [-1, 1]: the Chebyshev series of degree 40,
# sqrt(2) [1/2 + sum_k (-r^2)^k T_2k(x)] with r = sqrt(2) - 1, in powers of x (mpmath, 60 digits;
# tests/test_gaussian.py recomputes them)
_T3_COEFFICIENTS = (
    0.9999999999999999, -0.9999999999998712, 0.9999999999806775, -0.9999999988450815,
    0.9999999633161871, -0.9999992837405873, 0.999990618359808, -0.9999126742321399,
    0.9993985087856115, -0.9968420254979729, 0.9870742882121949, -0.9580152235445387,
    0.8901514870167915, -0.7652926510930796, 0.5844844294707177, -0.3796288563690813,
    0.2002302340823029, -0.08130135801822204, 0.023635088328283684, -0.00435243582153753,
    0.0003798896095377731,
)
_T5_NODES = 13  # Gauss-Legendre on [-1, 1] with 26 nodes; the integrand is even
_H_BINS = int(200 * _H_EDGES[-1]) + 2  # h bins ((k-1)/200, k/200], the last one h > 4.8
_A_BINS = 202  # a bins ((k-1)/200, k/200] for k <= 200, then a > 0.99999
_H_CAP = 50.0  # T(h, a) = 0 in float64 beyond |h| = 38.6
_INV_2PI = 1.0 / (2.0 * math.pi)
_SPLITTERS = {torch.float64: 134217729.0, torch.float32: 4097.0}  # 2^27 + 1, 2^12 + 1


def _root_half(dtype: torch.dtype) -> tuple[float, tuple[float, float], float]:
    """1/sqrt 2 = c + c_lo in ``dtype``, and c split into halves (for exact products)."""
    real = {torch.float64: np.float64, torch.float32: np.float32}[dtype]
    c = real(1.0) / np.sqrt(real(2.0))
    scaled = c * real(_SPLITTERS[dtype])
    c_hi = scaled - (scaled - c)
    # 1/sqrt 2 - c = (1/2 - c^2) / (2 c) to first order (the next term is c_lo^2 / c ~ 1e-34)
    c_lo = float((Fraction(1, 2) - Fraction(float(c)) ** 2) / (2 * Fraction(float(c))))
    return float(c), (float(c_hi), float(c - c_hi)), c_lo


_ROOT_HALF = {dtype: _root_half(dtype) for dtype in _SPLITTERS}
_TABLE_CACHE: dict[torch.device, tuple] = {}


def _tables(device: torch.device) -> tuple:
    """The region code of every (h-bin, a-bin) as a flat uint8 look-up table, with
    bins of width 0.005 (every h edge and all a edges but the last lie on that grid), and the T5
    nodes (squared) and weights; cached per device."""
    if device not in _TABLE_CACHE:
        h_band = np.searchsorted(_H_EDGES, np.arange(_H_BINS) / 200)
        a_band = np.append(np.searchsorted(_A_EDGES[:-1], np.arange(_A_BINS - 1) / 200), 7)
        codes = np.array(_REGION_CODE)[a_band[:, None], h_band[None, :]]
        keys = codes.astype(np.uint8)
        nodes, weights = np.polynomial.legendre.leggauss(2 * _T5_NODES)
        nodes, weights = nodes[_T5_NODES:], weights[_T5_NODES:]
        _TABLE_CACHE[device] = (torch.as_tensor(keys.ravel(), device=device),
                             (nodes**2).tolist(), (weights * _INV_2PI).tolist())
    return _TABLE_CACHE[device]


def _input(value, name: str, device, dtype) -> torch.Tensor:
    """A floating tensor that keeps a tensor argument's device (and autograd graph) by default."""
    if isinstance(value, torch.Tensor):
        device = value.device if device is None else device
        dtype = value.dtype if dtype is None and value.is_floating_point() else dtype
    return as_tensor(value, name, device=device, dtype=dtype, allow_nan=True)


def _split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x = hi + lo with hi of half the significant bits, so that hi * hi is exact."""
    scaled = x * _SPLITTERS[x.dtype]
    hi = scaled - (scaled - x)
    return hi, x - hi


def _two_product(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """a * b = p + e exactly (Dekker); e is not finite where a b or the splitting overflows."""
    p = a * b
    a_hi, a_lo = _split(a)
    b_hi, b_lo = _split(b)
    return p, ((a_hi * b_hi - p) + a_hi * b_lo + a_lo * b_hi) + a_lo * b_lo


def _gaussian_factor(x: torch.Tensor, x_err: torch.Tensor | None = None) -> torch.Tensor:
    """exp(-(x + x_err)^2 / 2) to a few ulp for x >= 0 (x_err: the rounding error of x, if known)."""
    hi, lo = _split(x)
    rest = hi * lo + 0.5 * lo * lo
    if x_err is not None:
        rest = rest + x * x_err
    return torch.exp(-0.5 * hi * hi) * torch.exp(-rest)


def _upper_tail(x: torch.Tensor, x_err: torch.Tensor | None = None) -> torch.Tensor:
    """Q(x) = erfc(x / sqrt 2) / 2 for x >= 0 with full relative precision in the tail: erfc is
    evaluated at y = fl(x c), c = fl(1/sqrt 2), and corrected to first order for the exact rest
    d = (x + x_err)/sqrt 2 - y, with d ln erfc(y)/dy = -2y (Q(x) ~ exp(-x^2/2) amplifies d by
    x^2/2 ~ 700 at x = 38; the correction's own error is below 1e-16 relative)."""
    c_hi, c_split, c_lo = _ROOT_HALF[x.dtype]
    y = x * c_hi
    x_hi, x_lo = _split(x)
    rest = ((x_hi * c_split[0] - y) + x_hi * c_split[1] + x_lo * c_split[0]) + x_lo * c_split[1]
    rest = rest + (x * c_lo if x_err is None else x * c_lo + x_err * c_hi)
    return 0.5 * torch.special.erfc(y) * (1.0 - 2.0 * y * rest)


def _finish(counts: list[int], n_terms: tuple[int, ...]) -> dict[int, int]:
    """How many of the points (sorted by region code) are complete after each number of terms."""
    finish: dict[int, int] = {}
    for count, m in zip(counts, n_terms, strict=True):
        finish[m] = finish.get(m, 0) + count
    return finish


def _retire(total: torch.Tensor, state: dict, count: int, done: list):
    """Move the first ``count`` points, whose series is complete, from ``total`` to ``done``
    (times ``state["scale"]`` if there is one) and drop them from the state."""
    if count:
        head = total[:count]
        done.append(head * state["scale"][:count] if "scale" in state else head)
        total = total[count:]
        state = {key: value[count:] for key, value in state.items()}
    return total, state


def _t1(h, a, counts):
    """T1: [atan a + sum_(j>=1) (-1)^j P_j a^(2j-1)/(2j-1)] / (2 pi) with the regularized incomplete
    gamma P_j = 1 - exp(-x) sum_(i<j) x^i/i!, x = h^2/2, P_1 = -expm1(-x) (small h)."""
    x = 0.5 * h * h
    u = torch.exp(-x)  # exp(-x) x^j, so that P_(j+1) = P_j - u_j / j!
    state = {"aj": a * _INV_2PI, "pj": -torch.special.expm1(-x), "u": u * x, "x": x, "b": a * a}
    done, finish = [], _finish(counts, _T1_TERMS)
    total = torch.atan(a) * _INV_2PI
    factorial = 1.0
    for j in range(1, _T1_TERMS[-1] + 1):
        total = torch.addcmul(total, state["pj"], state["aj"], value=(-1) ** j / (2 * j - 1))
        total, state = _retire(total, state, finish.get(j, 0), done)
        if total.numel() == 0:
            break
        factorial *= j
        state["aj"] = state["aj"] * state["b"]
        state["pj"] = torch.add(state["pj"], state["u"], alpha=-1.0 / factorial)
        state["u"] = state["u"] * state["x"]
    return done


def _moment_state(h, a, ah, h_err) -> dict:
    """The moments z_i = int_0^a x^(2i) phi(h x) dx obey z_0 = [Phi(a h) - 1/2] / h and
    z_(i+1) = (2i+1) z_i / h^2 + w_i with w_i = -a^(2i+1) phi(a h) / h^2; the state holds z_0, w_0,
    1/h^2, a^2 and phi(h)."""
    y = 1.0 / (h * h)
    return {"z": torch.special.erf(ah * (1.0 / SQRT2)) * 0.5 / h,
            "w": (a * (-INV_SQRT_2PI)) * torch.exp(-0.5 * ah * ah) * y, "y": y, "as": a * a,
            "scale": _gaussian_factor(h, h_err) * INV_SQRT_2PI}


def _t2(h, a, ah, h_err, counts):
    """T2: phi(h) sum_i (-1)^i z_i, 1/(1 + x^2) expanded in powers of x^2 (large h, small a)."""
    state = _moment_state(h, a, ah, h_err)
    done, finish = [], _finish(counts, _T2_TERMS)
    total = state["z"]
    for k in range(1, _T2_TERMS[-1] + 1):
        total, state = _retire(total, state, finish.get(k, 0), done)
        if total.numel() == 0:
            break
        state["z"] = torch.addcmul(state["w"], state["y"], state["z"], value=2 * k - 1)
        state["w"] = state["w"] * state["as"]
        total = torch.add(total, state["z"], alpha=(-1) ** k)
    return done


def _t3(h, a, ah, h_err):
    """T3: phi(h) sum_i c_i z_i with the Chebyshev series of 1/(1 + x^2) (large h, a near 1)."""
    state = _moment_state(h, a, ah, h_err)
    z, w, y, as_ = state["z"], state["w"], state["y"], state["as"]
    total = z * _T3_COEFFICIENTS[0]
    for i, coefficient in enumerate(_T3_COEFFICIENTS[1:]):
        z = torch.addcmul(w, y, z, value=2 * i + 1)
        w = w * as_
        total = torch.add(total, z, alpha=coefficient)
    return [total * state["scale"]]


def _t4(h, a, counts):
    """T4: a exp(-h^2 (1 + a^2)/2) / (2 pi) sum_i (-a^2)^i y_i with y_0 = 1 and
    y_i = (1 - h^2 y_(i-1)) / (2i + 1) (moderate h, small a); Y_i = (2i+1)!! y_i obeys
    Y_i = (2i-1)!! - h^2 Y_(i-1)."""
    hs = h * h
    ai = a * _INV_2PI * torch.exp(-0.5 * hs * (1.0 + a * a))
    state = {"ai": ai, "yi": torch.ones_like(h), "hs": hs, "as": -(a * a)}
    done, finish = [], _finish(counts, _T4_TERMS)
    total, double_factorial = ai, 1.0
    for k in range(1, _T4_TERMS[-1] + 1):
        total, state = _retire(total, state, finish.get(k, 0), done)
        if total.numel() == 0:
            break
        state["yi"] = torch.addcmul(state["hs"].new_tensor(double_factorial), state["hs"], state["yi"],
                                    value=-1.0)
        double_factorial *= 2 * k + 1
        state["ai"] = state["ai"] * state["as"]
        total = torch.addcmul(total, state["ai"], state["yi"], value=1.0 / double_factorial)
    return done


def _t5(h, a, nodes, weights):
    """T5: a sum_i w_i exp(-h^2 (1 + a^2 x_i^2)/2) / (1 + a^2 x_i^2), Gauss-Legendre in x
    (``nodes``: the x_i^2, ``weights``: w_i / (2 pi), as Python floats)."""
    hs, b = -0.5 * h * h, a * a
    one = torch.ones((), device=h.device, dtype=h.dtype)
    total = None
    for node, weight in zip(nodes, weights, strict=True):
        r = torch.add(one, b, alpha=node)
        e = torch.exp(hs * r)
        total = e / r * weight if total is None else torch.addcdiv(total, e, r, value=weight)
    return [total * a]


def _t6(h, a):
    """T6: T(h, 1) - r exp(-(1 - a) h^2 / (2 r)) / (2 pi), r = atan((1 - a)/(1 + a)) (1 - a < 1e-5)."""
    q = 0.5 * torch.special.erfc(h * (1.0 / SQRT2))
    y = 1.0 - a
    r = torch.atan2(y, 1.0 + a)
    safe_r = torch.where(r > 0, r, torch.ones_like(r))
    remainder = torch.where(r > 0, r * torch.exp(-0.5 * y * h * h / safe_r), torch.zeros_like(r))
    return [0.5 * q * (1.0 - q) - remainder * _INV_2PI]


def _plain_upper_tail(x: torch.Tensor) -> torch.Tensor:
    """Q(x) = erfc(x / sqrt 2) / 2, with relative error x^2 eps from rounding x / sqrt 2 (x <= 5)."""
    return 0.5 * torch.special.erfc(x * (1.0 / SQRT2))


_METHOD_CODES = ((0, 8), (8, 11), (11, 12), (12, 16), (16, 17), (17, 18))  # T1 ... T6
_MASKED_MAX = 1 << 14  # up to this many points: no host synchronization at all
_PIECE = 1 << 15  # points per run of a series (its dozen state arrays stay in a core's cache)


def _method(method: int, h, a, ah, err, group: list[int], tables) -> torch.Tensor:
    """T(h, a) by method T1..T6 on points sorted by region code (``group``: points per code)."""
    if method == 1:
        values = _t1(h, a, group)
    elif method == 2:
        values = _t2(h, a, ah, err, group)
    elif method == 3:
        values = _t3(h, a, ah, err)
    elif method == 4:
        values = _t4(h, a, group)
    elif method == 5:
        values = _t5(h, a, tables[1], tables[2])
    else:
        values = _t6(h, a)
    return torch.cat(values) if len(values) > 1 else values[0]


def _identity(h0, ah, ah_err, unit, exact: bool) -> torch.Tensor:
    """T(h0, a0) = [Q(h0) + Q(a0 h0)]/2 - Q(h0) Q(a0 h0) - T(a0 h0, 1/a0) (h0 <= a0 h0 = ah + err)
    from ``unit`` = T(a0 h0, 1/a0); ``exact`` Q where a0 h0 may exceed 5."""
    if exact:
        q_h, q_ah = _upper_tail(h0), _upper_tail(ah, ah_err)
    else:
        q_h, q_ah = _plain_upper_tail(h0), _plain_upper_tail(ah)
    return 0.5 * q_h + 0.5 * q_ah - q_h * q_ah - unit


def _product_error(h0, a0, ah) -> torch.Tensor:
    """The rounding error of fl(a0 h0), zero where a0 is infinite or ``ah`` was capped."""
    infinite = torch.isinf(a0)
    _, err = _two_product(h0, torch.where(infinite, torch.ones_like(a0), a0))
    return torch.where(torch.isfinite(err) & ~infinite & (ah < _H_CAP), err, torch.zeros_like(err))


def _owens_t_unit(h, a, counts, tables, original=None) -> list[torch.Tensor]:
    """T(h, a) for 0 <= a <= 1, h >= 0, the points sorted by region code (``counts``: points per
    code). With ``original = (h0, a0)`` (a0 > 1, h = fl(a0 h0) capped, a = 1/a0) it returns
    T(h0, a0) by Owen's identity instead; T2 and T3 (h > 3.36) then use a0 h0 = h + e exactly."""
    pieces, start = [], 0
    for (first, last), method in zip(_METHOD_CODES, range(1, 7), strict=True):
        for group in _pieces(counts[first:last]):
            part = slice(start, start + sum(group))
            start = part.stop
            pieces.append(_unit_piece(method, h[part], a[part], group, tables, original, part))
    return pieces


def _pieces(group: list[int]) -> list[list[int]]:
    """Split a method's points (``group``: points per code, in order) into runs of at most
    ``_PIECE`` points, each with its own counts per code, so that a run's series stays in cache."""
    runs, run, room = [], [0] * len(group), _PIECE
    for code, count in enumerate(group):
        while count:
            take = min(count, room)
            run[code] += take
            count -= take
            room -= take
            if not room:
                runs.append(run)
                run, room = [0] * len(group), _PIECE
    if room < _PIECE:
        runs.append(run)
    return runs


def _unit_piece(method, h_part, a_part, group, tables, original, part) -> torch.Tensor:
    """One run of :func:`_owens_t_unit`: the points ``part`` of the sorted arrays."""
    if original is None:
        return _method(method, h_part, a_part, h_part * a_part, None, group, tables)
    exact = method in (2, 3)
    h0, a0 = original[0][part], original[1][part]
    err = _product_error(h0, a0, h_part) if exact else None
    unit = _method(method, h_part, a_part, h0, err, group, tables)
    return _identity(h0, h_part, err, unit, exact)


def _owens_t_masked(h, a, key, tables) -> torch.Tensor:
    """Owen's T of flat |h| and |a| (signs already removed) with no host synchronization, for
    small inputs where the cost is per operation: every point is evaluated by both of the two
    methods that cover all regions, T3 (Chebyshev, uniform on 0 <= a <= 1, stable for h > 3.36: it
    takes T2's and T3's regions) and T5 (Gauss-Legendre, accurate for every a <= 1 at h <= 4.8: it
    takes the others), with the points outside a method's region moved inside it."""
    wide = key >= _N_CODES
    code = key - wide.to(key.dtype) * _N_CODES
    one = torch.ones_like(a)
    ah = torch.where(torch.isinf(a), torch.full_like(h, _H_CAP), h * a).clamp(max=_H_CAP)
    unit_h = torch.where(wide, ah, h)
    unit_a = torch.where(wide, 1.0 / torch.where(wide, a, one), a)
    unit_ah = torch.where(wide, h, ah)
    err = torch.where(wide, _product_error(h, torch.where(wide, a, one), ah), torch.zeros_like(h))
    large = (code >= _METHOD_CODES[1][0]) & (code < _METHOD_CODES[2][1])
    t3 = _t3(torch.where(large, unit_h, 6.0), torch.where(large, unit_a, 0.5),
             torch.where(large, unit_ah, 3.0), torch.where(large, err, 0.0))[0]
    t5 = _t5(torch.where(large, 1.0, unit_h), torch.where(large, 0.5, unit_a), tables[1], tables[2])[0]
    total = torch.where(large, t3, t5)
    return torch.where(wide, _identity(h, unit_h, err, total, True), total)


def _region_keys(h, a, table) -> torch.Tensor:
    """The sort key of each (h, a): Patefield and Tandy's region code of the point that T is
    evaluated at (|h|, |a|) or, for |a| > 1, (|a h|, 1/|a|), plus 18 for the latter (NaN lands in
    some region and stays NaN)."""
    wide = (a > 1.0) | (a < -1.0)  # exactly; the bins below may be rounded (float32 halves traffic)
    abs_a = a.to(torch.float32).abs()  # not abs_: to() returns float32 input itself
    h_bin = abs_a.clamp(min=1.0).mul_(h.to(torch.float32).abs()).mul_(200.0).ceil_()
    h_bin.clamp_(max=_H_BINS - 1)
    abs_a = torch.minimum(abs_a, abs_a.reciprocal())
    edge = abs_a > _A_EDGES[-1]
    h_bin.add_(abs_a.mul_(200.0).ceil_().add_(edge), alpha=_H_BINS)
    key = table.index_select(0, h_bin.long().clamp_(0, _H_BINS * _A_BINS - 1))
    return key.add_(wide, alpha=_N_CODES)


def _owens_t_kernel(h: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Owen's T of flat ``h`` and ``a``: one sort of the points by (identity used, region code),
    one read of the group sizes to the host, then each method on its contiguous slice."""
    tables = _tables(h.device)
    with torch.no_grad():
        key = _region_keys(h, a, tables[0])
    if h.numel() <= _MASKED_MAX:
        one = torch.ones((), device=a.device, dtype=a.dtype)
        sign = one.copysign(a)
        return _owens_t_masked((h * one.copysign(h)).clamp(max=_H_CAP), a * sign, key, tables) * sign
    with torch.no_grad():
        order = torch.sort(key).indices
        counts = torch.bincount(key, minlength=2 * _N_CODES).tolist()  # the one host read
    n_narrow = sum(counts[:_N_CODES])
    h, a = h.index_select(0, order), a.index_select(0, order)
    one = torch.ones((), device=a.device, dtype=a.dtype)
    sign = one.copysign(a)
    if torch.is_grad_enabled() and (h.requires_grad or a.requires_grad):
        # |x| as x * sign(x) with sign(+0) = 1, so that autograd sees dT/da and d^2T/dh^2 at 0
        h, a = (h * one.copysign(h)).clamp(max=_H_CAP), a * sign
    else:
        h, a = h.abs_().clamp_(max=_H_CAP), a.abs_()
    pieces = []
    if n_narrow:
        pieces += _owens_t_unit(h[:n_narrow], a[:n_narrow], counts[:_N_CODES], tables)
    if n_narrow < h.numel():
        h0, a0 = h[n_narrow:], a[n_narrow:]
        ah = torch.where(torch.isinf(a0), torch.full_like(h0, _H_CAP), h0 * a0).clamp(max=_H_CAP)
        pieces += _owens_t_unit(ah, a0.reciprocal(), counts[_N_CODES:], tables, (h0, a0))
    values = (torch.cat(pieces) if len(pieces) > 1 else pieces[0]) * sign
    return values.new_empty(values.shape).scatter(0, order, values)


def owens_t(h, a, *, device=None, dtype=None) -> torch.Tensor:
    """Owen's T function T(h, a) = 1/(2 pi) int_0^a exp(-h^2 (1 + x^2)/2) / (1 + x^2) dx (Eq. 3.21).

    Vectorized over broadcast ``h`` and ``a`` (any real values: negative, zero and infinite ``a``,
    large ``|h|``; NaN in gives NaN out), in the dtype and on the device of tensor input (float32
    stays float32; float64 by default), differentiable by autograd (twice). Patefield and Tandy's
    method selection: Owen's identity ``T(h, a) = [Q(h) + Q(a h)]/2 - Q(h) Q(a h) - T(a h, 1/a)``
    for ``|a| > 1``, then one of six short series or quadratures T1..T6 by the region of
    ``(h, a)``. Host synchronization: none for inputs of at most 2^14 points (every point is
    evaluated by T3 and T5, which between them cover all regions, and keeps its region's value);
    for larger inputs one per call, the read of the number of points in each region after one
    sort of the points by region, after which each method runs once on its contiguous slice.
    Relative error at most 1e-13 wherever ``|T| > 1e-300`` against a 40-digit mpmath grid, by
    both paths (``tests/test_gaussian.py``; 5e-15 measured): ``exp(-h^2/2)`` is computed with
    ``h^2`` split exactly, ``a h`` carries its rounding error into ``Q(a h)`` and ``exp(-(a h)^2/2)``.
    """
    tensors = [value for value in (h, a) if isinstance(value, torch.Tensor)]
    floating = [value.dtype for value in tensors if value.is_floating_point()]
    if dtype is None and floating:
        dtype = functools.reduce(torch.promote_types, floating)
    if device is None and tensors:
        device = tensors[0].device
    h = _input(h, "h", device, dtype)
    a = _input(a, "a", device, dtype)
    h, a = torch.broadcast_tensors(h, a)
    shape = h.shape
    return _owens_t_kernel(h.reshape(-1), a.reshape(-1)).reshape(shape)


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
