"""Chapter 4 (weight fluctuations in linear networks): kernels for the stationary regime of SGD.

Equation labels (``ln-...``) refer to ``book/linear_network_fluctuations.ipynb``. The chapter
follows Gross, Raulf and Räth (2024) for single- and two-layer linear networks on Gaussian data with
noisy labels, and Feng and Tu (2021) for the variance and flatness measurements.

Conventions: a minibatch gradient is the mean of ``batch_size`` per-sample gradients of
``l = |f(x) - y|^2 / 2``; a *noise covariance* ``D`` is normalised so that the minibatch gradient
has covariance ``D / batch_size``; covariances of the weights are about the minimum (the stationary
mean of a linear model is exactly the minimum). Parameters of a two-layer network
``f = W2 W1 x`` are flattened as ``[W1.flatten(), W2.flatten()]`` (row-major).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import scipy.integrate
import scipy.linalg
import torch

from .backend import (
    as_tensor,
    check_count,
    check_covariance,
    check_positive,
    check_shape,
    make_generator,
    placement,
)
from .ensemble import replica_mean_and_error, run_ensemble

#: The orders of ``stationary_covariance``: the Lyapunov continuum, its next order in eta, the
#: stochastic modified equation, the exact discrete fixed point (= second-order Kramers-Moyal).
ORDERS = ("continuum", "next_order", "sme", "discrete")


# --------------------------------------------------------------------------------------------------
# Gradient-noise covariance
# --------------------------------------------------------------------------------------------------


def online_noise_covariance(weights, teacher, input_covariance, label_noise_variance, *,
                            device=None, dtype=None) -> torch.Tensor:
    """Per-sample gradient covariance of online linear regression, Eq. (ln-online-noise).

    ``C(w) = H v v^T H + (v^T H v + sigma^2) H`` with ``v = w - w*`` and ``H = Sigma`` (Gaussian
    inputs ``x ~ N(0, Sigma)``, labels ``y = w*^T x + sigma eps``). ``weights`` may carry leading
    batch axes ``(..., N)``; returns ``(..., N, N)``.
    """
    device, dtype = placement(device, dtype, weights, teacher, input_covariance, label_noise_variance)
    sigma = check_covariance(as_tensor(input_covariance, "input_covariance", device=device,
                                       dtype=dtype), "input_covariance")
    n = sigma.shape[-1]
    w = check_shape(as_tensor(weights, "weights", device=device, dtype=dtype), (n,), "weights")
    w_star = check_shape(as_tensor(teacher, "teacher", device=device, dtype=dtype), (n,), "teacher")
    noise = check_positive(label_noise_variance, "label_noise_variance", allow_zero=True)
    hv = (w - w_star) @ sigma
    quadratic = (hv * (w - w_star)).sum(-1)
    return hv[..., :, None] * hv[..., None, :] + (quadratic + noise)[..., None, None] * sigma


def sampling_factor(n_samples: int, batch_size: int, replacement: bool) -> float:
    """``(P - B) / (P - 1)`` for minibatches without replacement, else 1 (Eq. ln-finite-noise)."""
    check_count(n_samples, "n_samples", minimum=2)
    check_count(batch_size, "batch_size")
    if replacement:
        return 1.0
    if batch_size > n_samples:
        raise ValueError(f"batch_size={batch_size} exceeds n_samples={n_samples} "
                         "(minibatches without replacement)")
    return (n_samples - batch_size) / (n_samples - 1)


def empirical_noise_covariance(weights, inputs, labels, *, batch_size: int = 1,
                               replacement: bool = True, device=None, dtype=None) -> torch.Tensor:
    """Gradient-noise covariance on a finite data set, Eq. (ln-finite-noise).

    ``D = c [ (1/P) sum_mu g_mu g_mu^T - grad L grad L^T ]`` with ``g_mu = x_mu (x_mu^T w - y_mu)``
    and ``c = (P - B)/(P - 1)`` without replacement (``c = 1`` with), so that the minibatch gradient
    has covariance ``D / B``. ``weights`` ``(..., N)``, ``inputs`` ``(P, N)``, ``labels`` ``(P,)``.
    """
    device, dtype = placement(device, dtype, weights, inputs, labels)
    x, y = _data(inputs, labels, device, dtype)
    w = check_shape(as_tensor(weights, "weights", device=device, dtype=dtype), (x.shape[1],),
                    "weights")
    factor = sampling_factor(x.shape[0], batch_size, replacement)
    residuals = w @ x.T - y  # (..., P)
    per_sample = residuals[..., :, None] * x  # (..., P, N)
    mean = per_sample.mean(-2)
    second = per_sample.transpose(-1, -2) @ per_sample / x.shape[0]
    return factor * (second - mean[..., :, None] * mean[..., None, :])


def least_squares_minimum(inputs, labels, *, device=None, dtype=None):
    """The minimum ``w_LS`` of the empirical loss and residuals ``r = y - X w_LS`` (needs P > N)."""
    device, dtype = placement(device, dtype, inputs, labels)
    x, y = _data(inputs, labels, device, dtype)
    if x.shape[0] <= x.shape[1]:
        raise ValueError(f"inputs has shape {tuple(x.shape)}: the minimum is unique only for P > N")
    w = torch.linalg.lstsq(x, y[:, None]).solution[:, 0]
    return w, y - x @ w


# --------------------------------------------------------------------------------------------------
# Stationary covariance: Lyapunov equation, next order, exact discrete time
# --------------------------------------------------------------------------------------------------


def solve_lyapunov(hessian, noise, eta: float = 1.0, batch_size: int = 1, *, method: str = "eigen",
                   device=None, dtype=None) -> torch.Tensor:
    """Solve ``H S + S H = (eta / B) D``, Eq. (ln-lyapunov), for symmetric positive-definite ``H``.

    ``method="eigen"``: the closed form ``S_ab = (eta/B) D_ab / (lambda_a + lambda_b)`` in the
    eigenbasis of ``H`` (Eq. ln-lyapunov-eigen), batched over leading axes. ``method="scipy"``:
    ``scipy.linalg.solve_continuous_lyapunov`` matrix by matrix (a cross-check, CPU, slow).
    ``noise`` must be symmetric positive semi-definite.
    """
    device, dtype = placement(device, dtype, hessian, noise, eta, batch_size)
    h = check_covariance(as_tensor(hessian, "hessian", device=device, dtype=dtype), "hessian")
    d = as_tensor(noise, "noise", device=device, dtype=dtype)
    check_shape(d, tuple(h.shape[-2:]), "noise")
    check_covariance(d, "noise", strict=False)
    scale = check_positive(eta, "eta") / check_count(batch_size, "batch_size")
    if method == "eigen":
        lam, vec = torch.linalg.eigh(h)
        rotated = vec.transpose(-1, -2) @ d @ vec
        s = scale * rotated / (lam[..., :, None] + lam[..., None, :])
        return vec @ s @ vec.transpose(-1, -2)
    if method == "scipy":
        hb, db = torch.broadcast_tensors(h, d)
        flat_h = hb.reshape(-1, *hb.shape[-2:]).cpu().numpy()
        flat_d = db.reshape(-1, *db.shape[-2:]).cpu().numpy()
        out = np.stack([scipy.linalg.solve_continuous_lyapunov(a, scale * q)
                        for a, q in zip(flat_h, flat_d, strict=True)])
        out = 0.5 * (out + np.swapaxes(out, -1, -2))
        return torch.as_tensor(out, device=device, dtype=dtype).reshape(hb.shape)
    raise ValueError(f"method={method!r}: use 'eigen' or 'scipy'")


def gaussian_feature_fourth_moment(jacobians, *, device=None, dtype=None) -> torch.Tensor:
    """``M`` with ``M(S) = E[G S G]``, ``G = J_z^T J_z``, ``J_z = sum_n z_n J_n``, ``z ~ N(0, I)``.

    Isserlis' theorem gives ``M(S) = H S H + sum_nm A_nm S A_nm + sum_nm A_nm S A_mn`` with
    ``A_nm = J_n^T J_m`` and ``H = sum_n A_nn`` (Eqs. ln-isserlis, ln-discrete). ``jacobians``
    has shape ``(n_inputs, n_outputs, d)``; returns the ``(d, d, d, d)`` tensor ``M[i, j, p, q]``
    acting as ``M(S)_ij = sum_pq M[i, j, p, q] S_pq``. A linear model ``w^T x`` with
    ``x = L z`` has ``J_n = L[:, n]^T`` and ``M(S) = 2 H S H + tr(H S) H`` (Eq. ln-online-noise).
    """
    device, dtype = placement(device, dtype, jacobians)
    j = as_tensor(jacobians, "jacobians", device=device, dtype=dtype)
    if j.dim() != 3:
        raise ValueError(f"jacobians has shape {tuple(j.shape)}, expected (n_inputs, n_outputs, d)")
    a = torch.einsum("nki,mkj->nmij", j, j)  # A_nm = J_n^T J_m
    h = torch.einsum("nnij->ij", a)
    return (torch.einsum("ip,qj->ijpq", h, h) + torch.einsum("nmip,nmqj->ijpq", a, a)
            + torch.einsum("nmip,mnqj->ijpq", a, a))


def online_fourth_moment(input_covariance, *, device=None, dtype=None) -> torch.Tensor:
    """``M(S) = E[x x^T S x x^T] = 2 Sigma S Sigma + tr(Sigma S) Sigma`` (Eq. ln-isserlis)."""
    device, dtype = placement(device, dtype, input_covariance)
    sigma = check_covariance(as_tensor(input_covariance, "input_covariance", device=device,
                                       dtype=dtype), "input_covariance")
    root = torch.linalg.cholesky(sigma)
    return gaussian_feature_fourth_moment(root.T[:, None, :], device=device, dtype=dtype)


def empirical_fourth_moment(inputs, *, device=None, dtype=None) -> torch.Tensor:
    """``M(S) = (1/P) sum_mu x_mu x_mu^T S x_mu x_mu^T`` as an (N, N, N, N) tensor.

    Eq. (ln-finite-exact).
    """
    device, dtype = placement(device, dtype, inputs)
    x = as_tensor(inputs, "inputs", device=device, dtype=dtype)
    if x.dim() != 2:
        raise ValueError(f"inputs has shape {tuple(x.shape)}, expected (P, N)")
    return torch.einsum("ui,up,uq,uj->ijpq", x, x, x, x) / x.shape[0]


def stationary_covariance(hessian, noise, eta: float, batch_size: int = 1, *,
                          order: str = "continuum", fourth_moment=None, factor: float = 1.0,
                          device=None, dtype=None) -> torch.Tensor:
    """Stationary second moment ``S`` of SGD near a minimum of a quadratic loss.

    ``D`` is the noise covariance at the minimum normalised as in :func:`empirical_noise_covariance`
    (minibatch covariance ``D / B``, sampling factor included), ``c = factor`` the sampling factor
    (:func:`sampling_factor`; 1 online or with replacement) and ``M`` the fourth-moment operator,
    ``M(S) = E[G S G]`` (:func:`gaussian_feature_fourth_moment`, :func:`empirical_fourth_moment`):

    * ``order="continuum"``: ``H S + S H = (eta/B) D`` (Eq. ln-lyapunov);
    * ``order="next_order"``: ``H S + S H = (eta/B) [c (M(S) - H S H) + D]`` (Eq. ln-next-order);
    * ``order="sme"``: the same with the modified drift ``-(H + eta H^2 / 2) v`` of the stochastic
      modified equation, ``H S + S H + (eta/2)(H^2 S + S H^2) = (eta/B) [c (M(S) - H S H) + D]``
      (Eq. ln-sme);
    * ``order="discrete"``: ``H S + S H - eta H S H = (eta/B) [c (M(S) - H S H) + D]``, the exact
      fixed point of the second-moment recursion of SGD (Eq. ln-discrete), which is also the
      stationary point of the second-order Kramers-Moyal equation with ``beta = E[f f^T]``
      (Eq. ln-kramers-moyal).

    ``H`` may be singular (positive semi-definite): the equations are solved on its range, and the
    null-space block, which these equations leave undetermined, is returned as zero.
    """
    device, dtype = placement(device, dtype, hessian, noise, eta, batch_size)
    if order not in ORDERS:
        raise ValueError(f"order={order!r}: use one of {ORDERS}")
    h = check_covariance(as_tensor(hessian, "hessian", device=device, dtype=dtype), "hessian",
                         strict=False)
    if h.dim() != 2:
        raise ValueError(f"hessian has shape {tuple(h.shape)}; stationary_covariance takes one "
                         "matrix (use solve_lyapunov for batches)")
    d = as_tensor(noise, "noise", device=device, dtype=dtype)
    check_shape(d, tuple(h.shape), "noise")
    check_covariance(d, "noise", strict=False)
    scale = check_positive(eta, "eta") / check_count(batch_size, "batch_size")
    factor = check_positive(factor, "factor", allow_zero=True)
    lam, vec = torch.linalg.eigh(h)
    keep = lam > 1e3 * torch.finfo(dtype).eps * lam.abs().max().clamp_min(1e-300)
    basis = vec[:, keep]
    lam_r = lam[keep]
    d_r = basis.T @ d @ basis
    if order == "continuum":
        s_r = scale * d_r / (lam_r[:, None] + lam_r[None, :])
        return basis @ s_r @ basis.T
    if fourth_moment is None:
        raise ValueError(f"order={order!r} needs fourth_moment (the operator M of the docstring)")
    n = h.shape[-1]
    m = check_shape(as_tensor(fourth_moment, "fourth_moment", device=device, dtype=dtype),
                    (n, n, n, n), "fourth_moment")
    m_r = torch.einsum("ia,jb,ijpq,pc,qd->abcd", basis, basis, m, basis, basis)
    r = basis.shape[1]
    eye = torch.eye(r, device=device, dtype=dtype)
    h_r = torch.diag(lam_r)
    hh = torch.einsum("ac,db->abcd", h_r, h_r)  # (H S H)_ab
    lin = torch.einsum("ac,bd->abcd", h_r, eye) + torch.einsum("ac,bd->abcd", eye, h_r)
    if order == "discrete":
        lin = lin - eta * hh
    if order == "sme":
        h_sq = h_r @ h_r
        lin = lin + 0.5 * eta * (torch.einsum("ac,bd->abcd", h_sq, eye)
                                 + torch.einsum("ac,bd->abcd", eye, h_sq))
    operator = lin - scale * factor * (m_r - hh)
    s_r = torch.linalg.solve(operator.reshape(r * r, r * r), scale * d_r.reshape(r * r))
    s_r = s_r.reshape(r, r)
    s_r = 0.5 * (s_r + s_r.T)
    return basis @ s_r @ basis.T


def probability_current_matrix(hessian, noise, covariance, eta: float = 1.0,
                               batch_size: int = 1, *, device=None, dtype=None) -> torch.Tensor:
    """``Omega = -H + (eta/2B) D S^{-1}``: the stationary current is ``J(v) = Omega v p(v)``.

    Eq. (ln-current): ``Omega = 0`` (detailed balance) exactly when ``[H, D] = 0``.
    """
    device, dtype = placement(device, dtype, hessian, noise, covariance, eta, batch_size)
    h = check_covariance(as_tensor(hessian, "hessian", device=device, dtype=dtype), "hessian")
    d = check_covariance(as_tensor(noise, "noise", device=device, dtype=dtype), "noise",
                         strict=False)
    s = check_covariance(as_tensor(covariance, "covariance", device=device, dtype=dtype),
                         "covariance")
    scale = check_positive(eta, "eta") / check_count(batch_size, "batch_size")
    return -h + 0.5 * scale * torch.linalg.solve(s, d.transpose(-1, -2)).transpose(-1, -2)


def probability_current(points, hessian, noise, covariance, eta: float = 1.0,
                        batch_size: int = 1, *, device=None, dtype=None) -> torch.Tensor:
    """The stationary probability current ``J(v) = Omega v p(v)`` at ``points`` ``(..., N)``.

    ``p`` is the centred Gaussian with covariance ``covariance`` (Eq. ln-current).
    """
    device, dtype = placement(device, dtype, points, hessian, noise, covariance, eta, batch_size)
    omega = probability_current_matrix(hessian, noise, covariance, eta, batch_size, device=device,
                                       dtype=dtype)
    s = as_tensor(covariance, "covariance", device=device, dtype=dtype)
    v = check_shape(as_tensor(points, "points", device=device, dtype=dtype), (s.shape[-1],),
                    "points")
    density = torch.distributions.MultivariateNormal(torch.zeros_like(s[0]), covariance_matrix=s)
    return (v @ omega.T) * density.log_prob(v).exp()[..., None]


# --------------------------------------------------------------------------------------------------
# Ensemble SGD with running moments
# --------------------------------------------------------------------------------------------------


@dataclass
class StationaryMoments:
    """Per-replica time averages over the measurement window of a long SGD run.

    ``second_moment[r]`` is the average of ``delta delta^T`` and ``mean[r]`` that of ``delta``,
    where ``delta`` is the flattened distance of replica ``r`` from the reference point (the
    minimum). Memory is ``O(R d^2)`` (plus a buffer of ``noise_chunk`` steps) whatever the number
    of steps. ``records`` holds what the optional ``observe`` callback returned at the steps
    ``steps`` of the measurement window.
    """

    second_moment: torch.Tensor
    mean: torch.Tensor
    n_steps: int
    diverged: torch.Tensor
    state: object
    steps: np.ndarray
    records: dict

    def covariance_estimate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Replica mean of the second moments and its standard error (surviving replicas only)."""
        return replica_mean_and_error(self.second_moment[~self.diverged])


