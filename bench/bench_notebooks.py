"""Each notebook's run time against its budget: 90 s on a two-core CPU (``python -m bench notebooks``).

Every notebook of book/ is executed once, one after another, each in a fresh kernel started in book/
(the runner ``make seeds`` and ``make mutants`` use), with ``LEARNDYN_DEVICE`` set to the benchmark's
device. The run time includes starting the kernel and importing torch, as a reader's first run does.
The test suite asserts no run time (a loaded machine is slow, not wrong); this is where the budget is
checked. As a rate (larger is better, like every benchmark here): runs per second against one run
per budget, so the ratio is budget / run time and the target 1x means "within the budget".
"""

from __future__ import annotations

from pathlib import Path

from bench.common import Comparison
from tests.harness.notebooks import execute

BUDGET_SECONDS = 90.0
BOOK = Path(__file__).resolve().parents[1] / "book"


def run(device) -> list[Comparison]:
    comparisons = []
    for path in sorted(BOOK.glob("*.ipynb")):
        outcome = execute(path, env={"LEARNDYN_DEVICE": device.type})
        if not outcome.passed:
            raise RuntimeError(f"{path.name} failed at {outcome.check}: {outcome.message}")
        comparisons.append(Comparison(f"{path.stem} ({outcome.seconds:.1f} s)", 1 / outcome.seconds,
                                      1 / BUDGET_SECONDS, "runs/s", f"one per {BUDGET_SECONDS:.0f} s",
                                      target=1.0))
    return comparisons
