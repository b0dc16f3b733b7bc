"""While nbval runs the chapters, time each notebook and keep book/notebook_timings.json current.

The course page reads that file, so the run times it quotes are the ones the last test run measured.
Only notebooks whose every cell passed are recorded.
"""

from __future__ import annotations

import json
import os
import platform
from collections import defaultdict
from pathlib import Path

TIMINGS = Path(__file__).with_name("notebook_timings.json")
_seconds: dict[str, float] = defaultdict(float)
_failed: set[str] = set()


def pytest_runtest_logreport(report):
    notebook = report.nodeid.split("::")[0]
    if not notebook.endswith(".ipynb"):
        return
    _seconds[notebook] += report.duration
    if report.failed:
        _failed.add(notebook)


def pytest_sessionfinish(session, exitstatus):
    passed = {Path(k).stem: round(v, 1) for k, v in _seconds.items() if k not in _failed}
    if not passed:
        return
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {"seconds": {}}
    timings["seconds"].update(passed)
    timings["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, CPU"
    TIMINGS.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")