def _accumulating_run(update, state, reference, n_steps, burn_in, noise, noise_chunk, generator,
                      observe=None, record=None) -> StationaryMoments:
    """Burn in, then run ``n_steps`` more while summing ``delta`` and ``delta delta^T`` in place."""
    check_count(n_steps, "n_steps")
    check_count(burn_in, "burn_in", minimum=0)
    if burn_in:
        state = run_ensemble(update, state, burn_in, record=[burn_in], observe=lambda s: {},
                             noise=noise, noise_chunk=noise_chunk, check_every=64,
                             generator=generator).state
    first = state[0] if isinstance(state, tuple) else state
    n_replicas = first.shape[0]

    def flat(s):
        parts = s if isinstance(s, tuple) else (s,)
        return torch.cat([p.reshape(n_replicas, -1) for p in parts], 1) - reference

    delta = flat(state)
    total = torch.zeros_like(delta)
    total_outer = torch.zeros(n_replicas, delta.shape[1], delta.shape[1], dtype=delta.dtype,
                              device=delta.device)
    buffer = torch.empty(noise_chunk, *delta.shape, dtype=delta.dtype, device=delta.device)
    filled = [0]

    def flush():
        block = buffer[:filled[0]]
        total.add_(block.sum(0))
        total_outer.add_(torch.einsum("krd,kre->rde", block, block))
        filled[0] = 0

    def step(s, drawn):
        new = update(s, drawn)
        buffer[filled[0]] = flat(new)
        filled[0] += 1
        if filled[0] == noise_chunk:
            flush()
        return new

    result = run_ensemble(step, state, n_steps,
                          record=[n_steps] if record is None else record,
                          observe=observe or (lambda s: {}), noise=noise, noise_chunk=noise_chunk,
                          check_every=64, generator=generator)
    flush()
    return StationaryMoments(second_moment=total_outer / n_steps, mean=total / n_steps,
                             n_steps=n_steps, diverged=result.diverged, state=result.state,
                             steps=result.steps, records=result.records)


