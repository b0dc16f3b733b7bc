"""Reference values of Owen's T function at 40 significant digits, from mpmath.

Run from the repository root: ``.venv/bin/python tests/reference/make_owens_t.py``. It writes
``tests/reference/owens_t_mpmath.csv`` (h, a, T as decimal strings), which tests/test_gaussian.py
reads. The grid covers |h| up to 40, a from 1e-12 to 1e12, a near 1 and h near 0, the edges of
Patefield and Tandy's regions (where the method changes), plus random points like those of the
benchmark (h ~ N(0, 9), a ~ Cauchy).

For 0 <= a <= 1 the integral (3.21) is evaluated as exp(-h^2/2)/(2 pi) int_0^a exp(-h^2 x^2/2)/(1+x^2)
dx by tanh-sinh quadrature with breakpoints on the scale 1/h of the integrand's peak; for a > 1
through Owen's identity T(h, a) = [Q(h) + Q(ah)]/2 - Q(h) Q(ah) - T(ah, 1/a), exact in mpmath.
"""

from pathlib import Path

import mpmath as mp
import numpy as np

mp.mp.dps = 40
OUT = Path(__file__).with_name("owens_t_mpmath.csv")


def upper_tail(z):
    return mp.erfc(z / mp.sqrt(2)) / 2


def owens_t_unit(h, a):
    if a == 0:
        return mp.mpf(0)
    top = min(a, 40 / h) if h > 0 else a
    nodes = mp.linspace(0, top, 24) + ([a] if top < a else [])
    integral = mp.quad(lambda x: mp.exp(-h * h * x * x / 2) / (1 + x * x), nodes)
    return mp.exp(-h * h / 2) * integral / (2 * mp.pi)


def owens_t(h, a):
    h, a = abs(mp.mpf(h)), mp.mpf(a)
    sign, a = (1 if a >= 0 else -1), abs(a)
    if a <= 1:
        return sign * owens_t_unit(h, a)
    if h == 0:
        return sign * mp.atan(a) / (2 * mp.pi)
    q_h, q_ah = upper_tail(h), upper_tail(a * h)
    return sign * ((q_h + q_ah) / 2 - q_h * q_ah - owens_t_unit(a * h, 1 / a))


def grid():
    hs = [0.0, 1e-300, 1e-8, 1e-3, 0.1, 0.5, 1.0, 2.0, 3.0, 4.9, 5.1, 7.0, 10.0, 12.0, 15.0, 20.0,
          25.0, 30.0, 35.0, 37.0, 38.0, 40.0]
    as_ = [1e-12, 1e-6, 1e-3, 0.1, 0.3, 0.5, 0.9, 0.999, 1.0, 1.001, 1.1, 1.5, 3.0, 10.0, 100.0,
           1e4, 1e8, 1e12]
    points = [(s * h, t * a) for h in hs for a in as_ for s, t in ((1, 1), (-1, -1))]
    # the edges of Patefield and Tandy's regions, and a within 1e-9 of 1, where methods change
    edges_h = [0.02, 0.06, 0.09, 0.125, 0.26, 0.4, 0.6, 1.6, 1.7, 2.33, 2.4, 3.36, 3.4, 4.8]
    edges_a = [0.025, 0.09, 0.15, 0.36, 0.5, 0.9, 0.99999, 0.999995, 1 - 1e-9, 1 + 1e-9, 1.00001]
    points += [(h * f, a) for h in edges_h for a in edges_a for f in (1 - 1e-9, 1 + 1e-9)]
    rng = np.random.default_rng(20261201)
    points += list(zip(rng.normal(0, 3, 200), rng.standard_cauchy(200), strict=True))
    points += list(zip(rng.uniform(0, 38, 100), 10 ** rng.uniform(-12, 12, 100), strict=True))
    return points


if __name__ == "__main__":
    rows = ["h,a,T"]
    for h, a in grid():
        rows.append(f"{float(h)!r},{float(a)!r},{mp.nstr(owens_t(h, a), 40)}")
    OUT.write_text("\n".join(rows) + "\n")
    print(f"wrote {len(rows) - 1} values to {OUT}")
