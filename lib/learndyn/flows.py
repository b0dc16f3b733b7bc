"""Integration of flow (moment) equations: a batched RK4 in torch and a thin ``solve_ivp`` wrapper.

Also the moment closure of chapter 1 (Eqs. 10-11 of Schmid & Murray): for an update rule
``w <- w + eta f(w, noise)`` with mean update ``F(w) = <f>(w)``, to second order in the fluctuations

    d<w_i>/dt   = F_i(<w>) + 1/2 sum_kl C_kl d_k d_l F_i(<w>)                      (1.10)
    dC_ij/dt    = sum_k [C_ik d_k F_j(<w>) + C_jk d_k F_i(<w>)]  (+ eta B_ij(<w>))  (1.11)

with time measured in units of ``eta`` steps. The bracketed diffusion term is the next order in eta,
the update covariance ``B = beta - F F^T`` (``beta = <f f^T>``, the second Kramers-Moyal coefficient);
the first-order (Liouville) equations leave it out. At that order the mean equation also gains the
drift correction ``-(eta/2) J F`` (the stochastic modified equation, :func:`order_eta_derivatives`);
the Kramers-Moyal equation with ``eta beta`` instead is right at a fixed point, not along the way.
The closure drops terms of order C^2 (third moments, and fourth moments ``<delta^4> = 3 C^2`` even for
a Gaussian cloud). To test it without trusting it, the module also carries a Gauss-Hermite grid along
the flow (the exact Liouville solution, :func:`carry_gaussian`), evaluates the dropped terms on that
cloud (:func:`closure_remainder`) and carries them along the linearized flow
(:func:`linear_transport`); :func:`step_doubling` and :func:`control_variate` turn an ensemble into
estimates with their O(eta) allowance and standard errors. For the O(eta) term, :func:`update_moments`
gives ``alpha`` and ``beta`` by quadrature, :func:`integrate_order_eta` the moments to that order, and
:func:`linear_noise_proxy` with :func:`linear_noise_control` a control variate for runs from one point.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .backend import as_tensor, check_count, check_covariance, check_positive, check_shape

Drift = Callable[[torch.Tensor], torch.Tensor]


def _time_grid(times) -> np.ndarray:
    """``times`` (a sequence, an array or a tensor on any device) as a host array, once per call."""
    grid = np.asarray(times.detach().cpu() if isinstance(times, torch.Tensor) else times, dtype=float)
    if grid.ndim != 1 or grid.size < 1 or np.any(np.diff(grid) <= 0) or not np.all(np.isfinite(grid)):
        raise ValueError(f"times must be a finite, strictly increasing 1-d grid; got {grid!r}")
    return grid


def rk4(rhs: Callable[[float, torch.Tensor], torch.Tensor], y0: torch.Tensor, times,
        *, substeps: int = 1) -> torch.Tensor:
    """Classical fourth-order Runge-Kutta for ``dy/dt = rhs(t, y)``, batched over any shape of ``y``.

    ``times`` is an increasing grid; ``substeps`` RK4 steps are taken between neighbouring grid points.
    Returns the solution at every grid point, shape ``(len(times), *y0.shape)``. Global error
    O(h^4) with ``h = dt / substeps``.
    """
    check_count(substeps, "substeps")
    grid = _time_grid(times)
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
    grid = _time_grid(times)
    if not isinstance(y0, torch.Tensor):
        raise ValueError(f"y0 must be a torch.Tensor, got {type(y0).__name__}")
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


# --- The O(eta) term: Kramers-Moyal coefficients, the modified equation, a linear-noise proxy (chapter 1) ---

NoiseMoments = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def update_moments(update: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], w: torch.Tensor,
                   noise_dim: int, *, nodes=24) -> tuple[torch.Tensor, torch.Tensor]:
    """The first two Kramers-Moyal coefficients ``alpha = <f>`` and ``beta = <f f^T>`` at ``w``.

    Implements :eq:`sgd-km-coefficients` of :doc:`/book/sgd_stochastic_process` for an update
    ``f = update(w, z)`` that depends on its randomness through ``noise_dim`` standard normals ``z``
    (e.g. ``sl_step(w, z, classes, 1.0, lam) - w``). The average is a tensor Gauss-Hermite quadrature
    with ``nodes`` points per axis (an int, or one count per axis): exact for polynomials of degree
    ``< 2 nodes`` in ``z``, and for a coordinate that enters only through its sign with any even count.
    ``w`` has shape ``(..., n)``; returns shapes ``(..., n)`` and ``(..., n, n)``.
    """
    check_count(noise_dim, "noise_dim")
    counts = [nodes] * noise_dim if isinstance(nodes, int) else list(nodes)
    if len(counts) != noise_dim:
        raise ValueError(f"nodes={nodes!r} gives {len(counts)} axes, noise_dim={noise_dim}")
    for count in counts:
        check_count(count, "nodes")
    if math.prod(counts) > 1_000_000:
        raise ValueError(f"nodes={nodes!r} is a grid of {math.prod(counts)} points; use fewer")
    rules = [np.polynomial.hermite_e.hermegauss(count) for count in counts]
    grid = np.stack(np.meshgrid(*[x for x, _ in rules], indexing="ij"), -1).reshape(-1, noise_dim)
    weights = np.prod(np.stack(np.meshgrid(*[q / q.sum() for _, q in rules], indexing="ij"), -1)
                      .reshape(-1, noise_dim), -1)
    like = {"device": w.device, "dtype": w.dtype}
    grid, weights = torch.as_tensor(grid, **like), torch.as_tensor(weights, **like)
    batch = w.shape[:-1]
    flat = w.reshape(-1, 1, w.shape[-1]).expand(-1, len(weights), -1)
    f = update(flat, grid.expand(flat.shape[0], -1, -1))
    alpha = torch.einsum("p,bpi->bi", weights, f)
    beta = torch.einsum("p,bpi,bpj->bij", weights, f, f)
    return alpha.reshape(*batch, -1), beta.reshape(*batch, *beta.shape[-2:])


def order_eta_derivatives(drift: Drift, noise_moments: NoiseMoments, mean: torch.Tensor,
                          cov: torch.Tensor, eta, *, drift_correction=1.0,
                          centred=1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-hand sides of the moment equations to first order in ``eta``, batched over leading axes.

    Implements :eq:`sgd-sme-moments` of :doc:`/book/sgd_stochastic_process`:

        dm/dt = F + 1/2 H[C] - c (eta/2) J F,     dC/dt = J C + C J^T + eta (beta - s alpha alpha^T),

    at ``m = mean``, with ``(alpha, beta) = noise_moments(m)`` (e.g. from :func:`update_moments`),
    ``c = drift_correction`` and ``s = centred``. The modified equation has ``c = s = 1`` (its
    diffusion is the update covariance ``B``); the second-order Kramers-Moyal equation has
    ``c = s = 0`` (diffusion ``beta``). ``eta``, ``c`` and ``s`` are numbers or tensors that broadcast
    against the batch ``mean.shape[:-1]``, so that several theories integrate in one batch;
    ``eta = 0`` gives (1.10)-(1.11).
    """
    n = mean.shape[-1]
    check_shape(cov, (n, n), "cov")
    like = {"device": mean.device, "dtype": mean.dtype}
    batch = torch.broadcast_shapes(mean.shape[:-1], cov.shape[:-2])
    coefficients = []
    for value, name in ((eta, "eta"), (drift_correction, "drift_correction"), (centred, "centred")):
        tensor = torch.as_tensor(value, **like)
        if not bool(torch.isfinite(tensor).all()) or bool((tensor < 0).any()):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")
        batch = torch.broadcast_shapes(batch, tensor.shape)
        coefficients.append(tensor)
    eta, correction, centred = (c.expand(batch).reshape(-1, 1) for c in coefficients)
    flat_mean = mean.expand(*batch, n).reshape(-1, n)
    flat_cov = cov.expand(*batch, n, n).reshape(-1, n, n)
    value, jacobian, hessian = drift_derivatives(drift, flat_mean)
    alpha, beta = noise_moments(flat_mean)
    noise = beta - centred[:, :, None] * alpha[:, :, None] * alpha[:, None, :]
    d_mean = value + 0.5 * torch.einsum("bikl,bkl->bi", hessian, flat_cov)
    d_mean = d_mean - 0.5 * correction * eta * torch.einsum("bik,bk->bi", jacobian, value)
    d_cov = jacobian @ flat_cov + flat_cov @ jacobian.transpose(-1, -2) + eta[:, :, None] * noise
    return d_mean.reshape(*batch, n), d_cov.reshape(*batch, n, n)