def online_single_layer_sgd(input_covariance, label_noise_variance: float, eta: float,
                            batch_size: int, n_replicas: int, n_steps: int, burn_in: int, *,
                            generator=None, noise_chunk: int = 128, device=None,
                            dtype=None) -> StationaryMoments:
    """R replicas of online SGD on ``w^T x`` (fresh samples every step), discrete form of (ln-sde).

    The teacher drops out of the dynamics of ``v = w - w*``: replicas start at ``v = 0``, run
    ``burn_in`` steps, then accumulate the moments of ``v`` over ``n_steps`` steps.
    """
    device, dtype = placement(device, dtype, input_covariance)
    sigma = check_covariance(as_tensor(input_covariance, "input_covariance", device=device,
                                       dtype=dtype), "input_covariance")
    noise_std = math.sqrt(check_positive(label_noise_variance, "label_noise_variance",
                                         allow_zero=True))
    eta = check_positive(eta, "eta")
    batch = check_count(batch_size, "batch_size")
    replicas = check_count(n_replicas, "n_replicas", minimum=2)
    n = sigma.shape[-1]
    root = torch.linalg.cholesky(sigma)
    generator = make_generator(device=device) if generator is None else generator

    def draw(k, gen):
        z = _standard_normal((k, replicas, batch, n + 1), gen, device, dtype)
        return torch.cat([z[..., :n] @ root.T, noise_std * z[..., n:]], -1)

    def update(v, drawn):
        x, eps = drawn[..., :n], drawn[..., n]
        residual = (x @ v[:, :, None])[..., 0] - eps  # (R, B)
        return v - (eta / batch) * (residual[:, None, :] @ x)[:, 0, :]

    v0 = torch.zeros(replicas, n, device=device, dtype=dtype)
    return _accumulating_run(update, v0, torch.zeros(n, device=device, dtype=dtype), n_steps,
                             burn_in, draw, check_count(noise_chunk, "noise_chunk"), generator)


