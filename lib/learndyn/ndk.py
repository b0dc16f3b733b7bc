"""The Neural Dynamical Kernel (chapter 5): NTK and NNGP as two limits of one Langevin dynamics.

Wide fully connected networks ``f(x) = a . x_L / sqrt(N_L)``, ``x_l = phi(W_l x_{l-1} / sqrt(N_{l-1}))``
trained by Langevin dynamics on ``E = 1/2 sum_mu (f_mu - y_mu)^2 + T/(2 sigma^2) |Theta|^2`` with noise
of temperature ``T`` from ``Theta(0) ~ N(0, sigma_0^2)``. Equation labels refer to chapter 5:

* ``prior_correlation``: C(t, t') of the weights under the prior (Ornstein-Uhlenbeck) process,
  :eq:`ndk-prior-correlation`;
* ``two_time_kernels`` / ``kernels_from_gram``: the two-time NNGP kernel K^L, the derivative kernel
  Kdot^L and the NDK K_d^L by the layer recursion :eq:`ndk-layer-map`, :eq:`ndk-recursion`, for
  linear, ReLU and erf activations at any depth;
* ``static_kernels``: the ordinary NNGP and NTK kernels (the special cases C = sigma^2 and t = t' = 0);
* ``solve_volterra``: the mean-predictor equations :eq:`ndk-volterra-train`, :eq:`ndk-volterra-test`;
  ``symmetric_task_kernels`` gives their scalar reduction for the synthetic task :eq:`ndk-scalar`;
* ``ntk_predictor`` :eq:`ndk-ntk-solution` and ``nngp_equilibrium`` :eq:`ndk-nngp-equilibrium`;
* ``drift_kernels`` / ``drift_predictor``: the readout frozen at a time t_0 while the hidden weights
  diffuse, the drift kernel :eq:`ndk-drift-kernel` and the mean output :eq:`ndk-drift-general`
  (any t_0; the equilibrium case is :eq:`ndk-drift`), and ``decorrelated_kernel``, its long-lag
  limit :eq:`ndk-drift-limit`;
* ``init_networks`` / ``simulate_langevin``: ensembles of finite-width networks trained by Langevin
  dynamics, one batched operation per step, with the frozen-readout (drift) protocol.

All kernels are elementwise in their (broadcast) arguments, so they batch over input pairs and time
pairs at once; they compute in float64 unless asked otherwise.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from .backend import (
    as_tensor,
    check_count,
    check_positive,
    make_generator,
    placement,
)
from .ensemble import every, run_ensemble

#: The activations of the kernel recursion.
ACTIVATIONS = ("linear", "relu", "erf")
_TWO_PI = 2.0 * math.pi
# q1 q2 - c^2 at or below this fraction of q1 q2 is rounding: the inputs are parallel (theta < 1.2e-7)
_ANGLE_FLOOR = 64 * torch.finfo(torch.float64).eps


def _check_activation(activation: str) -> str:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation={activation!r} must be one of {ACTIVATIONS}")
    return activation


def _check_variances(temperature, prior_variance, init_variance):
    return (check_positive(temperature, "temperature", allow_zero=True),
            check_positive(prior_variance, "prior_variance"),
            check_positive(init_variance, "init_variance"))


def prior_correlation(t1, t2, *, temperature: float, prior_variance: float, init_variance: float,
                      device=None, dtype=None) -> torch.Tensor:
    """``C(t, t') = sigma^2 e^{-k|t - t'|} + (sigma_0^2 - sigma^2) e^{-k (t + t')}``, ``k = T / sigma^2``.

    The correlation of one weight under the prior Ornstein-Uhlenbeck process, chapter 5
    :eq:`ndk-prior-correlation`. ``t1`` and ``t2`` (non-negative times) broadcast against each other.
    """
    temperature, prior_variance, init_variance = _check_variances(temperature, prior_variance,
                                                                  init_variance)
    t1, t2 = _times(t1, "t1", device, dtype), _times(t2, "t2", device, dtype)
    k = temperature / prior_variance
    return (prior_variance * torch.exp(-k * (t1 - t2).abs())
            + (init_variance - prior_variance) * torch.exp(-k * (t1 + t2)))


def _times(value, name, device, dtype) -> torch.Tensor:
    times = as_tensor(value, name, device=device, dtype=dtype)
    if (times < 0).any() or not torch.isfinite(times).all():
        raise ValueError(f"{name} must hold finite times >= 0, got min {times.min().item():.4g}")
    return times


def gaussian_maps(activation: str, q1: torch.Tensor, q2: torch.Tensor, c: torch.Tensor):
    """(E[phi(u) phi(v)], E[phi'(u) phi'(v)]) for centred Gaussians of variances q1, q2, covariance c.

    Chapter 5 :eq:`ndk-relu-maps`, :eq:`ndk-erf-maps` (linear: (c, 1)). Elementwise; the
    arguments broadcast. The second map is the derivative of the first in c (Price's theorem).
    """
    _check_activation(activation)
    if activation == "linear":
        return c, torch.ones_like(c)
    if activation == "relu":
        # theta from atan2(sqrt(q1 q2 - c^2), c), with q1 q2 - c^2 below its rounding error read
        # as 0: identical inputs get theta = 0 exactly, where arccos(c / sqrt(q1 q2)) of a cosine
        # one ulp below 1 gives theta ~ 2e-8 and a relative NTK error of that size
        product = q1 * q2
        gap = product - c * c
        gap = torch.where(gap > _ANGLE_FLOOR * product, gap, torch.zeros_like(gap))
        sine_part = gap.sqrt()  # sqrt(q1 q2) sin(theta)
        theta = torch.where(product > 0, torch.atan2(sine_part, c), torch.full_like(c, math.pi / 2))
        angle_left = math.pi - theta
        return (sine_part + angle_left * c) / _TWO_PI, angle_left / _TWO_PI
    det = (1.0 + 2.0 * q1) * (1.0 + 2.0 * q2)
    value = (2.0 / math.pi) * torch.arcsin((2.0 * c / torch.sqrt(det)).clamp(-1.0, 1.0))
    return value, (4.0 / math.pi) / torch.sqrt((det - 4.0 * c * c).clamp_min(0.0))


def _self_map(activation: str, q: torch.Tensor) -> torch.Tensor:
    """E[phi(u)^2] for u ~ N(0, q)."""
    if activation == "linear":
        return q
    if activation == "relu":
        return 0.5 * q
    return (2.0 / math.pi) * torch.arcsin(2.0 * q / (1.0 + 2.0 * q))


@dataclass
class Kernels:
    """Two-time kernels at the last layer: ``nngp`` K^L, ``derivative`` Kdot^L, ``ndk`` K_d^L, and the
    prior output covariance ``output_covariance`` = C(t, t') K^L = <f(x, t) f(x', t')>_0."""

    nngp: torch.Tensor
    derivative: torch.Tensor
    ndk: torch.Tensor
    output_covariance: torch.Tensor


def kernels_from_gram(gram, self1, self2, correlation, variance1, variance2, propagator, *,
                      activation: str = "relu", depth: int = 1, readout_correlation=None,
                      readout_propagator=None) -> Kernels:
    """The layer recursion of chapter 5, :eq:`ndk-layer-map` and :eq:`ndk-recursion`.

    Arguments are tensors that broadcast: ``gram`` = x.x'/N_0, ``self1`` = x.x/N_0, ``self2`` =
    x'.x'/N_0, ``correlation`` = C(t, t'), ``variance1`` = C(t, t), ``variance2`` = C(t', t'),
    ``propagator`` = ``e^{-T|t - t'|/sigma^2}``. ``depth`` = L hidden layers. Cost: O(L) elementwise
    passes over the broadcast shape. No input checks here (see :func:`two_time_kernels`).

    ``readout_correlation`` and ``readout_propagator`` (given together, or neither) are the
    correlation and propagator of the readout ``a`` when its times differ from those of the hidden
    weights; they replace ``correlation`` and ``propagator`` in the last step of the recursion only.
    With a readout frozen at t_0, C(t_0, t') and e^{-T(t_0 - t')/sigma^2}, the ``ndk`` field is the
    drift kernel K_dr of :eq:`ndk-drift-kernel` and ``output_covariance`` is C(t_0, t') K^L
    (see :func:`drift_kernels`).
    """
    _check_activation(activation)
    check_count(depth, "depth")
    if (readout_correlation is None) != (readout_propagator is None):
        raise ValueError("readout_correlation and readout_propagator must be given together "
                         f"(got readout_correlation={'None' if readout_correlation is None else 'a value'}, "
                         f"readout_propagator={'None' if readout_propagator is None else 'a value'})")
    if readout_correlation is None:
        readout_correlation, readout_propagator = correlation, propagator
    previous, ndk = gram, propagator * gram
    for layer in range(depth):
        q1, q2 = variance1 * self1, variance2 * self2
        value, derivative = gaussian_maps(activation, q1, q2, correlation * previous)
        self1, self2 = _self_map(activation, q1), _self_map(activation, q2)
        # the weights above this layer: hidden ones, or the readout at the last layer
        above, moved = ((readout_correlation, readout_propagator) if layer == depth - 1
                        else (correlation, propagator))
        ndk = moved * value + above * derivative * ndk
        previous = value
    return Kernels(previous, derivative, ndk, readout_correlation * previous)


def _inputs(x, name, device, dtype):
    """Inputs as an (n, N_0) tensor; NaN/inf are caught on the squared norms (one cheap pass)."""
    try:
        x = torch.as_tensor(x, device=device, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise ValueError(f"{name}={x!r} cannot be read as a tensor of numbers") from exc
    if x.dim() != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected a non-empty (n, N_0) matrix")
    if not bool(torch.isfinite(torch.linalg.vector_norm(x, dim=1)).all()):
        raise ValueError(f"{name} contains NaN or inf values")
    return x


def input_gram(x1, x2):
    """``(x1 x2^T / N_0, |x1|^2 / N_0, |x2|^2 / N_0)``: the layer-0 kernels of the recursion."""
    dim = x1.shape[1]
    if x2.shape[1] != dim:
        raise ValueError(f"x1 has {dim} features but x2 has {x2.shape[1]}")
    self1 = torch.linalg.vector_norm(x1, dim=1).square_().div_(dim)
    self2 = self1 if x2 is x1 else torch.linalg.vector_norm(x2, dim=1).square_().div_(dim)
    return (x1 @ x2.T).div_(dim), self1, self2


def _two_time_arguments(t1, t2, params, temperature, prior_variance):
    """C(t1, t2), C(t1, t1), C(t2, t2) and the propagator, broadcast and shaped (..., 1, 1)."""
    t1, t2 = torch.broadcast_tensors(t1, t2)
    correlation = prior_correlation(t1, t2, **params)[..., None, None]
    variance1 = prior_correlation(t1, t1, **params)[..., None, None]
    variance2 = prior_correlation(t2, t2, **params)[..., None, None]
    propagator = torch.exp(-temperature / prior_variance * (t1 - t2).abs())[..., None, None]
    return correlation, variance1, variance2, propagator


def two_time_kernels(x1, x2, t1, t2, *, activation: str = "relu", depth: int = 1,
                     temperature: float, prior_variance: float, init_variance: float,
                     device=None, dtype=None) -> Kernels:
    """K^L(t, t', x, x'), Kdot^L and the NDK K_d(t, t', x, x') for inputs ``x1`` (n1, N_0), ``x2``
    (n2, N_0) and times ``t1``, ``t2`` that broadcast to a shape S; results have shape S + (n1, n2).

    Chapter 5 :eq:`ndk-prior-correlation`, :eq:`ndk-layer-map`, :eq:`ndk-recursion`.
    """
    device, dtype = placement(device, dtype, x1, x2, t1, t2)
    x1, x2 = _inputs(x1, "x1", device, dtype), _inputs(x2, "x2", device, dtype)
    params = dict(temperature=temperature, prior_variance=prior_variance,
                  init_variance=init_variance, device=device, dtype=dtype)
    t1, t2 = _times(t1, "t1", device, dtype), _times(t2, "t2", device, dtype)
    arguments = _two_time_arguments(t1, t2, params, temperature, prior_variance)
    gram, self1, self2 = input_gram(x1, x2)
    return kernels_from_gram(gram, self1[:, None], self2[None, :], *arguments, activation=activation,
                             depth=depth)


def drift_kernels(x1, x2, t, s, *, freeze_time: float, activation: str = "relu", depth: int = 1,
                  temperature: float, prior_variance: float, init_variance: float,
                  device=None, dtype=None) -> Kernels:
    """Kernels of networks whose readout was frozen at t_0 = ``freeze_time`` while the hidden weights
    kept diffusing under the prior: the output f_dr(x, t) = a(t_0).x_L(x; W(t)) / sqrt(N_L) at a time
    ``t`` >= t_0, paired with the ordinary output at an earlier time ``s`` <= t_0.

    The ``ndk`` field is the drift kernel of chapter 5 :eq:`ndk-drift-kernel`,
    K_dr(t, t_0, s) = e^{-T(t_0 - s)/sigma^2} K^L(t, s) + C(t_0, s) Kdot^L(t, s) K_d^{L-1}(t, s),
    the recursion :eq:`ndk-recursion` with the readout's correlation C(t_0, s) and propagator in its
    last step; ``nngp`` and ``derivative`` are K^L(t, s) and Kdot^L(t, s), and ``output_covariance``
    is C(t_0, s) K^L(t, s) = <f_dr(x, t) f(x', s)>_0. At t = t_0 everything equals
    :func:`two_time_kernels` at (t_0, s). ``t`` and ``s`` broadcast to a shape S; results have shape
    S + (n1, n2) for ``x1`` (n1, N_0), ``x2`` (n2, N_0).
    """
    device, dtype = placement(device, dtype, x1, x2, t, s)
    x1, x2 = _inputs(x1, "x1", device, dtype), _inputs(x2, "x2", device, dtype)
    params = dict(temperature=temperature, prior_variance=prior_variance,
                  init_variance=init_variance, device=device, dtype=dtype)
    t0 = _times(freeze_time, "freeze_time", device, dtype)
    if t0.numel() != 1:
        raise ValueError(f"freeze_time must be one time, got shape {tuple(t0.shape)}")
    t, s = _times(t, "t", device, dtype), _times(s, "s", device, dtype)
    if bool((t < t0).any()):
        raise ValueError(f"t must hold times >= freeze_time={float(t0):.6g} (the readout is frozen at "
                         f"freeze_time), got min {float(t.min()):.6g}")
    if bool((s > t0).any()):
        raise ValueError(f"s must hold times <= freeze_time={float(t0):.6g} (the training signal "
                         f"stops at freeze_time), got max {float(s.max()):.6g}")
    t, s = torch.broadcast_tensors(t, s)
    arguments = _two_time_arguments(t, s, params, temperature, prior_variance)
    readout_correlation = prior_correlation(t0, s, **params)[..., None, None]
    readout_propagator = torch.exp(-temperature / prior_variance * (t0 - s))[..., None, None]
    gram, self1, self2 = input_gram(x1, x2)
    return kernels_from_gram(gram, self1[:, None], self2[None, :], *arguments, activation=activation,
                             depth=depth, readout_correlation=readout_correlation,
                             readout_propagator=readout_propagator)


#: The parameterizations of :func:`static_kernels`' NTK.
PARAMETERIZATIONS = ("standard", "ntk")


def static_kernels(x1, x2, *, weight_variance: float, activation: str = "relu", depth: int = 1,
                   parameterization: str = "standard", device=None,
                   dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ordinary (NNGP, NTK) kernels of a network whose weights all have variance
    ``weight_variance`` = w, shape (n1, n2).

    NNGP: w K^L with C = w (chapter 5 :eq:`ndk-nngp-kernel`; w = sigma^2 gives K_GP). NTK: the NDK
    at t = t' = 0 (:eq:`ndk-ntk-recursion`; w = sigma_0^2 gives K_NTK). The NTK is the gradient
    kernel with respect to the weights themselves, of variance w / fan-in
    (``parameterization="standard"``, the weights of chapter 5's Langevin dynamics); with
    ``parameterization="ntk"`` it is taken with respect to standard-normal weights scaled by
    ``sqrt(w / fan-in)``, the convention of neural-tangents, which is w times larger. The NNGP is
    the same in both. Agrees with neural-tangents' ``Dense(W_std=sqrt(w), b_std=0)`` networks to
    1e-13 (``tests/reference/nt_kernels.json``).
    """
    if parameterization not in PARAMETERIZATIONS:
        raise ValueError(f"parameterization={parameterization!r}: use one of {PARAMETERIZATIONS}")
    x1, x2, weight_variance = _static_arguments(x1, x2, weight_variance, activation, depth,
                                                device, dtype)
    gram, self1, self2 = input_gram(x1, x2)
    nngp, ntk = _static_recursion(gram, self1, self2, weight_variance, activation, depth)
    return nngp, ntk.mul_(weight_variance) if parameterization == "ntk" else ntk

def _static_arguments(x1, x2, weight_variance, activation, depth, device, dtype):
    """The validated inputs and weight variance shared by the static-kernel functions."""
    device, dtype = placement(device, dtype, x1, x2)
    weight_variance = check_positive(weight_variance, "weight_variance")
    _check_activation(activation)
    check_count(depth, "depth")
    return _inputs(x1, "x1", device, dtype), _inputs(x2, "x2", device, dtype), weight_variance



def _static_recursion(gram, self1, self2, w, activation, depth):
    """In-place version of :func:`kernels_from_gram` with C = w, t = t' (no temporaries beyond two
    (n1, n2) buffers per layer); equal to it up to rounding (tested)."""
    value, ntk = gram, gram.clone()
    for _ in range(depth):
        q1, q2 = w * self1, w * self2
        c = value.mul_(w)
        if activation == "linear":
            value, derivative = c, None
        elif activation == "relu":
            # as in gaussian_maps: theta = atan2(sqrt(q1 q2 - c^2), c), exact on the diagonal
            product = torch.outer(q1, q2)
            value = torch.addcmul(product, c, c, value=-1.0)
            value.masked_fill_(value <= product.mul_(_ANGLE_FLOOR), 0.0).sqrt_()
            derivative = torch.atan2(value, c).neg_().add_(math.pi)  # pi - theta
            if not (bool((q1 > 0).all()) and bool((q2 > 0).all())):
                derivative[(q1 <= 0)[:, None] | (q2 <= 0)[None, :]] = math.pi / 2
            value.addcmul_(derivative, c).div_(_TWO_PI)
            derivative.div_(_TWO_PI)
        else:
            scale1, scale2 = (1.0 + 2.0 * q1).rsqrt(), (1.0 + 2.0 * q2).rsqrt()
            ratio = c.mul_(2.0).mul_(scale1[:, None]).mul_(scale2[None, :]).clamp_(-1.0, 1.0)
            derivative = torch.mul(ratio, ratio).neg_().add_(1.0).clamp_min_(0.0).rsqrt_()
            derivative.mul_(scale1[:, None]).mul_(scale2[None, :] * (4.0 / math.pi))
            value = ratio.arcsin_().mul_(2.0 / math.pi)
        if derivative is not None:
            ntk.mul_(derivative)
        ntk.mul_(w).add_(value)
        self1, self2 = _self_map(activation, q1), _self_map(activation, q2)
    return value.mul_(w), ntk


def decorrelated_kernel(x1, x2, *, weight_variance: float, activation: str = "relu",
                        depth: int = 1, device=None, dtype=None) -> torch.Tensor:
    """K^L_mean(x, x') = E[phi(u)] E[phi(v)] with u, v independent, of variances w K^{L-1}_eq:
    the limit of the two-time NNGP kernel when C(t, t') -> 0 (chapter 5 :eq:`ndk-drift-limit`).

    It vanishes for odd activations; for ReLU it is sqrt(q q') / (2 pi) and keeps only input norms.
    """
    x1, x2, weight_variance = _static_arguments(x1, x2, weight_variance, activation, depth,
                                                device, dtype)
    _, self1, self2 = input_gram(x1, x2)
    for _ in range(depth - 1):
        self1 = _self_map(activation, weight_variance * self1)
        self2 = _self_map(activation, weight_variance * self2)
    if activation != "relu":
        return torch.zeros(x1.shape[0], x2.shape[0], device=x1.device, dtype=x1.dtype)
    mean1 = torch.sqrt(weight_variance * self1 / _TWO_PI)
    mean2 = torch.sqrt(weight_variance * self2 / _TWO_PI)
    return mean1[:, None] * mean2[None, :]


# --------------------------------------------------------------------------------------------
# The mean predictor: Volterra equations, their limits, and the symmetric synthetic task


def trapezoid_weights(times: torch.Tensor) -> torch.Tensor:
    """Node weights w_j = (t_{j+1} - t_{j-1}) / 2 (w_0 = (t_1 - t_0)/2) of the composite trapezoid
    rule; the weight of the last node of int_0^{t_i} is (t_i - t_{i-1}) / 2 instead."""
    gaps = torch.diff(times)
    weights = torch.zeros_like(times)
    weights[:-1] += gaps / 2
    weights[1:] += gaps / 2
    return weights


def _check_grid(times, device, dtype):
    times = as_tensor(times, "times", device=device, dtype=dtype)
    if times.dim() != 1 or times.numel() < 2:
        raise ValueError(f"times has shape {tuple(times.shape)}, expected a 1-d grid of >= 2 times")
    if times[0] != 0 or not bool((torch.diff(times) > 0).all()):
        raise ValueError("times must start at 0 and increase strictly")
    return times


def _scalar_volterra(kernel: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                     steps: torch.Tensor) -> np.ndarray:
    """The trapezoid recursion of :func:`solve_volterra` for one training point, on the host."""
    kernel, weights, steps = (t.detach().cpu().numpy() for t in (kernel, weights, steps))
    target = float(target)
    values, residual = np.zeros(len(weights)), np.zeros(len(weights))
    residual[0] = weights[0] * target
    for i in range(1, len(weights)):
        half_diagonal = 0.5 * steps[i - 1] * kernel[i, i]
        values[i] = (kernel[i, :i] @ residual[:i] + half_diagonal * target) / (1.0 + half_diagonal)
        residual[i] = weights[i] * (target - values[i])
    return values


def solve_volterra(kernel_train, targets, times, kernel_test=None, *, device=None, dtype=None):
    """Solve f(t) = int_0^t K_d(t, t') [y - f(t')] dt' (chapter 5 :eq:`ndk-volterra-train`) and
    evaluate f(x, t) = int_0^t k_d(t, t', x)^T [y - f(t')] dt' (:eq:`ndk-volterra-test`).

    Product trapezoidal rule on the grid ``times`` (t_0 = 0, increasing, any spacing), which is
    second order in the step. The implicit last node is solved exactly:
    (I + h_i/2 K_ii) f_i = sum_{j<i} w_j K_ij r_j + h_i/2 K_ii y.

    ``kernel_train``: (n, n, P, P) with entry [i, j] = K_d(t_i, t_j) on training pairs (only j <= i
    is read); ``targets``: (P,); ``kernel_test``: (n, n, M, P). With P = 1 this is the scalar
    reduction of the symmetric task (see :func:`symmetric_task_kernels`).
    Cost: O(n^2 P^2 + n P^3) operations and O(n) batched steps for the training predictor, one
    O(n^2 M P) contraction for the test predictor. Returns (f_train (n, P), f_test (n, M) or None).
    """
    device, dtype = placement(device, dtype, kernel_train, targets, times, kernel_test)
    times = _check_grid(times, device, dtype)
    n = times.numel()
    kernel = as_tensor(kernel_train, "kernel_train", device=device, dtype=dtype)
    y = as_tensor(targets, "targets", device=device, dtype=dtype)
    if y.dim() != 1:
        raise ValueError(f"targets has shape {tuple(y.shape)}, expected (P,)")
    p = y.numel()
    if tuple(kernel.shape) != (n, n, p, p):
        raise ValueError(f"kernel_train has shape {tuple(kernel.shape)}, expected {(n, n, p, p)}")
    weights = trapezoid_weights(times)
    steps = torch.diff(times)
    identity = torch.eye(p, device=device, dtype=dtype)
    predictor = torch.zeros(n, p, device=device, dtype=dtype)
    weighted_residual = torch.zeros(n, p, device=device, dtype=dtype)  # w_j (y - f_j)
    weighted_residual[0] = weights[0] * y
    if p == 1:  # the scalar reduction: a loop of divisions, on the host (one copy in, one copy out)
        predictor = torch.as_tensor(_scalar_volterra(kernel[:, :, 0, 0], y[0], weights, steps),
                                    device=device, dtype=dtype)[:, None]
    for i in range(1, n if p > 1 else 0):
        half = steps[i - 1] / 2
        history = torch.einsum("jab,jb->a", kernel[i, :i], weighted_residual[:i])
        diagonal = kernel[i, i]
        rhs = history + half * (diagonal @ y)
        predictor[i] = torch.linalg.solve_ex(identity + half * diagonal, rhs)[0]  # no sync on info
        weighted_residual[i] = weights[i] * (y - predictor[i])
    if kernel_test is None:
        return predictor, None
    kernel_test = as_tensor(kernel_test, "kernel_test", device=device, dtype=dtype)
    if kernel_test.dim() != 4 or tuple(kernel_test.shape[:2]) != (n, n) or kernel_test.shape[3] != p:
        raise ValueError(f"kernel_test has shape {tuple(kernel_test.shape)}, expected (n, n, M, {p})")
    residual = y - predictor
    node = torch.tril(weights.expand(n, n)).clone()  # row i: the trapezoid weights of int_0^{t_i}
    node.diagonal()[1:] = steps / 2
    node[0, 0] = 0.0
    test = torch.einsum("ij,ijmb,jb->im", node, kernel_test, residual)
    return predictor, test


def drift_predictor(x, x_train, targets, times, freeze_time: float, t, *, activation: str = "relu",
                    depth: int = 1, temperature: float, prior_variance: float, init_variance: float,
                    device=None, dtype=None):
    """Mean output of wide networks trained by Langevin dynamics up to t_0 = ``freeze_time``, after
    which the readout is frozen and the hidden weights diffuse under the prior
    (chapter 5 :eq:`ndk-drift-general`):

        f_dr(x, t) = int_0^{t_0} ds K_dr(t, t_0, s, x, X)^T [y - f_train(s)],   t >= t_0,

    with the drift kernel of :func:`drift_kernels` and the training residual of the Volterra equation
    :eq:`ndk-volterra-train`, solved by :func:`solve_volterra` on the nodes of ``times`` up to t_0.
    The s-integral uses the trapezoid weights of the same nodes (second order in the step), so at
    t = t_0 the result is the test predictor of :func:`solve_volterra` at t_0.

    ``x`` (M, N_0) inputs to evaluate, ``x_train`` (P, N_0), ``targets`` (P,), ``times``: a grid that
    starts at 0, increases, and has t_0 as a node (nodes after t_0 are not used); ``t``: times >= t_0
    (any shape S). Cost: the training NDK on the n_0 nodes up to t_0 (n_0^2 P^2 entries) and
    K_dr on ``|S| n_0 M P`` entries. Returns (f_dr of shape S + (M,), f_train on the nodes up to t_0,
    shape (n_0, P)).
    """
    device, dtype = placement(device, dtype, x, x_train, targets, times, freeze_time, t)
    x, x_train = _inputs(x, "x", device, dtype), _inputs(x_train, "x_train", device, dtype)
    y = as_tensor(targets, "targets", device=device, dtype=dtype)
    if y.dim() != 1 or y.numel() != x_train.shape[0]:
        raise ValueError(f"targets has shape {tuple(y.shape)}, expected ({x_train.shape[0]},), one per "
                         "row of x_train")
    times = _check_grid(times, device, dtype)
    t0 = float(check_positive(freeze_time, "freeze_time", allow_zero=True))
    matches = torch.nonzero(torch.isclose(times, torch.tensor(t0, device=device, dtype=dtype),
                                          rtol=1e-12, atol=1e-12))
    if matches.numel() == 0:
        raise ValueError(f"freeze_time={t0!r} is not a node of times (nodes from {float(times[0]):.6g} "
                         f"to {float(times[-1]):.6g}); put t_0 on the grid")
    nodes = times[:int(matches[0, 0]) + 1]
    t = _times(t, "t", device, dtype)
    if bool((t < t0).any()):
        raise ValueError(f"t must hold times >= freeze_time={t0:.6g}, got min {float(t.min()):.6g}")
    if nodes.numel() == 1:                     # t_0 = 0: nothing was learned, the mean is zero
        return (torch.zeros(*t.shape, x.shape[0], device=device, dtype=dtype),
                torch.zeros(1, y.numel(), device=device, dtype=dtype))
    physics = dict(activation=activation, depth=depth, temperature=temperature,
                   prior_variance=prior_variance, init_variance=init_variance, device=device,
                   dtype=dtype)
    train = two_time_kernels(x_train, x_train, nodes[:, None], nodes[None, :], **physics).ndk
    predictor, _ = solve_volterra(train, y, nodes, device=device, dtype=dtype)
    weighted_residual = trapezoid_weights(nodes)[:, None] * (y - predictor)       # (n_0, P)
    t = torch.maximum(t, nodes[-1])            # the node may differ from t_0 by rounding
    kernel = drift_kernels(x, x_train, t[..., None], nodes, freeze_time=nodes[-1], **physics).ndk
    return torch.einsum("...smp,sp->...m", kernel, weighted_residual), predictor


def volterra_double_loop(kernel_train, targets, times):
    """Reference implementation of the scalar trapezoid scheme of :func:`solve_volterra` as a plain
    double loop over time steps (Python floats); for the benchmark and the tests only."""
    t = [float(v) for v in times]
    k = [[float(v) for v in row] for row in kernel_train]
    y = float(targets)
    n = len(t)
    f = [0.0] * n
    for i in range(1, n):
        total = 0.0
        for j in range(i):
            w = (t[1] - t[0]) / 2 if j == 0 else (t[j + 1] - t[j - 1]) / 2
            total += w * k[i][j] * (y - f[j])
        half = (t[i] - t[i - 1]) / 2
        f[i] = (total + half * k[i][i] * y) / (1 + half * k[i][i])
    return f


def symmetric_task_kernels(times, rho: float, *, activation: str = "relu", depth: int = 1,
                           temperature: float, prior_variance: float, init_variance: float,
                           device=None, dtype=None):
    """Scalar kernels of the synthetic task (orthonormal inputs, balanced labels, test overlap rho):
    K_diag - K_off for the training equation and k_1(rho) - k_off for the test point, each on the
    grid (n, n) of time pairs, shaped (n, n, 1, 1) for :func:`solve_volterra` (chapter 5
    :eq:`ndk-scalar`). Returns (train, test, kernels) where ``kernels`` holds the three NDK arrays.
    """
    device, dtype = placement(device, dtype, times, rho)
    rho = float(rho)
    if not -1.0 <= rho <= 1.0:
        raise ValueError(f"rho={rho!r} must lie in [-1, 1] (the overlap of two unit inputs)")
    times = _check_grid(times, device, dtype)
    params = dict(temperature=temperature, prior_variance=prior_variance,
                  init_variance=init_variance, device=device, dtype=dtype)
    t1, t2 = times[:, None], times[None, :]
    correlation = prior_correlation(t1, t2, **params)
    variance = prior_correlation(times, times, **params)
    propagator = torch.exp(-temperature / prior_variance * (t1 - t2).abs())
    gram = torch.tensor([1.0, 0.0, rho], device=device, dtype=dtype)[:, None, None]
    ndk = kernels_from_gram(gram, 1.0, 1.0, correlation, variance[:, None], variance[None, :],
                            propagator, activation=activation, depth=depth).ndk
    diagonal, off, overlap = ndk
    return ((diagonal - off)[..., None, None], (overlap - off)[..., None, None],
            {"diagonal": diagonal, "off": off, "overlap": overlap})


def synthetic_task(n_train: int, rho: float, *, device=None, dtype=None):
    """Inputs of the synthetic task in dimension N_0 = P + 1: x^mu = sqrt(N_0) e_mu (so that
    x.x'/N_0 = delta), balanced labels +-1 (y^1 = +1), a unit test point of overlap ``rho`` with x^1.
    Returns (x_train (P, N_0), y (P,), x_test (1, N_0))."""
    device, dtype = placement(device, dtype, n_train, rho)
    check_count(n_train, "n_train", minimum=2)
    if n_train % 2:
        raise ValueError(f"n_train={n_train!r} must be even (balanced labels)")
    if not -1.0 <= float(rho) <= 1.0:
        raise ValueError(f"rho={rho!r} must lie in [-1, 1]")
    dim = n_train + 1
    eye = torch.eye(dim, device=device, dtype=dtype) * math.sqrt(dim)
    labels = torch.tensor([1.0, -1.0] * (n_train // 2), device=device, dtype=dtype)
    test = (rho * eye[0] + math.sqrt(1.0 - rho * rho) * eye[-1])[None, :]
    return eye[:n_train], labels, test


def ntk_predictor(kernel_train, kernel_test, targets, times, *, device=None, dtype=None):
    """The gradient-driven phase (chapter 5 :eq:`ndk-ntk-solution`):
    f_train(t) = (I - e^{-K t}) y and f(x, t) = k(x)^T K^{-1} (I - e^{-K t}) y with the NTK K.

    ``kernel_train`` (P, P), ``kernel_test`` (M, P), ``times`` (n,). Returns ((n, P), (n, M)).
    """
    device, dtype = placement(device, dtype, kernel_train, kernel_test, targets, times)
    kernel = as_tensor(kernel_train, "kernel_train", device=device, dtype=dtype)
    test = as_tensor(kernel_test, "kernel_test", device=device, dtype=dtype)
    y = as_tensor(targets, "targets", device=device, dtype=dtype)
    times = as_tensor(times, "times", device=device, dtype=dtype).reshape(-1)
    eigenvalues, vectors = torch.linalg.eigh(kernel)
    if eigenvalues.min() <= 0:
        raise ValueError(f"kernel_train is not positive definite (eigenvalue {eigenvalues.min():.3g})")
    modes = vectors.T @ y
    decayed = (1 - torch.exp(-times[:, None] * eigenvalues)) * modes
    train = decayed @ vectors.T
    test_values = (decayed / eigenvalues) @ (test @ vectors).T
    return train, test_values


def nngp_equilibrium(kernel_train, kernel_test, targets, temperature: float, *, device=None,
                     dtype=None):
    """The long-time limit (chapter 5 :eq:`ndk-nngp-equilibrium`): k_GP^T (K_GP + T I)^{-1} y on
    the test inputs and K_GP (K_GP + T I)^{-1} y on the training inputs. Returns (train, test)."""
    device, dtype = placement(device, dtype, kernel_train, kernel_test, targets, temperature)
    temperature = check_positive(temperature, "temperature", allow_zero=True)
    kernel = as_tensor(kernel_train, "kernel_train", device=device, dtype=dtype)
    test = as_tensor(kernel_test, "kernel_test", device=device, dtype=dtype)
    y = as_tensor(targets, "targets", device=device, dtype=dtype)
    eye = torch.eye(kernel.shape[0], device=device, dtype=dtype)
    coefficients = torch.linalg.solve(kernel + temperature * eye, y)
    return kernel @ coefficients, test @ coefficients


# --------------------------------------------------------------------------------------------
# Langevin dynamics of finite-width networks, batched over an ensemble


def activation_functions(activation: str):
    """The activation and its derivative as elementwise torch functions."""
    if activation == "linear":
        return (lambda h: h), (lambda h: torch.ones_like(h))
    if activation == "relu":
        return torch.relu, (lambda h: (h > 0).to(h.dtype))
    scale = 2.0 / math.sqrt(math.pi)
    return torch.erf, (lambda h: scale * torch.exp(-h * h))


def init_networks(n_replicas: int, widths, *, init_variance: float, generator=None,
                  antithetic: bool = True, device=None, dtype=None) -> tuple[torch.Tensor, ...]:
    """i.i.d. N(0, sigma_0^2) weights (W_1, ..., W_L, a) of ``n_replicas`` networks with layer widths
    ``widths`` = (N_0, N_1, ..., N_L). With ``antithetic`` the second half of the ensemble repeats
    the first with the readout negated (a valid sample that cancels the prior output exactly)."""
    device, dtype = placement(device, dtype, n_replicas, widths)
    check_count(n_replicas, "n_replicas", minimum=2 if antithetic else 1)
    if antithetic and n_replicas % 2:
        raise ValueError(f"n_replicas={n_replicas!r} must be even with antithetic pairs")
    widths = [check_count(int(w), "widths") for w in widths]
    if len(widths) < 2:
        raise ValueError(f"widths={widths!r} needs the input width and at least one hidden width")
    scale = math.sqrt(check_positive(init_variance, "init_variance"))
    generator = make_generator(device=device) if generator is None else generator
    half = n_replicas // 2 if antithetic else n_replicas
    shapes = [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)] + [(widths[-1],)]
    weights = [scale * torch.randn(half, *shape, generator=generator, device=device, dtype=dtype)
               for shape in shapes]
    if antithetic:
        weights = [torch.cat([w, w], 0) for w in weights[:-1]] + [torch.cat([weights[-1],
                                                                             -weights[-1]], 0)]
    return tuple(weights)


def network_forward(weights, x, activation: str = "relu"):
    """Outputs f (R, n) and the layer pre-activations/activations of an ensemble at inputs x (n, N_0)."""
    phi, _ = activation_functions(_check_activation(activation))
    hidden = x.expand(weights[0].shape[0], *x.shape)
    pre, post = [], [hidden]
    for w in weights[:-1]:
        h = hidden @ w.transpose(1, 2) / math.sqrt(w.shape[2])
        hidden = phi(h)
        pre.append(h)
        post.append(hidden)
    readout = weights[-1]
    output = torch.einsum("rnh,rh->rn", hidden, readout) / math.sqrt(readout.shape[1])
    return output, pre, post


def loss_gradients(weights, x, y, activation: str = "relu"):
    """Gradients of 1/2 sum_mu (f_mu - y_mu)^2 for every network of the ensemble (manual backprop)."""
    _, dphi = activation_functions(activation)
    output, pre, post = network_forward(weights, x, activation)
    error = output - y
    readout = weights[-1]
    grads = [None] * len(weights)
    grads[-1] = torch.einsum("rn,rnh->rh", error, post[-1]) / math.sqrt(readout.shape[1])
    delta = error[..., None] * readout[:, None, :] / math.sqrt(readout.shape[1]) * dphi(pre[-1])
    for layer in range(len(weights) - 2, -1, -1):
        fan_in = weights[layer].shape[2]
        grads[layer] = torch.einsum("rnh,rni->rhi", delta, post[layer]) / math.sqrt(fan_in)
        if layer:
            delta = (delta @ weights[layer]) / math.sqrt(fan_in) * dphi(pre[layer - 1])
    return grads


def output_gradients(weights, x, activation: str = "relu") -> torch.Tensor:
    """Per-network, per-input gradients of the output with respect to all weights, flattened:
    shape (R, n, n_weights). Their inner products are the empirical (two-time) tangent kernels."""
    output = network_forward(weights, x, activation)[0]
    rows = []
    for index in range(x.shape[0]):
        unit = torch.zeros_like(output)
        unit[:, index] = 1.0
        grads = loss_gradients(weights, x, output - unit, activation)
        rows.append(torch.cat([g.reshape(g.shape[0], -1) for g in grads], 1))
    return torch.stack(rows, 1)


def sample_prior_pair(weights, lag: float, *, temperature: float, prior_variance: float,
                      generator=None):
    """Propagate weights by ``lag`` under the prior Ornstein-Uhlenbeck process exactly:
    e^{-k lag} w + sqrt(sigma^2 (1 - e^{-2 k lag})) xi (chapter 5 :eq:`ndk-prior-correlation`)."""
    check_positive(lag, "lag", allow_zero=True)
    k = check_positive(temperature, "temperature", allow_zero=True) / check_positive(
        prior_variance, "prior_variance")
    decay, spread = math.exp(-k * lag), math.sqrt(prior_variance * -math.expm1(-2.0 * k * lag))
    return tuple(decay * w + spread * torch.randn(w.shape, generator=generator, device=w.device,
                                                  dtype=w.dtype) for w in weights)


def langevin_step(weights, generator, *, x, y, activation: str, temperature: float,
                  prior_variance: float, dt: float, learning: bool = True, antithetic: bool = True,
                  noise=None):
    """One step of the Langevin dynamics for the whole ensemble.

    Implements :eq:`ndk-langevin` of :doc:`/book/neural_dynamical_kernel`: the prior part
    (Ornstein-Uhlenbeck) is integrated exactly, the loss gradient by an Euler step of size ``dt``
    (error O(dt)). With ``learning=False`` only the prior part acts (the drift protocol).
    Antithetic pairs get the same noise except for a negated readout noise. ``noise``, when given,
    holds the standard normals of this step, one tensor per weight tensor (the first half of the
    ensemble with antithetic pairs), instead of drawing them from ``generator``.
    """
    k = temperature / prior_variance
    decay = math.exp(-k * dt)
    spread = math.sqrt(prior_variance * -math.expm1(-2.0 * k * dt))
    grads = loss_gradients(weights, x, y, activation) if learning else [None] * len(weights)
    new = []
    for index, (w, g) in enumerate(zip(weights, grads, strict=True)):
        half = w.shape[0] // 2 if antithetic else w.shape[0]
        if noise is None:
            xi = torch.randn(half, *w.shape[1:], generator=generator, device=w.device,
                             dtype=w.dtype)
        else:
            xi = noise[index]
        if antithetic:
            sign = -1.0 if index == len(weights) - 1 else 1.0
            xi = torch.cat([xi, sign * xi], 0)
        step = decay * w + spread * xi
        new.append(step - dt * g if learning else step)
    return tuple(new)


@dataclass
class LangevinRun:
    """Recorded ``times`` (n_records,), outputs ``train`` (n_records, R, P) and ``test``
    (n_records, R, M); the final ``state``; ``diverged`` replicas (frozen, see run_ensemble)."""

    times: torch.Tensor
    train: torch.Tensor
    test: torch.Tensor
    state: tuple[torch.Tensor, ...]
    diverged: torch.Tensor


def simulate_langevin(weights, x_train, y, x_test, *, activation: str = "relu",
                      temperature: float, prior_variance: float, dt: float, n_steps: int,
                      record=1, learning: bool = True, frozen_readout=None,
                      antithetic: bool = True, generator=None) -> LangevinRun:
    """Langevin dynamics of an ensemble of finite-width networks (chapter 5 :eq:`ndk-langevin`),
    one batched operation per step through :func:`learndyn.ensemble.run_ensemble`.

    ``frozen_readout`` (R, N_L): when given, outputs are read with this readout instead of the
    current one (the drift protocol of :eq:`ndk-drift`, used with ``learning=False``).
    """
    check_positive(temperature, "temperature", allow_zero=True)
    check_positive(prior_variance, "prior_variance")
    check_positive(dt, "dt")
    check_count(n_steps, "n_steps", minimum=0)
    _check_activation(activation)

    def step(state, gen):
        return langevin_step(state, gen, x=x_train, y=y, activation=activation,
                             temperature=temperature, prior_variance=prior_variance, dt=dt,
                             learning=learning, antithetic=antithetic)

    def observe(state):
        readout = state if frozen_readout is None else (*state[:-1], frozen_readout)
        return {"train": network_forward(readout, x_train, activation)[0],
                "test": network_forward(readout, x_test, activation)[0]}

    result = run_ensemble(step, tuple(weights), n_steps, record=record, observe=observe,
                          generator=generator)
    times = torch.as_tensor(result.steps * dt, dtype=x_train.dtype, device=x_train.device)
    return LangevinRun(times, result.records["train"], result.records["test"], result.state,
                       result.diverged)


def simulate_step_halving(weights, x_train, y, x_test, *, activation: str = "relu",
                          temperature: float, prior_variance: float, dt: float, n_steps: int,
                          record=2, antithetic: bool = True, generator=None, coarse_weights=None):
    """Two Langevin ensembles from the same ``weights``, one with steps ``dt`` and one with steps
    ``2 dt``, driven by common random numbers (step halving for the Euler error).

    Implements :eq:`ndk-langevin` of :doc:`/book/neural_dynamical_kernel`. The fine ensemble is
    exactly :func:`simulate_langevin` with the same generator; the coarse one receives, in each of
    its steps, the Ornstein-Uhlenbeck noise of the two fine steps it spans, combined exactly
    (e^{-k dt} s xi_1 + s xi_2 = s_2 xi with s^2 = sigma^2 (1 - e^{-2 k dt})), so the prior parts
    agree step for step and the two ensembles differ only by the Euler error of the loss gradient.
    For a first-order scheme the difference of their means estimates the bias of the fine one.

    ``n_steps`` (fine steps) and every step of ``record`` (an even interval or even step indices)
    must be even. ``coarse_weights`` starts the coarse ensemble elsewhere (to continue a pair of
    runs). Returns ``(fine, coarse)``, two :class:`LangevinRun` recorded at the same times.
    """
    check_positive(temperature, "temperature", allow_zero=True)
    check_positive(prior_variance, "prior_variance")
    check_positive(dt, "dt")
    check_count(n_steps, "n_steps", minimum=0)
    _check_activation(activation)
    if n_steps % 2:
        raise ValueError(f"n_steps={n_steps!r} must be even (two fine steps per coarse step)")
    steps = (every(int(record), n_steps) if isinstance(record, int)
             else np.unique(np.asarray(record, dtype=int)))
    if np.any(steps % 2):
        raise ValueError(f"record={record!r} must hold even step indices (times of the coarse run)")
    weights = tuple(weights)
    coarse_weights = weights if coarse_weights is None else tuple(coarse_weights)
    layers = len(weights)
    k = temperature / prior_variance
    decay = math.exp(-k * dt)
    spread = math.sqrt(prior_variance * -math.expm1(-2.0 * k * dt))
    spread_coarse = math.sqrt(prior_variance * -math.expm1(-4.0 * k * dt))
    physics = dict(x=x_train, y=y, activation=activation, temperature=temperature,
                   prior_variance=prior_variance, antithetic=antithetic)

    def normals(state, gen):
        return [torch.randn(w.shape[0] // 2 if antithetic else w.shape[0], *w.shape[1:],
                            generator=gen, device=w.device, dtype=w.dtype) for w in state]

    def step(state, gen):
        fine, coarse = state[:layers], state[layers:]
        first = normals(fine, gen)
        fine = langevin_step(fine, gen, dt=dt, noise=first, **physics)
        second = normals(fine, gen)
        fine = langevin_step(fine, gen, dt=dt, noise=second, **physics)
        combined = [(decay * spread * a + spread * b) / spread_coarse if spread_coarse > 0 else a
                    for a, b in zip(first, second, strict=True)]
        coarse = langevin_step(coarse, gen, dt=2.0 * dt, noise=combined, **physics)
        return (*fine, *coarse)

    def observe(state):
        fine, coarse = state[:layers], state[layers:]
        return {"train": network_forward(fine, x_train, activation)[0],
                "test": network_forward(fine, x_test, activation)[0],
                "train_coarse": network_forward(coarse, x_train, activation)[0],
                "test_coarse": network_forward(coarse, x_test, activation)[0]}

    result = run_ensemble(step, (*weights, *coarse_weights), n_steps // 2, record=steps // 2,
                          observe=observe, generator=generator)
    times = torch.as_tensor(result.steps * 2.0 * dt, dtype=x_train.dtype, device=x_train.device)
    records = result.records
    fine = LangevinRun(times, records["train"], records["test"], result.state[:layers],
                       result.diverged)
    coarse = LangevinRun(times, records["train_coarse"], records["test_coarse"],
                         result.state[layers:], result.diverged)
    return fine, coarse


def join_runs(first: LangevinRun, second: LangevinRun, offset: float) -> LangevinRun:
    """One :class:`LangevinRun` from ``second``, which continued ``first`` from its final state
    after a time ``offset`` (the records of ``second`` count from there). Used for the runs of
    :eq:`ndk-langevin` of :doc:`/book/neural_dynamical_kernel` that are split at a freezing time.
    """
    return LangevinRun(torch.cat([first.times, second.times + offset]),
                       torch.cat([first.train, second.train]), torch.cat([first.test, second.test]),
                       second.state, first.diverged | second.diverged)


def two_width_runs(x_train, y, x_test, *, widths, n_replicas: int, init_variance: float,
                   n_steps: int, record, generators, activation: str = "relu", temperature: float,
                   prior_variance: float, dt: float) -> dict[str, LangevinRun]:
    """The three Langevin ensembles of a width-extrapolated check of :eq:`ndk-volterra-train` of
    :doc:`/book/neural_dynamical_kernel` (:eq:`ndk-langevin`): ``"fine"`` and ``"coarse"``, the
    step-halving pair of :func:`simulate_step_halving` at the hidden widths ``widths[0]``, and
    ``"wide"``, one ensemble at ``widths[1]`` (usually twice as wide).

    ``widths`` = (hidden widths (N_1, ..., N_L) of the narrow networks, those of the wide ones);
    ``generators`` = (initial weights, narrow noise, wide noise); ``record`` as in
    :func:`simulate_step_halving` (even steps). Returns a dict of three :class:`LangevinRun`.
    """
    if len(widths) != 2 or len(generators) != 3:
        raise ValueError(f"widths={widths!r} needs two entries and generators three "
                         f"(got {len(generators)})")
    physics = dict(activation=activation, temperature=temperature, prior_variance=prior_variance,
                   dt=dt, n_steps=n_steps, record=record)
    dim = x_train.shape[1]
    narrow, wide = ([dim, *layers] for layers in widths)
    start = [init_networks(n_replicas, w, init_variance=init_variance, generator=generators[0],
                           device=x_train.device, dtype=x_train.dtype) for w in (narrow, wide)]
    fine, coarse = simulate_step_halving(start[0], x_train, y, x_test, generator=generators[1],
                                         **physics)
    return {"fine": fine, "coarse": coarse,
            "wide": simulate_langevin(start[1], x_train, y, x_test, generator=generators[2],
                                      **physics)}


# --------------------------------------------------------------------------------------------
# Helpers of the chapter's experiments


def pair_moments(samples: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over an ensemble of antithetic pairs along ``dim``.

    Used by the Langevin checks of :doc:`/book/neural_dynamical_kernel` (:eq:`ndk-langevin`):
    replica ``r`` and ``r + R/2`` form a pair (see :func:`init_networks`); the pair means are
    i.i.d., so the standard error is computed from them.
    """
    n = samples.shape[dim]
    if n < 4 or n % 2:
        raise ValueError(f"samples has {n} replicas along dim {dim}; need an even number >= 4")
    first, second = samples.split(n // 2, dim)
    pairs = (first + second) / 2
    return pairs.mean(dim), pairs.std(dim) / math.sqrt(n // 2)


def width_extrapolation(narrow, wide):
    """Richardson extrapolation to infinite width of an O(1/N) finite-width bias.

    ``narrow`` and ``wide`` are ``(mean, se)`` measured at widths N and 2N (independent
    ensembles); returns ``(2 wide - narrow, sqrt(4 se_wide^2 + se_narrow^2))``, the estimate of the
    wide limit that the theories of :doc:`/book/neural_dynamical_kernel` describe
    (:eq:`ndk-volterra-train`), with its standard error.
    """
    (mean_n, se_n), (mean_w, se_w) = narrow, wide
    return 2 * mean_w - mean_n, torch.sqrt(4 * se_w**2 + se_n**2)


def time_grid(t_switch: float, t_end: float, n_fine: int, n_coarse: int, *, device=None,
              dtype=None) -> torch.Tensor:
    """Nodes for :func:`solve_volterra`: ``n_fine`` uniform ones on [0, t_switch], then
    ``n_coarse - 1`` geometric ones up to ``t_end``; they resolve the fast gradient-driven phase and
    the slow diffusive one with few nodes. Used with :eq:`ndk-volterra-train` of
    :doc:`/book/neural_dynamical_kernel`.
    """
    device, dtype = placement(device, dtype, t_switch, t_end, n_fine, n_coarse)
    if not 0 < t_switch < t_end:
        raise ValueError(f"need 0 < t_switch < t_end, got t_switch={t_switch!r}, t_end={t_end!r}")
    check_count(n_fine, "n_fine", minimum=2)
    check_count(n_coarse, "n_coarse", minimum=2)
    fine = torch.linspace(0.0, t_switch, n_fine, device=device, dtype=dtype)
    coarse = torch.logspace(math.log10(t_switch), math.log10(t_end), n_coarse, device=device,
                            dtype=dtype)[1:]
    return torch.cat([fine, coarse])


def refine(times: torch.Tensor) -> torch.Tensor:
    """The grid with every step halved (midpoints inserted), for step-halving estimates of the
    trapezoid error of :func:`solve_volterra` (:eq:`ndk-volterra-train` of
    :doc:`/book/neural_dynamical_kernel`); the old nodes are the even nodes of the new grid."""
    if not isinstance(times, torch.Tensor) or times.dim() != 1 or times.numel() < 2:
        raise ValueError("times must be a 1-d tensor of at least two nodes")
    middle = (times[1:] + times[:-1]) / 2
    return torch.cat([torch.stack([times[:-1], middle], 1).reshape(-1), times[-1:]])


def extrapolate_trapezoid(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    """A fourth-order solution of :eq:`ndk-volterra-train` of :doc:`/book/neural_dynamical_kernel`
    from two trapezoid solutions of :func:`solve_volterra`: ``coarse`` on a grid, ``fine`` on
    :func:`refine` of it (time along the last axis).

    For smooth kernels the error of the product trapezoid rule has an expansion in even powers of
    the step, ``f_h = f + c h^2 + O(h^4)``, so Richardson's ``f_{h/2} + (f_{h/2} - f_h) / 3`` on the
    coarse nodes removes the ``h^2`` term. It does not change the stability of the rule: a step
    with ``lambda_max h`` too large stays too large.
    """
    if fine.shape[-1] != 2 * coarse.shape[-1] - 1 or fine.shape[:-1] != coarse.shape[:-1]:
        raise ValueError(f"fine has shape {tuple(fine.shape)}; for coarse {tuple(coarse.shape)} "
                         f"expected {(*coarse.shape[:-1], 2 * coarse.shape[-1] - 1)} (the refined grid)")
    on_coarse = fine[..., ::2]
    return on_coarse + (on_coarse - coarse) / 3


def symmetric_solution(times, rho: float, *, activation: str = "relu", depth: int = 1,
                       temperature: float, prior_variance: float, init_variance: float,
                       device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean predictor of the synthetic task: g(t) = y.f_train(t)/P and f(x_test, t).

    Implements :eq:`ndk-scalar` of :doc:`/book/neural_dynamical_kernel`: the kernels of
    :func:`symmetric_task_kernels` solved by :func:`solve_volterra`. Returns two tensors of shape
    ``(len(times),)``.
    """
    device, dtype = placement(device, dtype, times, rho)
    train, test, _ = symmetric_task_kernels(times, rho, activation=activation, depth=depth,
                                            temperature=temperature, prior_variance=prior_variance,
                                            init_variance=init_variance, device=device,
                                            dtype=dtype)
    times = as_tensor(times, "times", device=device, dtype=dtype)
    g, f = solve_volterra(train, torch.ones(1, device=device, dtype=dtype), times, test,
                          device=device, dtype=dtype)
    return g[:, 0], f[:, 0]


def empirical_kernels(weights_1, weights_2, x, lag: float, *, activation: str = "relu",
                      temperature: float, prior_variance: float) -> dict[str, torch.Tensor]:
    """Per-network samples of the two-time kernels, for networks ``weights_1`` at a time t and
    ``weights_2`` at t' = t + ``lag`` (the same networks moved by the prior process).

    The finite-width counterparts of :eq:`ndk-layer-map` and :eq:`ndk-recursion` of
    :doc:`/book/neural_dynamical_kernel`: ``nngp`` x_L(t).x_L(t')/N_L, ``derivative``
    phi'(h_L(t)).phi'(h_L(t'))/N_L, ``ndk`` e^{-k lag} grad f(t).grad f(t'), and ``first_layer``
    x_1(t).x_1(t)/N_1 (whose relative variance measures the finite-width fluctuation). Each entry
    has shape (R, n, n) for inputs ``x`` (n, N_0).
    """
    check_positive(lag, "lag", allow_zero=True)
    k = check_positive(temperature, "temperature", allow_zero=True) / check_positive(
        prior_variance, "prior_variance")
    _, derivative_fn = activation_functions(_check_activation(activation))
    _, pre_1, post_1 = network_forward(weights_1, x, activation)
    _, pre_2, post_2 = network_forward(weights_2, x, activation)
    width = post_1[-1].shape[-1]
    grads_1 = output_gradients(weights_1, x, activation)
    grads_2 = output_gradients(weights_2, x, activation)
    return {
        "nngp": post_1[-1] @ post_2[-1].transpose(1, 2) / width,
        "derivative": derivative_fn(pre_1[-1]) @ derivative_fn(pre_2[-1]).transpose(1, 2) / width,
        "ndk": math.exp(-k * lag) * grads_1 @ grads_2.transpose(1, 2),
        "first_layer": post_1[1] @ post_1[1].transpose(1, 2) / post_1[1].shape[-1],
    }


def fluctuation_dissipation_sides(x, t_late: float, t_early: float, step: float, *,
                                  activation: str = "relu", depth: int = 1, temperature: float,
                                  prior_variance: float, init_variance: float, device=None,
                                  dtype=None):
    """Both sides of :eq:`ndk-identity` of :doc:`/book/neural_dynamical_kernel` at the time pair
    (t, t') = (``t_late``, ``t_early``): the NDK K_d(t, t'), and T^{-1} d/dt' [C K^L] by central
    differences with steps ``step`` and ``step / 2``. Returns ``(ndk, fine, coarse)``, each (n, n);
    the central difference has error ~ c h^2, so ``|fine - ndk|`` falls 4x from coarse to fine when the
    identity holds.
    """
    device, dtype = placement(device, dtype, x, t_late, t_early, step)
    check_positive(step, "step")
    physics = dict(activation=activation, depth=depth, temperature=temperature,
                   prior_variance=prior_variance, init_variance=init_variance, device=device,
                   dtype=dtype)
    offsets = torch.tensor([-step, step, -step / 2, step / 2], device=device, dtype=dtype)
    shifted = two_time_kernels(x, x, t_late, t_early + offsets, **physics).output_covariance
    coarse = (shifted[1] - shifted[0]) / (2 * step) / temperature
    fine = (shifted[3] - shifted[2]) / step / temperature
    return two_time_kernels(x, x, t_late, t_early, **physics).ndk, fine, coarse


@functools.lru_cache(maxsize=8)
def _gauss_legendre(n_nodes: int):
    """Gauss-Legendre nodes and weights on [-1, 1] (cached: an eigenvalue problem of size n)."""
    return np.polynomial.legendre.leggauss(n_nodes)


def integrated_ndk(x, n_nodes: int, *, activation: str = "relu", depth: int = 1,
                   temperature: float, prior_variance: float, device=None, dtype=None):
    """int_0^inf K_d(tau, 0, x, x') dtau for the stationary prior (sigma_0^2 = sigma^2), the left
    side of :eq:`ndk-integrated` of :doc:`/book/neural_dynamical_kernel`.

    Gauss-Legendre quadrature with ``n_nodes`` nodes in u = e^{-k tau}, which maps [0, inf) onto
    (0, 1]. Returns (n, n).
    """
    device, dtype = placement(device, dtype, x, n_nodes)
    check_count(n_nodes, "n_nodes", minimum=2)
    k = check_positive(temperature, "temperature") / check_positive(prior_variance,
                                                                     "prior_variance")
    u, w = _gauss_legendre(n_nodes)
    u = torch.tensor((u + 1) / 2, device=device, dtype=dtype)
    w = torch.tensor(w / 2, device=device, dtype=dtype)
    kernel = two_time_kernels(x, x, -torch.log(u) / k, 0.0, activation=activation, depth=depth,
                              temperature=temperature, prior_variance=prior_variance,
                              init_variance=prior_variance, device=device, dtype=dtype).ndk
    return torch.einsum("n,nab->ab", w / (k * u), kernel)


def threshold_accuracy(values, labels) -> float:
    """The best accuracy of one threshold on ``values`` ("label +1 iff value >= cut", or the
    reverse): the best one-dimensional linear classifier, used on the frozen predictor of
    :eq:`ndk-drift` of :doc:`/book/neural_dynamical_kernel`. Values equal to 1e-9 relative
    (rounding noise) are merged, so tied inputs are never split by a cut.
    """
    values = torch.as_tensor(values)
    labels = torch.as_tensor(labels)
    if values.shape != labels.shape or values.dim() != 1:
        raise ValueError(f"values {tuple(values.shape)} and labels {tuple(labels.shape)} must be "
                         "1-d of one length")
    merged = torch.round(values / values.abs().max().clamp_min(1e-300) * 1e9)
    cuts = torch.unique(merged)
    accuracy = ((merged[None, :] >= cuts[:, None]) == (labels > 0)[None, :]).double().mean(1)
    return float(torch.maximum(accuracy, 1 - accuracy).max())


def digit_pair(classes, per_class: int = 50, *, device=None, dtype=None):
    """The first ``per_class`` 8x8 digits of each of two ``classes``, scaled by one common factor
    so that the mean of x.x/N_0 is 1, with labels +1 (first class) and -1: the data of the drift
    experiment of :doc:`/book/neural_dynamical_kernel` (:eq:`ndk-drift`).
    Returns ``(x (n, 64), y (n,), raw images (n, 64))``.
    """
    from .data import load_digits

    device, dtype = placement(device, dtype, classes, per_class)
    if len(classes) != 2:
        raise ValueError(f"classes={classes!r} must name two digits")
    images, labels = load_digits(classes=classes, device=device, dtype=dtype)
    keep = torch.cat([torch.nonzero(labels == c)[:per_class, 0] for c in classes])
    raw = images[keep]
    x = raw / raw.square().sum(1).mean().div(raw.shape[1]).sqrt()
    y = torch.where(labels[keep] == classes[0], 1.0, -1.0).to(dtype)
    return x, y, raw


def frozen_predictors(x, y, lags, *, activation: str = "relu", depth: int = 2,
                      temperature: float, prior_variance: float = 1.0, device=None, dtype=None):
    """The equilibrium drift predictor on the training set at each lag t - t_0 in ``lags``, and its
    decorrelated limit.

    Implements :eq:`ndk-drift` and :eq:`ndk-drift-limit` of :doc:`/book/neural_dynamical_kernel`
    for inputs ``x`` (n, N_0) and labels ``y`` (n,). Returns ``(frozen (n_lags, n), limit (n,),
    kernel at the last lag (n, n), limit kernel (n, n))``.
    """
    device, dtype = placement(device, dtype, x, y, lags)
    check_positive(temperature, "temperature")
    x = _inputs(x, "x", device, dtype)
    y = as_tensor(y, "y", device=device, dtype=dtype)
    weights = dict(weight_variance=prior_variance, activation=activation, depth=depth,
                   device=device, dtype=dtype)
    k_gp, _ = static_kernels(x, x, **weights)
    eye = torch.eye(x.shape[0], device=device, dtype=dtype)
    alpha = torch.linalg.solve(k_gp + temperature * eye, y)
    lags = as_tensor(lags, "lags", device=device, dtype=dtype)
    two = two_time_kernels(x, x, lags, 0.0, activation=activation, depth=depth,
                           temperature=temperature, prior_variance=prior_variance,
                           init_variance=prior_variance, device=device, dtype=dtype).nngp
    limit = decorrelated_kernel(x, x, **weights)
    return prior_variance * two @ alpha, prior_variance * limit @ alpha, two[-1], limit


def stopping_scan(ratios, grid, *, rho: float, n_train: int = 4, activation: str = "relu",
                  depth: int = 1, temperature: float, prior_variance: float = 1.0,
                  max_first_step: float = 0.4, device=None,
                  dtype=None) -> dict[float, dict[str, float]]:
    """The best stopping time of the synthetic task (``n_train`` inputs, test overlap ``rho``, see
    :func:`synthetic_task`) for each sigma_0^2 / sigma^2 in ``ratios``.

    For each ratio, :func:`symmetric_solution` (:eq:`ndk-scalar` of
    :doc:`/book/neural_dynamical_kernel`) on ``grid``; the test error (1 - f(x_test, t))^2 at its
    minimum ``best`` (time ``t_best``) and at the end of the grid ``last``; the errors of the NTK
    (:eq:`ndk-ntk-solution`) and NNGP (:eq:`ndk-nngp-equilibrium`) equilibria; ``error``, the
    solver error bound from solving again on every other node; ``lam_min``, the smallest NTK
    eigenvalue. Ratios whose largest NTK eigenvalue times the first step exceeds
    ``max_first_step`` are left out (the grid would not resolve their gradient-driven phase).
    """
    device, dtype = placement(device, dtype, ratios, grid)
    x_train, y, x_test = synthetic_task(n_train, rho, device=device, dtype=dtype)
    inputs = torch.cat([x_train, x_test])
    n = n_train
    kernel_args = dict(activation=activation, depth=depth, device=device, dtype=dtype)
    gp_kernel, _ = static_kernels(inputs, inputs, weight_variance=prior_variance, **kernel_args)
    f_gp = float(nngp_equilibrium(gp_kernel[:n, :n], gp_kernel[n:, :n], y, temperature,
                                  device=device, dtype=dtype)[1][0])
    results = {}
    for ratio in ratios:
        variance = float(ratio) * prior_variance
        _, ntk = static_kernels(inputs, inputs, weight_variance=variance, **kernel_args)
        eigenvalues = torch.linalg.eigvalsh(ntk[:n, :n])
        if float(eigenvalues.max()) * float(grid[1] - grid[0]) > max_first_step:
            continue
        f_ntk = float(ntk[n, :n] @ torch.linalg.solve(ntk[:n, :n], y))
        physics = dict(temperature=temperature, prior_variance=prior_variance,
                       init_variance=variance, **kernel_args)
        _, f_curve = symmetric_solution(grid, rho, **physics)
        _, f_double = symmetric_solution(grid[::2], rho, **physics)
        test_error = (1 - f_curve) ** 2
        best = int(torch.argmin(test_error))
        results[float(ratio)] = dict(
            t_best=float(grid[best]), best=float(test_error[best]), last=float(test_error[-1]),
            ntk=(1 - f_ntk) ** 2, gp=(1 - f_gp) ** 2,
            error=float((f_curve[::2] - f_double).abs().max()), lam_min=float(eigenvalues.min()))
    return results


def winning_ratios(scan: dict[float, dict[str, float]], t_last: float) -> list[float]:
    """The ratios of a :func:`stopping_scan` where stopping early wins: an interior optimum
    (t* before ``t_last - 1``) whose test error is below that of the better equilibrium
    (:eq:`ndk-nngp-equilibrium`, :eq:`ndk-ntk-solution` of :doc:`/book/neural_dynamical_kernel`)
    by more than ten times the solver error bound.
    """
    return [ratio for ratio, v in scan.items()
            if v["t_best"] < t_last - 1 and min(v["ntk"], v["gp"]) - v["best"] > 10 * v["error"]]


def predictor_variance(x_train, x, times, *, activation: str = "relu", depth: int = 1,
                       temperature: float, prior_variance: float, init_variance: float,
                       device=None, dtype=None) -> torch.Tensor:
    """Var f(x, t) of one network around the mean predictor at the inputs ``x``, on the nodes of ``times``.

    At infinite width each network obeys f(x, t) = f_0(x, t) + int_0^t K_d(t, s, x, X) [y - f_train(s)] ds,
    the linear response behind :eq:`ndk-volterra-train` and :eq:`ndk-volterra-test` of
    :doc:`/book/neural_dynamical_kernel`, where f_0 is the prior output, a Gaussian process of covariance
    C(t, t') K^L(t, t', x, x'). The fluctuation is linear in f_0 and does not depend on the labels
    (:eq:`ndk-predictor-variance`): with the product trapezoid rule of :func:`solve_volterra` (A for the
    training NDK, B for the test one, each row weighted by the trapezoid rule of int_0^{t_i}),
    df(x) = df0(x) - B (I + A)^{-1} df0_train. At t = 0 this is the prior variance; at long times it
    tends to the NNGP posterior variance K_GP(x, x) - k^T (K_GP + T I)^{-1} k.

    ``x_train`` (P, N_0), ``x`` (M, N_0), ``times`` a grid from 0 (second order in uniform steps).
    Cost: one (nP x nP) LU solve and O(n^3 P^2 M) products for n nodes. Returns (n, M).
    """
    device, dtype = placement(device, dtype, x_train, x, times)
    x_train, x = _inputs(x_train, "x_train", device, dtype), _inputs(x, "x", device, dtype)
    times = _check_grid(times, device, dtype)
    n, p, m = times.numel(), x_train.shape[0], x.shape[0]
    inputs = torch.cat([x_train, x])
    kernels = two_time_kernels(inputs, inputs, times[:, None], times[None, :], activation=activation,
                               depth=depth, temperature=temperature, prior_variance=prior_variance,
                               init_variance=init_variance, device=device, dtype=dtype)
    node = torch.tril(trapezoid_weights(times).expand(n, n)).clone()   # row i: int_0^{t_i}
    node.diagonal()[1:] = torch.diff(times) / 2
    node[0, 0] = 0.0
    weighted = node[:, :, None, None] * kernels.ndk[:, :, :, :p]          # (n, n, P + M, P)
    system = torch.eye(n * p, device=device, dtype=dtype) + weighted[:, :, :p].permute(
        0, 2, 1, 3).reshape(n * p, n * p)
    test_kernel = weighted[:, :, p:].permute(0, 2, 1, 3).reshape(n * m, n * p)
    prior = kernels.output_covariance.permute(0, 2, 1, 3)                 # (n, P + M, n, P + M)
    prior_train = prior[:, :p, :, :p].reshape(n * p, n * p)
    prior_cross = prior[:, :p, :, p:].reshape(n * p, n * m)
    prior_test = prior[:, p:, :, p:].reshape(n * m, n * m).diagonal()
    gain = torch.linalg.solve(system.T, test_kernel.T).T                  # B (I + A)^{-1}
    variance = (prior_test - 2 * (gain * prior_cross.T).sum(1)
                + ((gain @ prior_train) * gain).sum(1))
    return variance.reshape(n, m)


__all__ = ["ACTIVATIONS", "PARAMETERIZATIONS", "Kernels", "LangevinRun", "activation_functions",
           "decorrelated_kernel",
           "drift_kernels", "drift_predictor", "gaussian_maps", "init_networks", "input_gram",
           "kernels_from_gram", "langevin_step", "loss_gradients", "network_forward",
           "nngp_equilibrium", "ntk_predictor", "output_gradients", "prior_correlation",
           "sample_prior_pair", "simulate_langevin", "solve_volterra", "static_kernels",
           "symmetric_task_kernels", "synthetic_task", "trapezoid_weights", "two_time_kernels",
           "volterra_double_loop", "simulate_step_halving", "join_runs", "pair_moments",
           "width_extrapolation", "time_grid", "refine", "extrapolate_trapezoid", "symmetric_solution",
           "empirical_kernels", "fluctuation_dissipation_sides", "integrated_ndk", "threshold_accuracy",
           "digit_pair",
           "frozen_predictors", "stopping_scan", "winning_ratios", "predictor_variance",
           "two_width_runs"]