def integrate_order_eta(drift: Drift, noise_moments: NoiseMoments, mean0, cov0, times, eta, *,
                        drift_correction=1.0, centred=1.0, substeps: int = 4,
                        device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate :func:`order_eta_derivatives` with :func:`rk4` from ``(mean0, cov0)``.

    Implements :eq:`sgd-sme-moments` of :doc:`/book/sgd_stochastic_process`, integrated in time.
    ``eta``, ``drift_correction`` and ``centred`` may be 1-d tensors (one entry per theory): the
    result then has that batch axis, shapes ``(len(times), B, n)`` and ``(len(times), B, n, n)``.
    """
    mean0 = as_tensor(mean0, "mean0", device=device, dtype=dtype)
    n = mean0.shape[-1]
    cov0 = check_shape(as_tensor(cov0, "cov0", device=mean0.device, dtype=mean0.dtype), (n, n), "cov0")
    like = {"device": mean0.device, "dtype": mean0.dtype}
    eta, drift_correction, centred = (torch.as_tensor(c, **like) for c in (eta, drift_correction, centred))
    batch = torch.broadcast_shapes(mean0.shape[:-1], cov0.shape[:-2], eta.shape, drift_correction.shape,
                                   centred.shape)

    def rhs(_t, y):
        d_mean, d_cov = order_eta_derivatives(drift, noise_moments, y[..., :n],
                                              y[..., n:].unflatten(-1, (n, n)), eta,
                                              drift_correction=drift_correction, centred=centred)
        return torch.cat([d_mean, d_cov.flatten(-2)], dim=-1)

    start = torch.cat([mean0.expand(*batch, n), cov0.expand(*batch, n, n).flatten(-2)], dim=-1)
    path = rk4(rhs, start, times, substeps=substeps)
    return path[..., :n], path[..., n:].unflatten(-1, (n, n))


class LinearNoiseProxy(NamedTuple):
    """The linear-noise approximation of one SGD run at step ``step``, as a control variate.

    What :func:`linear_noise_proxy` returns; the proxy of :eq:`sgd-linear-noise` of
    :doc:`/book/sgd_stochastic_process`. ``path`` ``(K + 1, n)`` is the Euler path
    ``p_{k+1} = p_k + step F(p_k)``, ``jacobians`` ``(K, n, n)`` the Jacobians of ``F`` on it,
    ``cov`` ``(K + 1, n, n)`` the exact covariance ``<v_k v_k^T>`` of the proxy.
    """

    path: torch.Tensor
    jacobians: torch.Tensor
    cov: torch.Tensor
    step: float

    def advance(self, k, v: torch.Tensor, updated: torch.Tensor) -> torch.Tensor:
        """``v_{k+1} = (1 + step J_k) v_k + (updated - p_{k+1})``, where ``updated`` is the path
        point ``p_k`` after one update with this replica's input (so ``<v> = 0`` at every step)."""
        return v + self.step * v @ self.jacobians[k].T + (updated - self.path[k + 1])


def linear_noise_proxy(drift: Drift, noise_moments: NoiseMoments, w0, step: float,
                       n_steps: int, *, device=None, dtype=None) -> LinearNoiseProxy:
    """The proxy ``v`` of :eq:`sgd-linear-noise` of :doc:`/book/sgd_stochastic_process` from ``w0``.

    The replicas' updates, linearized around the Euler path of the mean update, driven by the
    same inputs: ``v_{k+1} = (1 + step J_k) v_k + step (f(p_k) - F(p_k))``, ``v_0 = 0``. Its mean is
    zero and its covariance follows ``V_{k+1} = (1 + step J_k) V_k (1 + step J_k)^T + step^2 B(p_k)``
    exactly, with ``B = beta - alpha alpha^T`` from ``noise_moments``. Subtracting ``v`` from each
    replica (:func:`linear_noise_control`) leaves the noise of the nonlinear remainder only.
    """
    w0 = check_shape(as_tensor(w0, "w0", device=device, dtype=dtype), (None,), "w0")
    if w0.dim() != 1:
        raise ValueError(f"w0 has shape {tuple(w0.shape)}, expected (n,)")
    step = check_positive(step, "step")
    check_count(n_steps, "n_steps")
    path = [w0]
    for _ in range(n_steps):
        path.append(path[-1] + step * drift(path[-1][None])[0])
    path = torch.stack(path)
    _, jacobians, _ = drift_derivatives(drift, path[:-1], second=False)
    alpha, beta = noise_moments(path[:-1])
    noise = beta - alpha[:, :, None] * alpha[:, None, :]
    eye = torch.eye(w0.shape[0], device=w0.device, dtype=w0.dtype)
    covs = [torch.zeros_like(eye)]
    for k in range(n_steps):
        propagator = eye + step * jacobians[k]
        covs.append(propagator @ covs[-1] @ propagator.T + step**2 * noise[k])
    return LinearNoiseProxy(path, jacobians, torch.stack(covs), step)


def linear_noise_control(samples: torch.Tensor, proxies: torch.Tensor,
                         proxy_cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-replica terms for the ensemble's mean and covariance with the linear noise removed.

    The control variate of :eq:`sgd-linear-noise` of :doc:`/book/sgd_stochastic_process`.
    ``samples`` and ``proxies`` ``(T, R, n)`` are the replicas and their proxies ``v`` (same inputs),
    ``proxy_cov`` ``(T, n, n)`` the exact ``<v v^T>``. The terms are ``s - v`` and
    ``d d^T - e e^T + <v v^T>``, with ``d``, ``e`` the deviations of ``s``, ``v`` from their replica
    means; their replica averages estimate ``<w>`` and ``Cov(w)``.
    """
    if samples.shape != proxies.shape or samples.dim() != 3:
        raise ValueError(f"samples {tuple(samples.shape)} and proxies {tuple(proxies.shape)} must share "
                         "a shape (len(times), R, n)")
    n = samples.shape[-1]
    if proxy_cov.shape != (samples.shape[0], n, n):
        raise ValueError(f"proxy_cov has shape {tuple(proxy_cov.shape)}, expected "
                         f"{(samples.shape[0], n, n)}")
    d = samples - samples.mean(1, keepdim=True)
    e = proxies - proxies.mean(1, keepdim=True)
    cov_terms = d[..., :, None] * d[..., None, :] - e[..., :, None] * e[..., None, :] + proxy_cov[:, None]
    return samples - proxies, cov_terms


__all__ = [
    "rk4", "solve_stiff", "drift_derivatives", "moment_derivatives", "integrate_moments",
    "CarriedCloud", "carry_gaussian", "directional_derivatives", "closure_remainder",
    "linear_transport", "StepDoubling", "step_doubling", "control_variate", "update_moments",
    "order_eta_derivatives", "integrate_order_eta", "LinearNoiseProxy", "linear_noise_proxy",
    "linear_noise_control"
]