def finite_data_single_layer_sgd(inputs, labels, eta: float, batch_size: int, n_replicas: int,
                                 n_steps: int, burn_in: int, *, replacement: bool = True,
                                 generator=None, noise_chunk: int = 128, device=None,
                                 dtype=None) -> StationaryMoments:
    """R replicas of minibatch SGD on a fixed data set (Eq. ln-finite-noise), about ``w_LS``.

    Minibatches are drawn independently at each step, with or without replacement within a batch.
    """
    device, dtype = placement(device, dtype, inputs, labels)
    x, y = _data(inputs, labels, device, dtype)
    w_min, residuals = least_squares_minimum(x, y, device=device, dtype=dtype)
    eta = check_positive(eta, "eta")
    batch = check_count(batch_size, "batch_size")
    replicas = check_count(n_replicas, "n_replicas", minimum=2)
    n_samples = x.shape[0]
    sampling_factor(n_samples, batch, replacement)
    generator = make_generator(device=device) if generator is None else generator

    def draw(k, gen):
        if replacement:
            return torch.randint(n_samples, (k, replicas, batch), generator=gen, device=device)
        keys = torch.rand(k, replicas, n_samples, generator=gen, device=device)
        return keys.argsort(-1)[..., :batch]

    def update(v, index):
        xb, rb = x[index], residuals[index]  # (R, B, N), (R, B)
        residual = (xb @ v[:, :, None])[..., 0] - rb
        return v - (eta / batch) * (residual[:, None, :] @ xb)[:, 0, :]

    v0 = torch.zeros(replicas, x.shape[1], device=device, dtype=dtype)
    moments = _accumulating_run(update, v0, torch.zeros_like(w_min), n_steps, burn_in,
                                draw, check_count(noise_chunk, "noise_chunk"), generator)
    moments.state = moments.state + w_min
    return moments


def two_layer_sgd(w1, w2, teacher, label_noise_variance: float, eta: float, batch_size: int,
                  n_replicas: int, n_steps: int, burn_in: int, *, input_covariance=None,
                  observe: Callable | None = None, record=None, linearised: bool = False,
                  generator=None, noise_chunk: int = 128, device=None,
                  dtype=None) -> StationaryMoments:
    """R replicas of online SGD on ``f = W2 W1 x`` started at ``(w1, w2)``.

    Implements :eq:`ln-two-layer-sgd` of :doc:`/book/linear_network_fluctuations`. Moments are of
    the flattened ``[W1 - w1, W2 - w2]``. ``observe(state)`` (a dict of small per-replica tensors)
    is recorded at the steps ``record`` of the measurement window. ``linearised=True`` runs SGD on
    the network linearised at ``(w1, w2)``, ``f = W2 w1 x + w2 W1 x - w2 w1 x`` (Gaussian features
    ``J_x`` of :eq:`ln-two-layer-hessian`); with the same ``generator`` seed both runs see the same
    samples, so their difference measures the nonlinearity with common random numbers.
    """
    device, dtype = placement(device, dtype, w1, w2, teacher)
    w1 = as_tensor(w1, "w1", device=device, dtype=dtype)
    w2 = as_tensor(w2, "w2", device=device, dtype=dtype)
    teacher = as_tensor(teacher, "teacher", device=device, dtype=dtype)
    if w1.dim() != 2 or w2.dim() != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} must be (M, N) and (K, M)")
    k_out, n = w2.shape[0], w1.shape[1]
    check_shape(teacher, (k_out, n), "teacher")
    sigma = _input_covariance(input_covariance, n, device, dtype)
    root = torch.linalg.cholesky(sigma)
    noise_std = math.sqrt(check_positive(label_noise_variance, "label_noise_variance",
                                         allow_zero=True))
    eta = check_positive(eta, "eta")
    batch = check_count(batch_size, "batch_size")
    replicas = check_count(n_replicas, "n_replicas", minimum=2)
    generator = make_generator(device=device) if generator is None else generator

    def draw(k, gen):
        z = _standard_normal((k, replicas, batch, n + k_out), gen, device, dtype)
        return torch.cat([z[..., :n] @ root.T, noise_std * z[..., n:]], -1)

    def update(state, drawn):
        a1, a2 = state
        x, eps = drawn[..., :n], drawn[..., n:]
        if linearised:  # output (a2 w1 + w2 a1 - w2 w1) x, gradients through w1 and w2
            error = x @ (a2 @ w1 + w2 @ a1 - w2 @ w1 - teacher).transpose(1, 2) - eps
            hidden, back = x @ w1.T, w2.T
        else:
            hidden = x @ a1.transpose(1, 2)  # (R, B, M)
            error = hidden @ a2.transpose(1, 2) - x @ teacher.T - eps  # (R, B, K)
            back = a2.transpose(1, 2)
        grad2 = error.transpose(1, 2) @ hidden / batch  # (R, K, M)
        grad1 = back @ error.transpose(1, 2) @ x / batch  # (R, M, N)
        return a1 - eta * grad1, a2 - eta * grad2

    start = (w1.expand(replicas, *w1.shape).clone(), w2.expand(replicas, *w2.shape).clone())
    reference = torch.cat([w1.flatten(), w2.flatten()])
    return _accumulating_run(update, start, reference, n_steps, burn_in, draw,
                             check_count(noise_chunk, "noise_chunk"), generator, observe=observe,
                             record=record)


