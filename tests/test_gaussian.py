"""Owen's T function and the Gaussian expectations of chapter 3 (learndyn.gaussian)."""

import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
import scipy.special
import torch
from scipy.integrate import quad

from learndyn import gaussian
from learndyn.gaussian import (
    expected_cdf,
    expected_cdf_pdf,
    expected_cdf_squared,
    expected_cdf_squared_times_input,
    expected_cdf_times_input,
    normal_cdf,
    normal_pdf,
    owens_t,
)

# The reference: the defining integral (3.21) after x = tan(theta), i.e.
# T(h, a) = 1/(2 pi) int_0^atan(a) exp(-h^2 / (2 cos^2 theta)) d theta, a smooth integrand on a
# finite interval for every a, by mpmath's tanh-sinh quadrature at 30 digits; T(h, +-inf) exactly.
H_GRID = [0.0, 1e-12, 0.1, 0.5, 1.0, 2.0, 3.0, 4.5, 6.0, 8.0, 12.0, 40.0, -0.7, -5.0]
A_GRID = [0.0, 1e-14, 0.1, 0.5, 0.999, 1.0, 1.0 + 1e-12, 1.2, 3.0, 25.0, 1e6, 1e15, math.inf,
          -0.3, -1.0, -7.0, -math.inf]


def mpmath_owens_t(h: float, a: float) -> float:
    with mpmath.workdps(30):
        h_mp = mpmath.mpf(h)
        if math.isinf(a):
            return float(math.copysign(1, a) * mpmath.ncdf(-abs(h_mp)) / 2)
        angle = mpmath.atan(mpmath.mpf(a))
        integral = mpmath.quad(lambda t: mpmath.exp(-h_mp**2 / (2 * mpmath.cos(t) ** 2)),
                               [0, angle])
        return float(integral / (2 * mpmath.pi))


@pytest.fixture(scope="module")
def reference_grid():
    h, a = np.meshgrid(H_GRID, A_GRID)
    h, a = h.ravel(), a.ravel()
    return h, a, np.array([mpmath_owens_t(x, y) for x, y in zip(h, a, strict=True)])


def test_owens_t_matches_mpmath_on_the_hard_corners(reference_grid, device):
    h, a, expected = reference_grid
    got = owens_t(torch.tensor(h, device=device), torch.tensor(a, device=device)).cpu().numpy()
    assert np.abs(got - expected).max() < 1e-13


def test_owens_t_matches_scipy_on_random_points(device):
    rng = np.random.default_rng(0)
    h, a = rng.normal(0, 4, 200_000), rng.standard_cauchy(200_000)
    got = owens_t(torch.tensor(h, device=device), torch.tensor(a, device=device)).cpu().numpy()
    assert np.abs(got - scipy.special.owens_t(h, a)).max() < 1e-13


def test_owens_t_special_values_and_symmetries():
    h = torch.linspace(-6, 6, 101, dtype=torch.float64)
    a = torch.linspace(-9, 9, 101, dtype=torch.float64)
    assert torch.equal(owens_t(h, 0.0), torch.zeros_like(h))
    torch.testing.assert_close(owens_t(0.0, a), torch.atan(a) / (2 * math.pi), rtol=0, atol=1e-16)
    torch.testing.assert_close(owens_t(-h, a), owens_t(h, a), rtol=0, atol=0)
    torch.testing.assert_close(owens_t(h, -a), -owens_t(h, a), rtol=0, atol=0)
    # T(h, 1) = Phi(h) (1 - Phi(h)) / 2
    torch.testing.assert_close(owens_t(h, 1.0), normal_cdf(h) * normal_cdf(-h) / 2,
                               rtol=0, atol=1e-16)
    assert owens_t(0.0, math.inf).item() == pytest.approx(0.25, abs=1e-16)


