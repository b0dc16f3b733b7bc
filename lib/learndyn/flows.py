"""Integration of flow (moment) equations: a batched RK4 in torch and a thin ``solve_ivp`` wrapper.

Also the moment closure of chapter 1 (Eqs. 10-11 of Schmid & Murray): for an update rule
``w <- w + eta f(w, noise)`` with mean update ``F(w) = <f>(w)``, to second order in the fluctuations

    d<w_i>/dt   = F_i(<w>) + 1/2 sum_kl C_kl d_k d_l F_i(<w>)                      (1.10)
    dC_ij/dt    = sum_k [C_ik d_k F_j(<w>) + C_jk d_k F_i(<w>)]  (+ eta B_ij(<w>))  (1.11)

with time measured in units of ``eta`` steps. The bracketed diffusion term is the next order in eta,
the noise covariance ``B = <f f^T> - F F^T``; the first-order (Liouville) equations leave it out.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from scipy.integrate import solve_ivp

from .backend import as_tensor, check_count, check_shape

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
                       covariance_in_mean: bool = True,
                       diffusion: Drift | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-hand sides of the moment equations (1.10) and (1.11), batched over leading axes.

    ``drift`` maps ``(..., n) -> (..., n)`` and must be written in torch operations (it is
    differentiated by :func:`drift_derivatives`). ``mean`` has shape ``(..., n)``, ``cov`` ``(..., n, n)``.
    ``covariance_in_mean=False`` drops the second term of (1.10), the "mean-field" theory that the
    chapter shows to be worse. ``diffusion(mean)`` adds the O(eta) noise term ``eta B`` to (1.11).
    """
    n = mean.shape[-1]
    check_shape(cov, (n, n), "cov")
    batch = mean.shape[:-1]
    flat_cov = cov.expand(*batch, n, n).reshape(-1, n, n)
    d_mean, jacobian, hessian = drift_derivatives(drift, mean.reshape(-1, n),
                                                  second=covariance_in_mean)
    if covariance_in_mean:
        d_mean = d_mean + 0.5 * torch.einsum("bikl,bkl->bi", hessian, flat_cov)
    d_cov = flat_cov @ jacobian.transpose(-1, -2) + jacobian @ flat_cov
    if diffusion is not None:
        d_cov = d_cov + diffusion(mean.reshape(-1, n))
    return d_mean.reshape(*batch, n), d_cov.reshape(*batch, n, n)


def integrate_moments(drift: Drift, mean0, cov0, times, *, covariance_in_mean: bool = True,
                      diffusion: Drift | None = None, substeps: int = 4,
                      device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Integrate the moment equations (1.10)-(1.11) with :func:`rk4` from ``(mean0, cov0)``.

    Returns ``(means, covs)`` at the grid ``times``, of shapes ``(len(times), ..., n)`` and
    ``(len(times), ..., n, n)``.
    """
    mean0 = as_tensor(mean0, "mean0", device=device, dtype=dtype)
    cov0 = as_tensor(cov0, "cov0", device=mean0.device, dtype=mean0.dtype)
    n = mean0.shape[-1]
    check_shape(cov0, (n, n), "cov0")
    cov0 = cov0.expand(*mean0.shape[:-1], n, n)

    def rhs(_t, y):
        d_mean, d_cov = moment_derivatives(drift, y[..., :n], y[..., n:].unflatten(-1, (n, n)),
                                           covariance_in_mean=covariance_in_mean,
                                           diffusion=diffusion)
        return torch.cat([d_mean, d_cov.flatten(-2)], dim=-1)

    path = rk4(rhs, torch.cat([mean0, cov0.flatten(-2)], dim=-1), times, substeps=substeps)
    return path[..., :n], path[..., n:].unflatten(-1, (n, n))