# --------------------------------------------------------------------------------------------------
# Two layers: balanced minimum, projector covariance, per-mode variances
# --------------------------------------------------------------------------------------------------


def balanced_minimum(teacher, input_covariance=None, *, device=None, dtype=None):
    """The zero-balanced minimum ``W2 = U s^1/2``, ``W1 = s^1/2 V^T Sigma^-1/2`` (Eq. ln-balanced).

    ``teacher Sigma^{1/2} = U diag(s) V^T`` (hidden width ``M = min(K, N)``, rotation ``R = I``).
    Returns ``(w1, w2, s, U, V)``.
    """
    device, dtype = placement(device, dtype, teacher, input_covariance)
    w_star = as_tensor(teacher, "teacher", device=device, dtype=dtype)
    if w_star.dim() != 2:
        raise ValueError(f"teacher has shape {tuple(w_star.shape)}, expected (K, N)")
    sigma = _input_covariance(input_covariance, w_star.shape[1], device, dtype)
    lam, vec = torch.linalg.eigh(sigma)
    root = vec @ torch.diag(lam.sqrt()) @ vec.T
    inverse_root = vec @ torch.diag(lam.rsqrt()) @ vec.T
    u, s, vt = torch.linalg.svd(w_star @ root, full_matrices=False)
    w2 = u * s.sqrt()
    w1 = s.sqrt()[:, None] * vt @ inverse_root
    return w1, w2, s, u, vt.T


def two_layer_jacobians(w1, w2, input_covariance=None, *, device=None, dtype=None) -> torch.Tensor:
    """``J_n`` of ``f = W2 W1 x`` with ``x = L z``: shape ``(N, K, d)``, ``d = MN + KM``.

    ``J_z v = (dW2 W1 + W2 dW1) L z = sum_n z_n J_n v``; the Hessian of the online loss at a
    realizable minimum is ``H = sum_n J_n^T J_n`` (Eq. ln-two-layer-hessian).
    """
    device, dtype = placement(device, dtype, w1, w2, input_covariance)
    w1 = as_tensor(w1, "w1", device=device, dtype=dtype)
    w2 = as_tensor(w2, "w2", device=device, dtype=dtype)
    if w1.dim() != 2 or w2.dim() != 2 or w2.shape[1] != w1.shape[0]:
        raise ValueError(f"w1 {tuple(w1.shape)} and w2 {tuple(w2.shape)} must be (M, N) and (K, M)")
    (m, n), k = w1.shape, w2.shape[0]
    root = torch.linalg.cholesky(_input_covariance(input_covariance, n, device, dtype))
    eye_k = torch.eye(k, device=device, dtype=dtype)
    w1l = w1 @ root  # (M, N)
    # d f_kn / d W1[a, b] = W2[k, a] L[b, n];  d f_kn / d W2[c, a] = delta_kc (W1 L)[a, n]
    d_w1 = torch.einsum("ka,bn->nkab", w2, root).reshape(n, k, m * n)
    d_w2 = torch.einsum("kc,an->nkca", eye_k, w1l).reshape(n, k, k * m)
    return torch.cat([d_w1, d_w2], -1)


def second_layer_modes(u, n_inputs: int) -> torch.Tensor:
    """Flattened parameter vectors of the second-layer modes ``u_i e_a^T`` (first-layer part zero).

    ``u`` is the ``(K, M)`` matrix of left singular vectors from :func:`balanced_minimum` (rotation
    ``R = I``, so ``r_a = e_a``); returns a ``(M * M, M * n_inputs + K * M)`` tensor whose row
    ``i * M + a`` is the mode ``(i, a)`` of Eq. (ln-mode-variance).
    """
    k, m = u.shape
    eye = torch.eye(m, device=u.device, dtype=u.dtype)
    w2_part = torch.einsum("ki,ab->iakb", u, eye).reshape(m * m, k * m)
    n = check_count(n_inputs, "n_inputs")
    first = torch.zeros(m * m, m * n, device=u.device, dtype=u.dtype)
    return torch.cat([first, w2_part], 1)


def range_projector(jacobians) -> torch.Tensor:
    """``H^+ H = J^T (J J^T)^+ J``: the orthogonal projector on the range of ``H = J^T J``."""
    j = jacobians.reshape(-1, jacobians.shape[-1])
    return j.T @ torch.linalg.pinv(j @ j.T, hermitian=True) @ j


def two_layer_range_covariance(w1, w2, label_noise_variance: float, eta: float,
                               batch_size: int = 1, *, input_covariance=None, device=None,
                               dtype=None) -> torch.Tensor:
    """``S = (eta sigma^2 / 2B) H^+ H`` at a realizable minimum, Eq. (ln-projector)."""
    jac = two_layer_jacobians(w1, w2, input_covariance, device=device, dtype=dtype)
    scale = check_positive(eta, "eta")
    scale *= check_positive(label_noise_variance, "label_noise_variance")
    return scale / (2 * check_count(batch_size, "batch_size")) * range_projector(jac)


def second_layer_mode_variances(singular_values, label_noise_variance: float, eta: float,
                                batch_size: int = 1, *, device=None, dtype=None):
    """Variance and curvature of the second-layer mode ``u_i r_a^T`` at the balanced minimum.

    Eq. (ln-mode-variance): ``Var_ia = (eta sigma^2/2B) s_a / (s_i + s_a)`` and ``kappa_ia = s_a``.
    Returns two ``(K, M)`` tensors (here ``K = M``).
    """
    device, dtype = placement(device, dtype, singular_values, label_noise_variance, eta, batch_size)
    s = as_tensor(singular_values, "singular_values", device=device, dtype=dtype)
    if s.dim() != 1 or not bool((s > 0).all()):
        raise ValueError(f"singular_values must be a vector of positive numbers, got {s.tolist()}")
    scale = check_positive(eta, "eta")
    scale *= check_positive(label_noise_variance, "label_noise_variance")
    scale /= 2 * check_count(batch_size, "batch_size")
    variance = scale * s[None, :] / (s[:, None] + s[None, :])
    return variance, s[None, :].expand_as(variance).clone()


def q_matrix(w1, w2) -> torch.Tensor:
    """``Q = W1 W1^T - W2^T W2`` (Eq. ln-q-identity), batched over leading axes."""
    return w1 @ w1.transpose(-1, -2) - w2.transpose(-1, -2) @ w2


