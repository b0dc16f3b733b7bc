"""Parameter sweeps that run anywhere: in this process, on a pool, or on a Dask cluster.

:func:`sweep` maps an experiment over a grid of parameters through any
:class:`concurrent.futures.Executor`. Each grid point gets its own seed, derived from the book's seed
and the point's index by :class:`numpy.random.SeedSequence` (``spawn``), so the results are
bit-identical whatever runs them and in whatever order the points finish. To go past one machine,
hand it the executor of a Dask ``distributed`` client::

    from distributed import Client
    with Client("tcp://scheduler:8786") as client:      # or Client(LocalCluster(n_workers=4))
        points = sweep(experiment, grid, executor=client.get_executor())

The experiment must be importable by the workers (a module-level function of an installed package),
take the grid's parameters as keyword arguments plus ``seed`` (an ``int``), and return something
picklable. Dask is an optional dependency (the ``cluster`` extra); this module does not import it.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from .backend import seed_from_environment

__all__ = ["SweepPoint", "grid_points", "point_seeds", "sweep"]


@dataclass(frozen=True)
class SweepPoint:
    """One grid point: its index in the grid, its parameters, its seed and what the experiment returned."""

    index: int
    params: dict[str, Any]
    seed: int
    result: Any


def grid_points(grid: Mapping[str, Sequence] | Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The points of ``grid``: the Cartesian product of a mapping name -> values, in row-major order
    (the last name varies fastest), or the given sequence of parameter mappings as it is."""
    if isinstance(grid, Mapping):
        names = list(grid)
        for name in names:
            if isinstance(grid[name], str | bytes) or not isinstance(grid[name], Iterable):
                raise ValueError(f"grid[{name!r}]={grid[name]!r} must be a sequence of values")
        values = [list(grid[name]) for name in names]
        empty = [name for name, axis in zip(names, values, strict=True) if not axis]
        if empty:
            raise ValueError(f"grid has an empty axis: {empty}")
        return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]
    points = [dict(point) for point in grid]
    if not points:
        raise ValueError("grid has no points")
    return points


def point_seeds(n_points: int, seed: int | None = None) -> list[int]:
    """The seeds of ``n_points`` grid points: ``SeedSequence(seed).spawn(n_points)``, one 63-bit integer
    each (default ``seed``: the book's, ``$LEARNDYN_SEED``)."""
    seed = seed_from_environment() if seed is None else seed
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r} must be a non-negative integer")
    children = np.random.SeedSequence(seed).spawn(n_points)
    return [int(child.generate_state(1, np.uint64)[0] >> np.uint64(1)) for child in children]


def _run_point(experiment: Callable, params: dict, seed: int):
    return experiment(**params, seed=seed)


def sweep(experiment: Callable[..., Any], grid, *, executor: Executor | None = None,
          seed: int | None = None) -> list[SweepPoint]:
    """``experiment(**params, seed=s)`` at every point of ``grid``, in grid order.

    ``executor`` is any :class:`concurrent.futures.Executor` (a process pool, or
    ``distributed.Client.get_executor()``); ``None`` runs the points one after the other here. The seed
    of point ``i`` is ``point_seeds(n, seed)[i]`` whoever runs it, so a sweep's results do not depend on
    the executor.
    """
    if not callable(experiment):
        raise ValueError(f"experiment={experiment!r} is not callable")
    if executor is not None and not isinstance(executor, Executor):
        raise ValueError(f"executor={executor!r} is not a concurrent.futures.Executor")
    points = grid_points(grid)
    seeds = point_seeds(len(points), seed)
    if executor is None:
        results = [_run_point(experiment, params, s) for params, s in zip(points, seeds, strict=True)]
    else:
        futures = [executor.submit(_run_point, experiment, params, s)
                   for params, s in zip(points, seeds, strict=True)]
        results = [future.result() for future in futures]
    return [SweepPoint(i, params, s, result)
            for i, (params, s, result) in enumerate(zip(points, seeds, results, strict=True))]
