"""Ensemble statistics that the chapters' checks are built from.

Each function takes a tensor whose replica axis is given explicitly and returns estimates with their
Monte Carlo standard errors, which is what :meth:`learndyn.checks.Claims.compare` needs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["ReplicaMoments", "replica_moments", "first_crossing"]


class ReplicaMoments(NamedTuple):
    """Mean and covariance over replicas, each with its standard error (same shapes)."""

    mean: torch.Tensor
    mean_se: torch.Tensor
    cov: torch.Tensor
    cov_se: torch.Tensor


def replica_moments(samples: torch.Tensor, replica_dim: int = 0) -> ReplicaMoments:
    """Mean and covariance of ``samples`` (``(..., R, ..., n)``) over the replica axis ``replica_dim``.

    The standard error of the mean is ``std / sqrt(R)``; that of each covariance entry is the standard
    deviation of the centred products ``d_i d_j`` over the replicas, over ``sqrt(R)`` (the delta method:
    the error of the estimated mean in the centring is one order smaller). These are the measured
    moments that :eq:`sgd-mean-equation` and :eq:`sgd-covariance-equation` of
    :doc:`/book/sgd_stochastic_process` predict.
    """
    if not isinstance(samples, torch.Tensor) or samples.dim() < 2:
        raise ValueError("samples must be a tensor with a replica axis and a trailing weight axis")
    dim = replica_dim % samples.dim()
    if dim == samples.dim() - 1:
        raise ValueError(f"replica_dim={replica_dim} is the weight axis; the last axis must be the weights")
    n_replicas = samples.shape[dim]
    if n_replicas < 2:
        raise ValueError(f"samples has {n_replicas} replica along replica_dim={replica_dim}; need >= 2")
    root = math.sqrt(n_replicas)
    mean = samples.mean(dim)
    centred = samples - mean.unsqueeze(dim)
    products = centred[..., :, None] * centred[..., None, :]
    return ReplicaMoments(mean, samples.std(dim) / root, products.mean(dim), products.std(dim) / root)


def first_crossing(times, values, level: float) -> np.ndarray:
    """The first time each column of ``values`` (``(len(times), ...)``) reaches ``level`` from below.

    Linear interpolation between the two records that bracket the crossing; NaN for a column that
    never reaches ``level`` or starts at or above it.
    """
    times = np.asarray(times, dtype=np.float64)
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    values = np.asarray(values, dtype=np.float64)
    if times.ndim != 1 or values.shape[:1] != times.shape:
        raise ValueError(f"values has shape {values.shape}; its first axis must match times {times.shape}")
    above = values >= level
    first = np.argmax(above, axis=0)
    valid = above.any(axis=0) & (first > 0)
    k = np.where(valid, first, 1)
    before = np.take_along_axis(values, (k - 1)[None], 0)[0]
    after = np.take_along_axis(values, k[None], 0)[0]
    fraction = (level - before) / np.where(after > before, after - before, 1.0)
    crossing = times[k - 1] + fraction * (times[k] - times[k - 1])
    return np.where(valid, crossing, np.nan)