def noise_balancing_drift(w1, w2, label_noise_variance: float, eta: float, batch_size: int = 1, *,
                          device=None, dtype=None) -> torch.Tensor:
    """Mean change of ``Q`` in one SGD step at a realizable minimum, Eq. (ln-q-drift).

    ``E dQ = (eta^2 sigma^2 / B) (N W2^T W2 - K W1 W1^T)`` for online data with ``Sigma = I``,
    where ``W1`` is ``(M, N)`` and ``W2`` is ``(K, M)``; batched over leading axes.
    """
    device, dtype = placement(device, dtype, w1, w2, label_noise_variance, eta, batch_size)
    a1 = as_tensor(w1, "w1", device=device, dtype=dtype)
    a2 = as_tensor(w2, "w2", device=device, dtype=dtype)
    if a1.dim() < 2 or a2.dim() < 2 or a2.shape[-1] != a1.shape[-2]:
        raise ValueError(f"w1 {tuple(a1.shape)} and w2 {tuple(a2.shape)} must be (..., M, N) and "
                         "(..., K, M)")
    scale = check_positive(eta, "eta") ** 2
    scale *= check_positive(label_noise_variance, "label_noise_variance", allow_zero=True)
    scale /= check_count(batch_size, "batch_size")
    n, k = a1.shape[-1], a2.shape[-2]
    return scale * (n * a2.transpose(-1, -2) @ a2 - k * a1 @ a1.transpose(-1, -2))


