"""Integration of flow (moment) equations: a batched RK4 in torch and a thin ``solve_ivp`` wrapper.

Also the moment closure of chapter 1 (Eqs. 10-11 of Schmid & Murray): for an update rule
``w <- w + eta f(w, noise)`` with mean update ``F(w) = <f>(w)``, to second order in the fluctuations

    d<w_i>/dt   = F_i(<w>) + 1/2 sum_kl C_kl d_k d_l F_i(<w>)                      (1.10)
    dC_ij/dt    = sum_k [C_ik d_k F_j(<w>) + C_jk d_k F_i(<w>)]  (+ eta B_ij(<w>))  (1.11)

with time measured in units of ``eta`` steps. The bracketed diffusion term is the next order in eta,
the noise covariance ``B = <f f^T> - F F^T``; the first-order (Liouville) equations leave it out.
The closure drops terms of order C^2 (third moments, and fourth moments ``<delta^4> = 3 C^2`` even for
a Gaussian cloud). To test it without trusting it, the module also carries a Gauss-Hermite grid along
the flow (the exact Liouville solution, :func:`carry_gaussian`), evaluates the dropped terms on that
cloud (:func:`closure_remainder`) and carries them along the linearized flow
(:func:`linear_transport`); :func:`step_doubling` and :func:`control_variate` turn an ensemble into
estimates with their O(eta) allowance and standard errors.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .backend import as_tensor, check_count, check_covariance, check_shape

Drift = Callable[[torch.Tensor], torch.Tensor]


def rk4(rhs: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, times,
        *, substeps: int = 1) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta for ``dy/dt = rhs(t, y)``, batched over any shape of ``y``.

    ``times`` is an increasing grid; ``substeps`` RK4 steps are taken between neighbouring grid points.
    Returns the solution at every grid point, shape ``(len(times), *y0.shape)``. Global error
    O(h^4) with ``h = dt / substeps``.
    """
    check_count(substeps, "substeps")
    grid = np.asarray(times.cpu() if isinstance(times, torch.Tensor) else times, dtype=float)
    if grid.ndim != 1 or grid.size < 1 or np.any(np.diff(grid) <= 0) or not np.all(np.isfinite(grid)):
        raise ValueError(f"times must be a finite, strictly increasing 1-d grid; got {grid!r}")
    if not isinstance(y0, torch.Tensor):
        raise ValueError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
    out = [y0]
    y = y0
    for t0, t1 in zip(grid[:-1], grid[1:], strict=True):
        h = (t1 - t0) / substeps
        t = t0
        for _ in range(substeps):
            k1 = rhs(t, y)
            k2 = rhs(t + h / 2, y + (h / 2) * k1)
            k3 = rhs(t + h / 2, y + (h / 2) * k2)
            k4 = rhs(t + h, y + h * k3)
            y = y + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
            t += h
        out.append(y)
    return torch.stack(out)


def solve_stiff(rhs: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, times,
                *, method: str = "BDF", rtol: float = 1e-9, atol: float = 1e-12) -> torch.Tensor:
    """``scipy.integrate.solve_ivp`` for stiff systems, with a torch right-hand side.

    The state is flattened for scipy and reshaped back; the result has shape ``(len(times), *y0.shape)``
    on ``y0``'s device and dtype. Raises ``RuntimeError`` with scipy's message when the solver fails.
    """
    grid = np.asarray(times, dtype=float)
    if grid.ndim != 1 or grid.size < 1 or np.any(np.diff(grid) <= 0):
        raise ValueError(f"times must be a strictly increasing 1-d grid; got {grid!r}")
    shape, device, dtype = y0.shape, y0.device, y0.dtype

    def flat_rhs(t, y):
        state = torch.as_tensor(y, device=device, dtype=dtype).reshape(shape)
        return rhs(t, state).reshape(-1).cpu().numpy()

    solution = solve_ivp(flat_rhs, (grid[0], grid[-1]), y0.reshape(-1).cpu().numpy(), method=method,
                         t_eval=grid, rtol=rtol, atol=atol)
    if not solution.success:
        raise RuntimeError(f"solve_ivp ({method}) failed: {solution.message}")
    return torch.as_tensor(solution.y.T, device=device, dtype=dtype).reshape(len(grid), *shape)