def test_owens_t_propagates_nan_and_broadcasts():
    out = owens_t(torch.tensor([math.nan, 1.0, math.nan]), torch.tensor([0.5, math.nan, math.inf]))
    assert torch.isnan(out).all()
    assert owens_t(torch.zeros(3, 1), torch.ones(4)).shape == (3, 4)
    assert owens_t(1.0, 2.0).dtype == torch.float64


def test_owens_t_derivatives_by_autograd():
    h = torch.tensor([-2.0, -0.3, 0.0, 0.4, 1.5, 3.0], dtype=torch.float64, requires_grad=True)
    a = torch.tensor([0.0, 0.6, -1.0, 2.5, -7.0, 0.9], dtype=torch.float64, requires_grad=True)
    grad_h, grad_a = torch.autograd.grad(owens_t(h, a).sum(), (h, a))
    h, a = h.detach(), a.detach()
    torch.testing.assert_close(grad_h, -normal_pdf(h) * (normal_cdf(a * h) - 0.5),
                               rtol=0, atol=1e-15)
    expected_a = torch.exp(-h * h * (1 + a * a) / 2) / (2 * math.pi * (1 + a * a))
    torch.testing.assert_close(grad_a, expected_a, rtol=0, atol=1e-15)
    torch.autograd.gradgradcheck(owens_t, (h.clone().requires_grad_(), a.clone().requires_grad_()))


@pytest.mark.parametrize(("a", "b"), [(0.0, 0.5), (0.7, 1.3), (-1.1, 0.2), (2.0, 3.0)])
def test_one_dimensional_expectations_against_quadrature(a, b):
    a_t, b2 = torch.tensor(a, dtype=torch.float64), torch.tensor(b * b, dtype=torch.float64)

    def average(g):
        return quad(lambda u: g(a + b * u) * math.exp(-u * u / 2) / math.sqrt(2 * math.pi),
                    -np.inf, np.inf, epsabs=1e-14, epsrel=1e-13)[0]

    cdf = scipy.special.ndtr
    pdf = lambda z: math.exp(-z * z / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    assert expected_cdf(a_t, b2).item() == pytest.approx(average(cdf), abs=1e-12)
    assert expected_cdf_squared(a_t, b2).item() == pytest.approx(average(lambda z: cdf(z) ** 2),
                                                                 abs=1e-12)
    assert expected_cdf_pdf(a_t, b2).item() == pytest.approx(average(lambda z: cdf(z) * pdf(z)),
                                                             abs=1e-12)


def test_vector_expectations_against_monte_carlo(device):
    generator = torch.Generator(device=device).manual_seed(3)
    n, samples = 3, 400_000
    mean = torch.tensor([0.4, -0.2, 0.9], dtype=torch.float64, device=device)
    root = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.8, 0.0], [-0.2, 0.1, 0.5]], dtype=torch.float64,
                        device=device)
    v = torch.tensor([[0.7, -1.1, 0.4], [0.0, 0.2, -0.3]], dtype=torch.float64, device=device)
    normals = torch.randn(samples, n, generator=generator, dtype=torch.float64, device=device)
    x = mean + normals @ root.T
    for kernel, power in ((expected_cdf_times_input, 1), (expected_cdf_squared_times_input, 2)):
        values = normal_cdf(x @ v.T) ** power  # (samples, 2)
        products = values[:, :, None] * x[:, None, :]
        estimate, error = products.mean(0), products.std(0) / math.sqrt(samples)
        # 6 standard errors for 12 simultaneous comparisons
        assert ((kernel(v, mean, root @ root.T) - estimate).abs() < 6 * error).all()


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="h"):
        owens_t("text", 1.0)
    with pytest.raises(ValueError, match="a"):
        owens_t(1.0, [[1.0, "x"]])