def balanced_q_flow(singular_values, n_inputs: int, n_outputs: int, slow_times, *, device=None,
                    dtype=None) -> torch.Tensor:
    """``q_a(tau)`` on the manifold of minima, started at the zero-balanced point, Eq. (ln-q-flow).

    Along the minima ``W2 = U diag(beta) R^T``, ``W1 = R diag(alpha) V^T`` with ``alpha beta = s``,
    the drift :func:`noise_balancing_drift` keeps ``Q = diag(q)``, ``q = alpha^2 - beta^2``, and
    ``dq_a / dtau = N beta_a^2 - K alpha_a^2`` in the slow time ``tau = eta^2 sigma^2 k / B``.
    Integrated by ``scipy.integrate.solve_ivp`` (``rtol=1e-11``); returns ``(len(slow_times), M)``.
    Its fixed point is the noise-balanced ``N beta^2 = K alpha^2``.
    """
    device, dtype = placement(device, dtype, singular_values, n_inputs, n_outputs, slow_times)
    s = as_tensor(singular_values, "singular_values", device=device, dtype=dtype)
    if s.dim() != 1 or not bool((s > 0).all()):
        raise ValueError(f"singular_values must be a vector of positive numbers, got {s.tolist()}")
    n, k = check_count(n_inputs, "n_inputs"), check_count(n_outputs, "n_outputs")
    times = np.atleast_1d(np.asarray(slow_times, dtype=np.float64))
    if times.ndim != 1 or np.any(times < 0) or np.any(np.diff(times) < 0):
        raise ValueError(f"slow_times={times.tolist()} must be non-negative and increasing")
    s2 = 4 * s.cpu().numpy() ** 2

    def rate(_, q):
        root = np.sqrt(q**2 + s2)
        return n * (root - q) / 2 - k * (root + q) / 2

    end = float(times[-1]) if times[-1] > 0 else 1.0
    solution = scipy.integrate.solve_ivp(rate, (0.0, end), np.zeros(len(s2)), t_eval=times,
                                         rtol=1e-11, atol=1e-13)
    return torch.as_tensor(solution.y.T, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Feng and Tu's measurements
# --------------------------------------------------------------------------------------------------


def pca_variances(covariance, *, device=None, dtype=None):
    """Principal variances (descending) and directions (columns) of a covariance.

    The PCA step of Feng and Tu's measurement (Eq. ln-flatness).
    """
    device, dtype = placement(device, dtype, covariance)
    c = check_covariance(as_tensor(covariance, "covariance", device=device, dtype=dtype),
                         "covariance", strict=False)
    lam, vec = torch.linalg.eigh(c)
    return lam.flip(-1), vec.flip(-1)


def loss_profile_width(loss: Callable, center, directions, threshold: float, *,
                       max_width: float = 1e3, iterations: int = 80, device=None,
                       dtype=None) -> torch.Tensor:
    """Feng and Tu's flatness: the width of ``L(center + delta p) - L(center) <= threshold``.

    ``directions`` holds unit vectors as columns ``(d, n)``; ``loss`` maps a batch ``(b, d)`` of
    parameter vectors to ``(b,)``. The two crossings ``delta_-, delta_+`` are found by bisection in
    ``[0, max_width]`` (all directions at once) and ``F = delta_+ + delta_-`` (Eq. ln-flatness).
    A quadratic profile of curvature ``h`` gives ``F = 2 sqrt(2 threshold / h)``.
    """
    device, dtype = placement(device, dtype, loss, center, directions, threshold)
    c = as_tensor(center, "center", device=device, dtype=dtype)
    p = as_tensor(directions, "directions", device=device, dtype=dtype)
    check_shape(p, (c.shape[-1], None), "directions")
    level = check_positive(threshold, "threshold")
    base = loss(c[None, :])[0]
    widths = []
    for sign in (1.0, -1.0):
        lo = torch.zeros(p.shape[1], device=device, dtype=dtype)
        hi = torch.full_like(lo, check_positive(max_width, "max_width"))
        for _ in range(check_count(iterations, "iterations")):
            mid = 0.5 * (lo + hi)
            above = loss(c[None, :] + sign * mid[:, None] * p.T) - base > level
            hi, lo = torch.where(above, mid, hi), torch.where(above, lo, mid)
        widths.append(0.5 * (lo + hi))
    return widths[0] + widths[1]


def flatness_exponent(variances, flatness) -> torch.Tensor:
    """The exponent ``psi`` of ``F ~ std^(-psi)``: minus the least-squares slope of ``log F`` on ``log std``.

    Implements :eq:`ln-flatness` of :doc:`/book/linear_network_fluctuations` (the fit of its
    power law). ``variances`` ``(..., n)``, batched over leading axes, and ``flatness`` ``(n,)``.
    """
    v = torch.as_tensor(variances)
    f = torch.as_tensor(flatness, dtype=v.dtype, device=v.device)
    if v.shape[-1] != f.shape[-1] or v.shape[-1] < 2 or bool((v <= 0).any()) or bool((f <= 0).any()):
        raise ValueError(f"variances {tuple(v.shape)} and flatness {tuple(f.shape)} must be positive "
                         "with the same last axis of length >= 2")
    log_std = 0.5 * v.log()
    centred = log_std - log_std.mean(-1, keepdim=True)
    log_f = f.log() - f.log().mean()
    return -(centred * log_f).sum(-1) / (centred**2).sum(-1)


# --------------------------------------------------------------------------------------------------
# The chapter's experiments: data sets, Gibbs guess, step halving, jackknife
# --------------------------------------------------------------------------------------------------


def random_data_sets(n_sets: int, n_inputs: int, n_samples: int, label_noise_variance: float, *,
                     generator=None, device=None, dtype=None):
    """``n_sets`` teacher data sets: ``x ~ N(0, I)``, ``y = w*^T x / sqrt(N) + sigma eps``.

    Implements the data of :eq:`ln-finite-noise` of :doc:`/book/linear_network_fluctuations`
    (a teacher ``w* ~ N(0, I)`` per set). Returns inputs ``(n_sets, P, N)``, labels ``(n_sets, P)``.
    """
    device, dtype = placement(device, dtype, n_sets, n_inputs, n_samples, label_noise_variance)
    sets, n, p = (check_count(n_sets, "n_sets"), check_count(n_inputs, "n_inputs"),
                  check_count(n_samples, "n_samples"))
    noise = math.sqrt(check_positive(label_noise_variance, "label_noise_variance", allow_zero=True))
    generator = make_generator(device=device) if generator is None else generator
    x = torch.randn(sets, p, n, generator=generator, device=device, dtype=dtype)
    teacher = torch.randn(sets, n, generator=generator, device=device, dtype=dtype)
    labels = (x @ teacher[..., None])[..., 0] / math.sqrt(n)
    return x, labels + noise * torch.randn(sets, p, generator=generator, device=device, dtype=dtype)


def hessian_and_noise(inputs, labels, *, device=None, dtype=None):
    """``H = X^T X / P`` and ``D = (1/P) sum r_mu^2 x_mu x_mu^T`` at the least-squares minimum.

    Implements :eq:`ln-finite-noise` of :doc:`/book/linear_network_fluctuations`, batched over
    data sets: ``inputs`` ``(..., P, N)``, ``labels`` ``(..., P)`` with ``P > N``.
    """
    device, dtype = placement(device, dtype, inputs, labels)
    x = as_tensor(inputs, "inputs", device=device, dtype=dtype)
    y = as_tensor(labels, "labels", device=device, dtype=dtype)
    if x.dim() < 2 or y.shape != x.shape[:-1] or x.shape[-2] <= x.shape[-1]:
        raise ValueError(f"inputs {tuple(x.shape)} and labels {tuple(y.shape)} must be (..., P, N) "
                         "and (..., P) with P > N")
    p = x.shape[-2]
    hessian = x.transpose(-1, -2) @ x / p
    w_ls = torch.linalg.solve(hessian, x.transpose(-1, -2) @ y[..., None] / p)
    residuals = y - (x @ w_ls)[..., 0]
    return hessian, (x * residuals[..., None] ** 2).transpose(-1, -2) @ x / p


def leverage_noise_covariance(inputs, label_noise_variance: float, *, device=None, dtype=None):
    """``E_eps D = (sigma^2/P) sum_mu (1 - Pi_mumu) x_mu x_mu^T`` with the hat matrix ``Pi``.

    Implements :eq:`ln-leverage` of :doc:`/book/linear_network_fluctuations`; ``inputs`` ``(P, N)``.
    """
    device, dtype = placement(device, dtype, inputs, label_noise_variance)
    x = as_tensor(inputs, "inputs", device=device, dtype=dtype)
    if x.dim() != 2 or x.shape[0] <= x.shape[1]:
        raise ValueError(f"inputs has shape {tuple(x.shape)}, expected (P, N) with P > N")
    noise = check_positive(label_noise_variance, "label_noise_variance", allow_zero=True)
    leverage = torch.diagonal(x @ torch.linalg.solve(x.T @ x, x.T))
    return noise * (x.T * (1 - leverage)) @ x / x.shape[0]


def spectral_statistics(hessian, noise):
    """``||[H, D]|| / ||H D||`` and the L1 distance of the trace-normalised spectra of ``H``, ``D``.

    Implements the measures of :eq:`ln-leverage` of :doc:`/book/linear_network_fluctuations`:
    both vanish for ``D`` proportional to ``H``, as online. Batched over leading axes.
    """
    h, d = torch.as_tensor(hessian), torch.as_tensor(noise)
    if h.shape != d.shape or h.dim() < 2:
        raise ValueError(f"hessian {tuple(h.shape)} and noise {tuple(d.shape)} must be matrices "
                         "of one shape")
    commutator = torch.linalg.matrix_norm(h @ d - d @ h) / torch.linalg.matrix_norm(h @ d)
    lam_h, lam_d = torch.linalg.eigvalsh(h), torch.linalg.eigvalsh(d)
    distance = (lam_d / lam_d.sum(-1, keepdim=True) - lam_h / lam_h.sum(-1, keepdim=True)).abs()
    return commutator, distance.sum(-1)


def fluctuation_axis_statistics(hessian, covariance) -> dict:
    """Along the principal axes ``u_i`` of ``S``: how the variances ``s_i`` meet the curvature.

    Implements :eq:`ln-principal-axes` of :doc:`/book/linear_network_fluctuations`: returns,
    batched over leading axes, the coefficients of variation ``cv_s`` of ``s_i``, ``cv_h`` of
    ``h_i = u_i^T H u_i`` and ``cv_eig`` of the eigenvalues of ``H``, and ``corr``, the
    correlation of ``log s_i`` with ``log h_i`` (``-1`` for the Gibbs guess :eq:`ln-gibbs`).
    """
    h, s = torch.as_tensor(hessian), torch.as_tensor(covariance)
    variances, axes = pca_variances(s, device=s.device, dtype=s.dtype)
    curvature = torch.einsum("...ai,...ab,...bi->...i", axes, h, axes)
    log_s = variances.log() - variances.log().mean(-1, keepdim=True)
    log_h = curvature.log() - curvature.log().mean(-1, keepdim=True)

    def cv(values):
        return values.std(-1) / values.mean(-1)

    return {"cv_s": cv(variances), "cv_h": cv(curvature), "cv_eig": cv(torch.linalg.eigvalsh(h)),
            "corr": (log_s * log_h).sum(-1) / (log_s.norm(dim=-1) * log_h.norm(dim=-1))}


def gibbs_guess(measured, inverse_hessian, weights=None) -> torch.Tensor:
    """The Gibbs guess ``T H^{-1}`` with the temperature that fits ``measured`` best.

    Implements :eq:`ln-gibbs` of :doc:`/book/linear_network_fluctuations`: ``T`` minimises
    ``sum w (measured - T H^{-1})^2`` (weights ``w``, default 1) over all entries.
    """
    m = torch.as_tensor(measured)
    inverse = torch.as_tensor(inverse_hessian, dtype=m.dtype, device=m.device)
    w = torch.ones_like(m) if weights is None else torch.as_tensor(weights, dtype=m.dtype,
                                                                    device=m.device)
    if m.shape != inverse.shape or w.shape != m.shape:
        raise ValueError(f"measured {tuple(m.shape)}, inverse_hessian {tuple(inverse.shape)} and "
                         f"weights {tuple(w.shape)} must have one shape")
    return (w * m * inverse).sum() / (w * inverse * inverse).sum() * inverse


def richardson(values, errors):
    """Richardson extrapolation to ``eta -> 0`` from runs at ``eta``, ``2 eta`` and ``4 eta``.

    Implements :eq:`ln-richardson` of :doc:`/book/linear_network_fluctuations`. ``values`` and
    ``errors`` are three tensors each (the measurement and its standard error at ``eta``, ``2 eta``,
    ``4 eta``, independent runs). Returns ``(2 m_1 - m_2, its standard error, |remainder|)``, where
    the ``O(eta^2)`` remainder of the extrapolation is measured as
    ``|(2 m_1 - m_2) - (2 m_2 - m_4)| / 3``.
    """
    if len(values) != 3 or len(errors) != 3:
        raise ValueError(f"values and errors need 3 entries each (eta, 2 eta, 4 eta), got "
                         f"{len(values)} and {len(errors)}")
    m1, m2, m4 = (torch.as_tensor(v) for v in values)
    e1, e2 = (torch.as_tensor(e) for e in errors[:2])
    extrapolated, coarser = 2 * m1 - m2, 2 * m2 - m4
    return extrapolated, (4 * e1**2 + e2**2).sqrt(), (extrapolated - coarser).abs() / 3


def jackknife_bias_and_error(samples, statistic: Callable, n_groups: int = 25):
    """Jackknife estimate of ``statistic(mean over replicas)``: its value, standard error and bias.

    Implements the error bars of the axis statistics :eq:`ln-principal-axes` of
    :doc:`/book/linear_network_fluctuations`, which are nonlinear in the covariance. ``statistic``
    maps a batch of means ``(b, ...)`` to ``(b, ...)`` values; returns three tensors of that shape:
    the value at the full mean, the standard error from ``n_groups`` leave-one-group-out means,
    and the bias estimate ``(n_groups - 1) (mean of the leave-outs - value)``.
    """
    x = torch.as_tensor(samples)
    groups = check_count(n_groups, "n_groups", minimum=2)
    if x.shape[0] % groups:
        raise ValueError(f"samples has {x.shape[0]} replicas, not a multiple of n_groups={groups}")
    sums = x.reshape(groups, -1, *x.shape[1:]).sum(1)
    leave_out = (sums.sum(0, keepdim=True) - sums) / (x.shape[0] - x.shape[0] // groups)
    jack = statistic(leave_out)
    value = statistic(x.mean(0, keepdim=True))[0]
    error = ((groups - 1) / groups * ((jack - jack.mean(0)) ** 2).sum(0)).sqrt()
    return value, error, (groups - 1) * (jack.mean(0) - value)


def jackknife_error(samples, statistic: Callable, n_groups: int = 25) -> float:
    """Jackknife standard error of ``statistic(mean over replicas)`` from ``n_groups`` groups.

    Implements the error bar of :eq:`ln-flatness` of :doc:`/book/linear_network_fluctuations`.
    ``samples`` ``(R, ...)`` per replica; ``statistic`` maps a batch of means ``(n_groups, ...)``
    to one number each. ``R`` must be a multiple of ``n_groups``. The error of
    :func:`jackknife_bias_and_error`, as a number.
    """
    return float(jackknife_bias_and_error(samples, statistic, n_groups)[1])


def null_space_msd(reference, null_basis) -> Callable:
    """An ``observe`` callback for :func:`two_layer_sgd`: squared displacement along ``null_basis``.

    Implements the symmetry directions of :eq:`ln-q-identity` of
    :doc:`/book/linear_network_fluctuations`: ``null_basis`` ``(d, n_null)`` has orthonormal
    columns, ``reference`` ``(d,)`` is the flattened minimum.
    """
    ref, basis = torch.as_tensor(reference), torch.as_tensor(null_basis)
    check_shape(basis, (ref.shape[-1], None), "null_basis")

    def observe(state):
        w1, w2 = state
        delta = torch.cat([w1.flatten(1), w2.flatten(1)], 1) - ref
        return {"null_msd": ((delta @ basis) ** 2).sum(1)}

    return observe


def _standard_normal(shape, generator, device, dtype):
    """Standard normals in ``dtype``, drawn in float32 and promoted, on every device alike.

    Drawing in float32 is 4x faster on the CPU; its quantisation (relative 6e-8) is far below any
    Monte Carlo error of the chapter. The same rule on CPU and CUDA keeps the two paths alike.
    """
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(dtype)


def _data(inputs, labels, device, dtype):
    x = as_tensor(inputs, "inputs", device=device, dtype=dtype)
    y = as_tensor(labels, "labels", device=device, dtype=dtype)
    if x.dim() != 2:
        raise ValueError(f"inputs has shape {tuple(x.shape)}, expected (P, N)")
    if y.shape != (x.shape[0],):
        raise ValueError(f"labels has shape {tuple(y.shape)}, expected ({x.shape[0]},) "
                         "to match inputs")
    return x, y


def _input_covariance(input_covariance, n, device, dtype):
    if input_covariance is None:
        return torch.eye(n, device=device, dtype=dtype)
    sigma = as_tensor(input_covariance, "input_covariance", device=device, dtype=dtype)
    check_shape(sigma, (n, n), "input_covariance")
    return check_covariance(sigma, "input_covariance")


__all__ = [
    "ORDERS", "balanced_minimum", "balanced_q_flow", "empirical_fourth_moment",
    "empirical_noise_covariance", "finite_data_single_layer_sgd", "flatness_exponent",
    "fluctuation_axis_statistics", "gaussian_feature_fourth_moment", "gibbs_guess",
    "hessian_and_noise", "jackknife_bias_and_error", "jackknife_error", "least_squares_minimum",
    "leverage_noise_covariance", "loss_profile_width", "noise_balancing_drift", "null_space_msd",
    "online_fourth_moment", "online_noise_covariance", "online_single_layer_sgd", "pca_variances",
    "probability_current", "probability_current_matrix", "q_matrix", "random_data_sets",
    "range_projector", "richardson", "sampling_factor", "second_layer_mode_variances",
    "second_layer_modes", "solve_lyapunov", "spectral_statistics", "stationary_covariance",
    "StationaryMoments", "two_layer_jacobians", "two_layer_range_covariance", "two_layer_sgd",
]