def drift_derivatives(drift: Drift, points: torch.Tensor, *, second: bool = True):
    """``F``, its Jacobian ``J[b, i, k] = d_k F_i`` and Hessian ``H[b, i, k, l] = d_k d_l F_i`` at a
    batch of points ``(B, n)``, by reverse-mode autograd.

    Costs one forward pass and ``n`` (Jacobian) plus ``n^2`` (Hessian) backward passes, each over the
    whole batch; ``H`` is ``None`` when ``second`` is false.
    """
    with torch.enable_grad():
        x = points.detach().requires_grad_(True)
        value = drift(x)
        n = x.shape[-1]
        rows = [torch.autograd.grad(value[:, i].sum(), x, retain_graph=True, create_graph=second)[0]
                for i in range(n)]
        jacobian = torch.stack(rows, dim=1)
        hessian = None
        if second:
            hessian = torch.zeros(*jacobian.shape, n, dtype=x.dtype, device=x.device)
            if jacobian.requires_grad:  # a drift linear in w has a constant Jacobian
                for i in range(n):
                    for k in range(n):
                        grad = torch.autograd.grad(jacobian[:, i, k].sum(), x, retain_graph=True,
                                                   allow_unused=True)[0]
                        if grad is not None:
                            hessian[:, i, k] = grad
    return value.detach(), jacobian.detach(), None if hessian is None else hessian.detach()


