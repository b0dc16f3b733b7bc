"""While nbval runs the notebooks: time each one, and hand each executed notebook to the book build.

Timings. The seconds of every cell of each notebook whose cells all passed are added up and written
to ``_build/notebook_timings.json``, never into the tree. The course page reads the committed record
``book/notebook_timings.json``, which only ``make timings`` refreshes (by copying this file).

Cache. With ``--nb-jupyter-cache=DIR`` (``make notebooks`` passes the book's ``_build/.jupyter_cache``)
each notebook whose code cells all ran and passed is stored in that jupyter-cache with the outputs
nbval collected, so the Sphinx build that follows (``execute_notebooks: cache``) finds it there and
does not execute it again. The key is jupyter-cache's own hash (``create_hashed_notebook``: the
sources and metadata of the code cells and the kernelspec) of the notebook as nbval read it, which
is the notebook myst-nb reads (``nbformat.reads(text, as_version=4)``) and looks up with
``match_cache_notebook``. Not stored: a notebook of which only some cells were selected, one that
sent a message nbval does not keep (``clear_output``, ``update_display_data``: its outputs would not
be what a notebook client shows), and any run under ``LEARNDYN_SEED`` or ``LEARNDYN_DEVICE``, since
the book shows the default seed on the default device.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMINGS = ROOT / "_build" / "notebook_timings.json"
ENVIRONMENT_OVERRIDES = ("LEARNDYN_SEED", "LEARNDYN_DEVICE")
UNKEPT_MESSAGE = "unhandled iopub msg:"  # what nbval prints for a message it drops


@dataclass
class NotebookRun:
    """What the cells of one notebook did under nbval."""

    path: Path
    notebook: object = None
    code_cells: int = 0
    seconds: float = 0.0
    failed: bool = False
    complete: bool = True
    outputs: dict = field(default_factory=dict)
    language_info: dict | None = None


_runs: dict[str, NotebookRun] = {}


def pytest_addoption(parser):
    parser.addoption("--nb-jupyter-cache", metavar="DIR", default=None,
                     help="store each notebook that passed, with its outputs, in this jupyter-cache")


def _run_of(nodeid: str) -> NotebookRun | None:
    notebook = nodeid.split("::")[0]
    if not notebook.endswith(".ipynb"):
        return None
    return _runs.setdefault(notebook, NotebookRun(Path(notebook)))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    run = _run_of(report.nodeid)
    if run is None or not hasattr(item, "test_outputs"):
        return report
    run.path = Path(item.parent.path)
    run.notebook = item.parent.nb
    run.code_cells = sum(cell.cell_type == "code" for cell in run.notebook.cells)
    if UNKEPT_MESSAGE in report.capstdout:
        run.complete = False
    if call.when == "call" and report.passed:
        run.outputs[item.cell_num] = list(item.test_outputs or [])
        if item.cell_num == run.code_cells - 1:
            run.language_info = _language_info(item.parent.kernel)
    return report


def _language_info(kernel) -> dict | None:
    """The kernel's ``language_info``, which nbclient writes into an executed notebook's metadata."""
    try:
        reply = kernel.kc.kernel_info(reply=True, timeout=10)
    except Exception:  # a kernel that does not answer: the notebook's own metadata stays
        return None
    return reply["content"].get("language_info")


def pytest_runtest_logreport(report):
    run = _run_of(report.nodeid)
    if run is None:
        return
    run.seconds += report.duration
    if report.failed:
        run.failed = True


def _passed(run: NotebookRun) -> bool:
    return not run.failed and run.code_cells > 0 and len(run.outputs) == run.code_cells


def executed_notebook(run: NotebookRun):
    """The notebook as nbval ran it: each code cell with its outputs and execution count."""
    notebook = copy.deepcopy(run.notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    for count, cell in enumerate(code, start=1):
        cell.execution_count = count
        cell.outputs = copy.deepcopy(run.outputs[count - 1])
        for output in cell.outputs:
            if output.output_type == "execute_result":
                output.execution_count = count
    if run.language_info:
        notebook.metadata["language_info"] = run.language_info
    return notebook


def _store_in_cache(runs: list[NotebookRun], folder: Path) -> None:
    from jupyter_cache import get_cache
    from jupyter_cache.base import CacheBundleIn

    cache = get_cache(str(folder))
    for run in runs:
        bundle = CacheBundleIn(executed_notebook(run), str(run.path.resolve()),
                               data={"execution_seconds": run.seconds})
        cache.cache_notebook_bundle(bundle, check_validity=True, overwrite=True)


@contextlib.contextmanager
def _exclusive(path: Path):
    """Hold an exclusive lock on ``path`` (pytest-xdist workers finish their sessions concurrently)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def pytest_sessionfinish(session, exitstatus):
    passed = [run for run in _runs.values() if _passed(run)]
    if not passed:
        return
    with _exclusive(TIMINGS.with_suffix(".lock")):
        _record_and_store(session, passed)


def _record_and_store(session, passed: list[NotebookRun]) -> None:
    timings = json.loads(TIMINGS.read_text()) if TIMINGS.is_file() else {"seconds": {}}
    timings["seconds"].update({run.path.stem: round(run.seconds, 1) for run in passed})
    timings["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, CPU"
    TIMINGS.write_text(json.dumps(timings, indent=1, sort_keys=True) + "\n")

    folder = session.config.getoption("--nb-jupyter-cache")
    overridden = [name for name in ENVIRONMENT_OVERRIDES if os.environ.get(name, "").strip()]
    if folder is None:
        return
    if overridden:
        print(f"\njupyter-cache not filled: {', '.join(overridden)} is set, the book shows the defaults")
        return
    cacheable = [run for run in passed if run.complete]
    _store_in_cache(cacheable, Path(folder))
    print(f"\njupyter-cache {folder}: stored {', '.join(run.path.name for run in cacheable)}")
