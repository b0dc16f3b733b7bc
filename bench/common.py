"""What every benchmark shares: a timer and one line of output per comparison."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Comparison:
    """``figure`` against ``baseline``, both in ``unit`` (larger is better), measured in one run."""

    name: str
    figure: float
    baseline: float
    unit: str
    baseline_name: str
    target: float | None = None

    @property
    def ratio(self) -> float:
        return self.figure / self.baseline

    def line(self) -> str:
        target = "" if self.target is None else f"  (target {self.target:g}x: " \
            f"{'met' if self.ratio >= self.target else 'NOT met'})"
        return (f"{self.name:<46} {self.figure:12.4g} {self.unit:<20} vs {self.baseline_name}: "
                f"{self.baseline:.4g}  ratio {self.ratio:8.3g}x{target}")


def seconds_per_call(function: Callable[[], object], *, repeat: int = 5, min_time: float = 0.2,
                     device=None) -> float:
    """The best of ``repeat`` timings of ``function``, each looped until it takes ``min_time``."""
    synchronize = torch.cuda.synchronize if torch.device(device or "cpu").type == "cuda" else None
    function()
    best = float("inf")
    for _ in range(repeat):
        calls, start = 0, time.perf_counter()
        while True:
            function()
            calls += 1
            if synchronize:
                synchronize()
            elapsed = time.perf_counter() - start
            if elapsed >= min_time:
                break
        best = min(best, elapsed / calls)
    return best


@contextmanager
def threads(count: int):
    """Run the block with ``count`` intra-op CPU threads. Small ensembles (a few thousand numbers per
    tensor) run several times faster on one thread: waking a second thread for each tiny operation
    costs more than the operation."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)