def moment_derivatives(drift: Drift, mean: torch.Tensor, cov: torch.Tensor, *,
                       covariance_in_mean: bool = True, diffusion: Drift | None = None,
                       covariance_factor: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-hand sides of the moment equations (1.10) and (1.11), batched over leading axes.

    Implements :eq:`sgd-mean-equation` and :eq:`sgd-covariance-equation` of
    :doc:`/book/sgd_stochastic_process`.

    ``drift`` maps ``(..., n) -> (..., n)`` and must be written in torch operations (it is
    differentiated by :func:`drift_derivatives`). ``mean`` has shape ``(..., n)``, ``cov`` ``(..., n, n)``.
    ``covariance_in_mean=False`` drops the second term of (1.10), the "mean-field" theory that the
    chapter shows to be worse. ``covariance_factor`` is the factor of that term, 1/2 by the Taylor
    expansion (other values are the wrong theories the chapter rejects). ``diffusion(mean)`` adds the
    O(eta) noise term ``eta B`` to (1.11).
    """
    n = mean.shape[-1]
    check_shape(cov, (n, n), "cov")
    factor = _finite(covariance_factor, "covariance_factor")
    batch = mean.shape[:-1]
    flat_cov = cov.expand(*batch, n, n).reshape(-1, n, n)
    d_mean, jacobian, hessian = drift_derivatives(drift, mean.reshape(-1, n),
                                                  second=covariance_in_mean)
    if covariance_in_mean:
        d_mean = d_mean + factor * torch.einsum("bikl,bkl->bi", hessian, flat_cov)
    d_cov = flat_cov @ jacobian.transpose(-1, -2) + jacobian @ flat_cov
    if diffusion is not None:
        d_cov = d_cov + diffusion(mean.reshape(-1, n))
    return d_mean.reshape(*batch, n), d_cov.reshape(*batch, n, n)


def integrate_moments(drift: Drift, mean0, cov0, times, *, covariance_in_mean: bool = True,
                      diffusion: Drift | None = None,
                      substeps: int = 4, covariance_factor: float = 0.5,
                      device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the moment equations (1.10)-(1.11) with :func:`rk4` from ``(mean0, cov0)``.

    Implements :eq:`sgd-mean-equation` and :eq:`sgd-covariance-equation` of
    :doc:`/book/sgd_stochastic_process`, integrated in time.

    Returns ``(means, covs)`` at the grid ``times``, of shapes ``(len(times), ..., n)`` and
    ``(len(times), ..., n, n)``. ``covariance_factor`` is passed to :func:`moment_derivatives`.
    """
    mean0 = as_tensor(mean0, "mean0", device=device, dtype=dtype)
    cov0 = as_tensor(cov0, "cov0", device=mean0.device, dtype=mean0.dtype)
    n = mean0.shape[-1]
    check_shape(cov0, (n, n), "cov0")
    cov0 = cov0.expand(*mean0.shape[:-1], n, n)

    def rhs(_t, y):
        d_mean, d_cov = moment_derivatives(drift, y[..., :n], y[..., n:].unflatten(-1, (n, n)),
                                           covariance_in_mean=covariance_in_mean,
                                           diffusion=diffusion, covariance_factor=covariance_factor)
        return torch.cat([d_mean, d_cov.flatten(-2)], dim=-1)

    path = rk4(rhs, torch.cat([mean0, cov0.flatten(-2)], dim=-1), times, substeps=substeps)
    return path[..., :n], path[..., n:].unflatten(-1, (n, n))


def _finite(value, name: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} is not a number") from exc
    if not math.isfinite(number):
        raise ValueError(f"{name}={value!r} must be finite")
    return number


# --- The exact eta -> 0 solution and what the closure neglects (chapter 1) ----------------------------

class CarriedCloud(NamedTuple):
    """A weighted cloud of points carried along the flow ``dw/dt = F(w)``.

    The solution of :eq:`sgd-liouville` of :doc:`/book/sgd_stochastic_process`, as a quadrature.
    ``points`` has shape ``(len(times), P, n)``, ``weights`` ``(P,)`` (they sum to one). Averages over
    the cloud are quadratures of the density that the Liouville equation carries.
    """

    points: torch.Tensor
    weights: torch.Tensor

    def mean(self) -> torch.Tensor:
        """The mean of the cloud at every time, ``(len(times), n)``."""
        return torch.einsum("p,tpi->ti", self.weights, self.points)

    def central_moment(self, order: int) -> torch.Tensor:
        """``<delta_i delta_j ...>`` (``order`` factors) at every time, ``(len(times), n, ..., n)``."""
        check_count(order, "order")
        if order > 10:
            raise ValueError(f"order={order} is above 10")
        centred = self.points - self.mean()[:, None]
        axes = "abcdefghij"[:order]
        operands = ",".join(f"tp{a}" for a in axes)
        return torch.einsum(f"p,{operands}->t{axes}", self.weights, *[centred] * order)

    def cov(self) -> torch.Tensor:
        """The covariance of the cloud at every time, ``(len(times), n, n)``."""
        return self.central_moment(2)


def carry_gaussian(drift: Drift, mean0, cov0, times, *, nodes: int = 24, substeps: int = 4,
                   device=None, dtype=None) -> CarriedCloud:
    """The exact solution of the Liouville equation from a Gaussian ``N(mean0, cov0)``.

    Implements the solution of :eq:`sgd-liouville` of :doc:`/book/sgd_stochastic_process`: every point
    of a tensor Gauss-Hermite grid (``nodes`` per axis, ``nodes**n`` in all) of the initial Gaussian is
    carried along ``dw/dt = F(w)`` by :func:`rk4`; its weights do not change. Moments of the cloud are
    then quadratures of the carried density, exact for polynomials of degree ``< 2 nodes`` in the
    initial coordinates.
    """
    mean0 = as_tensor(mean0, "mean0", device=device, dtype=dtype)
    check_shape(mean0, (None,), "mean0")
    if mean0.dim() != 1:
        raise ValueError(f"mean0 has shape {tuple(mean0.shape)}, expected (n,)")
    n = mean0.shape[0]
    cov0 = check_shape(as_tensor(cov0, "cov0", device=mean0.device, dtype=mean0.dtype), (n, n), "cov0")
    if cov0.dim() != 2:
        raise ValueError(f"cov0 has shape {tuple(cov0.shape)}, expected ({n}, {n})")
    check_covariance(cov0, "cov0")
    check_count(nodes, "nodes")
    if nodes**n > 1_000_000:
        raise ValueError(f"nodes={nodes} in n={n} dimensions is a grid of {nodes**n} points; use fewer")
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    grid = np.stack(np.meshgrid(*[x] * n, indexing="ij"), -1).reshape(-1, n)
    weights = np.prod(np.stack(np.meshgrid(*[w] * n, indexing="ij"), -1).reshape(-1, n), -1)
    grid = torch.as_tensor(grid, device=mean0.device, dtype=mean0.dtype)
    weights = torch.as_tensor(weights / weights.sum(), device=mean0.device, dtype=mean0.dtype)
    start = mean0 + grid @ torch.linalg.cholesky(cov0).T
    return CarriedCloud(rk4(lambda _t, y: drift(y), start, times, substeps=substeps), weights)


def directional_derivatives(drift: Drift, base: torch.Tensor, direction: torch.Tensor,
                            order: int) -> list[torch.Tensor]:
    """``d^p/ds^p F(base + s direction)`` at ``s = 0`` for ``p = 0, ..., order``, by autograd.

    That is ``F``, ``J[d]``, ``H[d, d]``, ... at ``base``: the Taylor terms of
    :eq:`sgd-neglected` of :doc:`/book/sgd_stochastic_process` without forming the derivative
    tensors. ``base`` and ``direction`` have shape ``(..., n)``; each entry of the returned list has
    the shape of ``drift(base)``. Costs ``order * n`` backward passes over the whole batch.
    """
    check_count(order, "order", minimum=0)
    if base.shape != direction.shape:
        raise ValueError(f"direction has shape {tuple(direction.shape)}, base {tuple(base.shape)}")
    with torch.enable_grad():
        s = torch.zeros(*base.shape[:-1], 1, dtype=base.dtype, device=base.device, requires_grad=True)
        current = drift(base + s * direction)
        out = [current.detach()]
        for p in range(order):
            rows = []
            for i in range(current.shape[-1]):
                grad = None
                if current.requires_grad:
                    grad = torch.autograd.grad(current[..., i].sum(), s, retain_graph=True,
                                               create_graph=p < order - 1, allow_unused=True)[0]
                rows.append(torch.zeros_like(s) if grad is None else grad)
            current = torch.cat(rows, -1)
            out.append(current.detach())
    return out


def closure_remainder(drift: Drift, cloud: CarriedCloud, *,
                      moments=(3, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """The terms that the closure drops, evaluated on a cloud: ``(mean_rate, cov_rate)``.

    Implements :eq:`sgd-neglected` of :doc:`/book/sgd_stochastic_process`: with ``delta`` the
    deviation from the cloud's mean ``m`` and ``p`` running over ``moments`` (the orders of the
    moments of ``delta`` that enter),

        mean_rate_i  = sum_p < d^p F_i[delta^p] > / p!,
        cov_rate_ij  = sum_p < delta_i d^(p-1) F_j[delta^(p-1)] > / (p-1)!  + (i <-> j).

    The default ``(3, 4)`` is the leading order, O(C^2); ``(5, 6)`` is the next, O(C^3). Shapes
    ``(len(times), n)`` and ``(len(times), n, n)``. Nothing of the closure's own equations enters.
    """
    orders = sorted({check_count(p, "moments", minimum=3) for p in moments})
    if not orders:
        raise ValueError("moments is empty; give the orders of the moments to include, e.g. (3, 4)")
    mean = cloud.mean()
    delta = cloud.points - mean[:, None]
    terms = directional_derivatives(drift, mean[:, None].expand_as(delta), delta, orders[-1])
    mean_terms = sum(terms[p] / math.factorial(p) for p in orders)
    cov_terms = sum(terms[p - 1] / math.factorial(p - 1) for p in orders)
    mean_rate = torch.einsum("p,tpi->ti", cloud.weights, mean_terms)
    half = torch.einsum("p,tpi,tpj->tij", cloud.weights, delta, cov_terms)
    return mean_rate, half + half.transpose(-1, -2)


def linear_transport(jacobians, times, *, mean0=None, cov0=None, mean_forcing=None, cov_forcing=None,
                     substeps: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve ``de/dt = J(t) e + r(t)`` and ``dE/dt = J(t) E + E J(t)^T + R(t)`` on the grid ``times``.

    Implements :eq:`sgd-closure-error` of :doc:`/book/sgd_stochastic_process` (a small error of the
    mean and covariance, carried by the flow linearized along a path). ``jacobians`` ``(T, n, n)``,
    ``mean_forcing`` ``(T, n)`` and ``cov_forcing`` ``(T, n, n)`` are given at the ``T`` grid times and
    interpolated linearly between them; ``mean0``/``cov0`` default to zero, the forcings to none.
    Returns ``(e, E)`` at the grid times, by :func:`rk4`.
    """
    if not isinstance(jacobians, torch.Tensor) or jacobians.dim() != 3 or \
            jacobians.shape[-1] != jacobians.shape[-2]:
        raise ValueError("jacobians must be a tensor of shape (len(times), n, n)")
    grid = np.asarray(times, dtype=float)
    count, n = jacobians.shape[0], jacobians.shape[-1]
    if grid.shape != (count,):
        raise ValueError(f"times has {grid.size} entries, jacobians {count}")
    like = {"device": jacobians.device, "dtype": jacobians.dtype}
    zeros = {"mean": torch.zeros(count, n, **like), "cov": torch.zeros(count, n, n, **like)}
    mean_forcing = zeros["mean"] if mean_forcing is None else check_shape(
        as_tensor(mean_forcing, "mean_forcing", **like), (count, n), "mean_forcing")
    cov_forcing = zeros["cov"] if cov_forcing is None else check_shape(
        as_tensor(cov_forcing, "cov_forcing", **like), (count, n, n), "cov_forcing")
    e0 = zeros["mean"][0] if mean0 is None else check_shape(as_tensor(mean0, "mean0", **like), (n,),
                                                            "mean0")
    c0 = zeros["cov"][0] if cov0 is None else check_shape(as_tensor(cov0, "cov0", **like), (n, n), "cov0")

    def at(values, t):
        k = int(np.clip(np.searchsorted(grid, t, side="right") - 1, 0, count - 2))
        fraction = (t - grid[k]) / (grid[k + 1] - grid[k])
        return values[k] + fraction * (values[k + 1] - values[k])

    def rhs(t, y):
        jac, e, cov = at(jacobians, t), y[:n], y[n:].reshape(n, n)
        d_cov = jac @ cov + cov @ jac.T + at(cov_forcing, t)
        return torch.cat([jac @ e + at(mean_forcing, t), d_cov.reshape(-1)])

    path = rk4(rhs, torch.cat([e0, c0.reshape(-1)]), grid, substeps=substeps)
    return path[:, :n], path[:, n:].unflatten(-1, (n, n))


class StepDoubling(NamedTuple):
    """An ensemble average at step ``eta``, its O(eta) allowance and the standard error of both.

    What :func:`step_doubling` returns, for the O(eta) term of :eq:`sgd-liouville` of
    :doc:`/book/sgd_stochastic_process`.
    """

    value: torch.Tensor
    se: torch.Tensor
    allowance: torch.Tensor


def step_doubling(fine: torch.Tensor, coarse: torch.Tensor, replica_dim: int = 0) -> StepDoubling:
    """Average the per-replica values ``fine`` (step ``eta``) and measure their O(eta) bias.

    Implements the O(eta) term of :eq:`sgd-liouville` of :doc:`/book/sgd_stochastic_process`, measured:
    ``coarse`` holds the same replicas run at step ``2 eta`` on common random numbers (the same
    initial weights and every other input), so ``|<coarse> - <fine>|`` estimates the bias
    ``|<fine> - (eta -> 0 limit)|`` to O(eta^2). ``se`` is the standard error of ``2 fine - coarse``
    over the replicas, which bounds the noise of the value and of the allowance together: for an exact
    limit ``L``, ``|value - L| <= allowance + |<2 fine - coarse> - L|``.
    """
    if fine.shape != coarse.shape:
        raise ValueError(f"coarse has shape {tuple(coarse.shape)}, fine {tuple(fine.shape)}")
    dim = replica_dim % fine.dim()
    count = fine.shape[dim]
    if count < 2:
        raise ValueError(f"fine has {count} replica along replica_dim={replica_dim}; need >= 2")
    value = fine.mean(dim)
    se = (2 * fine - coarse).std(dim) / math.sqrt(count)
    return StepDoubling(value, se, (coarse.mean(dim) - value).abs())


def control_variate(samples: torch.Tensor, carried: torch.Tensor, cloud: CarriedCloud,
                    replica_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-replica terms for the ensemble's mean and covariance, the initial sampling noise removed.

    Implements the comparison of an ensemble with :eq:`sgd-liouville` of
    :doc:`/book/sgd_stochastic_process`. ``samples`` ``(T, R, n)`` are the trained replicas,
    ``carried`` the same initial weights carried along the flow ``dw/dt = F(w)`` (on the same grid
    and integrator as ``cloud``), whose average the quadrature ``cloud`` knows exactly. The terms are
    ``s - c + <cloud>`` and ``d d^T - e e^T + Cov(cloud)``, with ``d``, ``e`` the deviations of
    ``s``, ``c`` from their replica means: shapes ``(T, R, n)`` and ``(T, R, n, n)``.
    """
    if samples.shape != carried.shape or samples.dim() != 3:
        raise ValueError(f"samples {tuple(samples.shape)} and carried {tuple(carried.shape)} must share "
                         "a shape (len(times), R, n)")
    if replica_dim % 3 != 1:
        raise ValueError(f"replica_dim={replica_dim}: the replicas must be axis 1 of (len(times), R, n)")
    if cloud.points.shape[0] != samples.shape[0] or cloud.points.shape[-1] != samples.shape[-1]:
        raise ValueError(f"cloud has {tuple(cloud.points.shape)} points, samples {tuple(samples.shape)}")
    d = samples - samples.mean(1, keepdim=True)
    e = carried - carried.mean(1, keepdim=True)
    mean_terms = samples - carried + cloud.mean()[:, None]
    cov_terms = d[..., :, None] * d[..., None, :] - e[..., :, None] * e[..., None, :] + cloud.cov()[:, None]
    return mean_terms, cov_terms


__all__ = [
    "rk4", "solve_stiff", "drift_derivatives", "moment_derivatives", "integrate_moments",
    "CarriedCloud", "carry_gaussian", "directional_derivatives", "closure_remainder",
    "linear_transport", "StepDoubling", "step_doubling", "control_variate"
]