@pytest.mark.parametrize("copies", [1, 20], ids=["masked path (small input)", "sorted path"])
def test_owens_t_relative_error_against_mpmath(copies):
    """Relative error <= 1e-13 wherever |T| > 1e-300, on the grid of tests/reference/make_owens_t.py,
    by both evaluation paths (up to 2^14 points every method on every point, beyond sorted by region)."""
    table = np.genfromtxt(Path(__file__).parent / "reference" / "owens_t_mpmath.csv", delimiter=",",
                          names=True, dtype=None, encoding="ascii")
    h = torch.tensor(table["h"].astype(float), dtype=torch.float64)
    a = torch.tensor(table["a"].astype(float), dtype=torch.float64)
    reference = np.array([float(v) for v in table["T"]])
    assert (h.numel() * copies > gaussian._MASKED_MAX) == (copies > 1)
    computed = owens_t(h.repeat(copies), a.repeat(copies)).numpy()[:h.numel()]
    resolved = np.abs(reference) > 1e-300
    relative = np.abs(computed[resolved] - reference[resolved]) / np.abs(reference[resolved])
    assert resolved.sum() > 900
    assert relative.max() <= 1e-13, (h[resolved][relative.argmax()], a[resolved][relative.argmax()])
    assert np.all(np.abs(computed[~resolved]) <= 1e-290)


def test_owens_t_keeps_float32_and_the_device():
    h32 = torch.tensor([0.3, 2.0, 12.0], dtype=torch.float32)
    for out in (owens_t(h32, 0.5), owens_t(0.5, h32), owens_t(h32, h32), owens_t(h32.repeat(6000), 2.0)):
        assert out.dtype == torch.float32
    expected = owens_t(h32.double(), torch.tensor(0.5, dtype=torch.float64))
    torch.testing.assert_close(owens_t(h32, 0.5).double(), expected, rtol=1e-5, atol=0)
    assert owens_t(h32, 0.5, dtype=torch.float64).dtype == torch.float64


def test_owens_t_chebyshev_coefficients_of_t3():
    """T3's coefficients: 1/(1 + x^2) = sqrt 2 [1/2 + sum_k (-r^2)^k T_2k(x)], r = sqrt 2 - 1, cut at
    degree 40 and written in powers of x."""
    with mpmath.workdps(50):
        r2 = (mpmath.sqrt(2) - 1) ** 2
        chebyshev = [mpmath.sqrt(2) * (mpmath.mpf(1) / 2 if k == 0 else (-r2) ** k) for k in range(21)]
        powers = [mpmath.mpf(0)] * 41
        for k, c in enumerate(chebyshev):
            for i, t in enumerate(mpmath.taylor(lambda x, k=k: mpmath.chebyt(2 * k, x), 0, 2 * k)):
                powers[i] += c * t
    assert np.allclose(gaussian._T3_COEFFICIENTS, [float(p) for p in powers[::2]], rtol=1e-15, atol=0)


def test_owens_t_sorted_path_gradients_and_nan():
    """The sorted path (more than 2^14 points) keeps autograd and NaN like the masked one."""
    rng = np.random.default_rng(5)
    h = torch.tensor(rng.normal(0, 3, 20_000), requires_grad=True)
    a = torch.tensor(rng.standard_cauchy(20_000), requires_grad=True)
    grad_h, grad_a = torch.autograd.grad(owens_t(h, a).sum(), (h, a))
    h, a = h.detach(), a.detach()
    torch.testing.assert_close(grad_h, -normal_pdf(h) * (normal_cdf(a * h) - 0.5), rtol=1e-12,
                               atol=1e-15)
    torch.testing.assert_close(grad_a, torch.exp(-h * h * (1 + a * a) / 2) / (2 * math.pi * (1 + a * a)),
                               rtol=1e-12, atol=1e-15)
    h[7], a[11] = math.nan, math.nan
    out = owens_t(h, a)
    assert torch.isnan(out[[7, 11]]).all() and torch.isfinite(out[:7]).all()


@pytest.mark.parametrize("n", [10, 40_000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_owens_t_leaves_its_inputs_alone(n, dtype):
    h, a = torch.linspace(-3, 3, n, dtype=dtype), torch.linspace(-5, 5, n, dtype=dtype)
    h0, a0 = h.clone(), a.clone()
    owens_t(h, a)
    assert torch.equal(h, h0) and torch.equal(a, a0)
