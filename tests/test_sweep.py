"""learndyn.sweep: grids, per-point seeds, and the same results serially, on a pool and on Dask."""

import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from learndyn.backend import make_generator
from learndyn.sweep import grid_points, point_seeds, sweep


def noisy_decay(rate, noise, *, seed):
    """A small stochastic experiment: 256 replicas of w <- (1 - 0.1 rate) w + 0.1 noise xi, 50 steps."""
    generator = make_generator(seed, device="cpu")
    w = torch.ones(256, dtype=torch.float64)
    for _ in range(50):
        w = (1 - 0.1 * rate) * w + 0.1 * noise * torch.randn(256, generator=generator, dtype=torch.float64)
    return w.mean().item(), w.var().item()


GRID = {"rate": [0.5, 1.0], "noise": [0.1, 0.3, 1.0]}


def test_grid_points_are_row_major_and_validated():
    points = grid_points(GRID)
    assert points[:2] == [{"rate": 0.5, "noise": 0.1}, {"rate": 0.5, "noise": 0.3}] and len(points) == 6
    assert grid_points([{"a": 1}, {"a": 2}]) == [{"a": 1}, {"a": 2}]
    with pytest.raises(ValueError, match=r"grid\['rate'\]"):
        grid_points({"rate": 1.0})
    with pytest.raises(ValueError, match="empty axis"):
        grid_points({"rate": []})


def test_point_seeds_are_distinct_and_follow_the_book_seed(monkeypatch):
    seeds = point_seeds(1000, 7)
    assert len(set(seeds)) == 1000 and seeds == point_seeds(1000, 7)
    assert point_seeds(3, 8) != point_seeds(3, 7)
    monkeypatch.setenv("LEARNDYN_SEED", "7")
    assert point_seeds(5) == seeds[:5]
    with pytest.raises(ValueError, match="seed"):
        point_seeds(3, -1)


def test_results_do_not_depend_on_the_executor():
    serial = sweep(noisy_decay, GRID, seed=3)
    with ThreadPoolExecutor(3) as pool:
        pooled = sweep(noisy_decay, GRID, seed=3, executor=pool)
    assert [p.result for p in serial] == [p.result for p in pooled]
    assert [p.params for p in serial] == grid_points(GRID)
    assert len({p.seed for p in serial}) == 6
    means = np.array([p.result[0] for p in serial])
    assert np.all(means > 0) and means[0] > means[3]  # the faster rate decays further


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="experiment"):
        sweep(42, GRID)
    with pytest.raises(ValueError, match="executor"):
        sweep(noisy_decay, GRID, executor="dask")


def test_a_dask_cluster_gives_the_serial_results():
    distributed = pytest.importorskip("distributed")
    import cloudpickle

    # the workers are separate processes that cannot import this test file: ship it by value
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=40) as cluster, \
            distributed.Client(cluster) as client:
        on_cluster = sweep(noisy_decay, GRID, seed=3, executor=client.get_executor())
        workers = {w for w in client.run(lambda: 1)}
    assert len(workers) == 2
    assert [p.result for p in on_cluster] == [p.result for p in sweep(noisy_decay, GRID, seed=3)]
