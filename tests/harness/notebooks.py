"""Execute one notebook in a fresh kernel and say how it ended: the code ``make seeds`` and
``make mutants`` (and ``bench/bench_notebooks.py``) share.

A failing cell raises nbclient's ``CellExecutionError``, which carries the exception's class name
(``ename``) and message (``evalue``). A :class:`learndyn.checks.CheckFailed` message starts with the
name of the check, followed by ``": "`` and one of :data:`CHECK_VERDICTS` (a plain assertion: up to
the first ``": "``); that name is what the runners count failures by.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

CELL_TIMEOUT_SECONDS = 300
"""The per-cell limit of the book build (``execute.timeout`` in _config.yml)."""

ASSERTIONS = ("CheckFailed", "AssertionError")


@dataclass(frozen=True)
class Outcome:
    """How one execution of a notebook ended.

    ``check`` names what failed: the check's name for a failed assertion, else the exception class
    (``"timeout"`` and ``"dead kernel"`` for those); None when every cell passed.
    """

    notebook: str
    passed: bool
    seconds: float
    check: str | None = None
    error: str | None = None
    message: str | None = None
    cell: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


#: How the messages of ``learndyn.checks.CheckFailed`` go on after the check's name.
CHECK_VERDICTS = ("the theory misses", "the wrong theories", "computed and reference differ",
                  "observed order")


def check_name(ename: str, evalue: str) -> str:
    """The name of the check an exception reports: for ``CheckFailed`` and ``AssertionError`` the start
    of the message up to ``": "`` (the whole first line when there is none), for anything else the
    exception class."""
    if ename not in ASSERTIONS:
        return ename
    first_line = (evalue or "").strip().splitlines()[0] if (evalue or "").strip() else ""
    # a check's own name may hold ": "; learndyn.checks ends it with one of these phrases
    ends = [first_line.find(f": {phrase}") for phrase in CHECK_VERDICTS]
    ends = [end for end in ends if end > 0]
    name = first_line[:min(ends)] if ends else first_line.split(": ", 1)[0]
    return name.strip() or ename


def _failing_cell(notebook) -> int | None:
    """The index among code cells of the first cell with an error output."""
    code = [c for c in notebook.cells if c.cell_type == "code"]
    for index, cell in enumerate(code):
        if any(output.get("output_type") == "error" for output in cell.get("outputs", [])):
            return index
    return None


def execute(path: Path | str, *, env: Mapping[str, str] | None = None,
            timeout: int = CELL_TIMEOUT_SECONDS) -> Outcome:
    """Run every cell of the notebook at ``path`` in a new kernel started in its folder, with the
    variables ``env`` added to this process's environment; the notebook file is not changed."""
    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=timeout, allow_errors=False,
                            resources={"metadata": {"path": str(path.parent)}})
    environment = {**os.environ, **(env or {})}
    start = time.perf_counter()
    try:
        client.execute(env=environment)
    except CellExecutionError as exc:
        first_line = (exc.evalue or "").strip().splitlines()
        return Outcome(path.stem, False, time.perf_counter() - start,
                       check=check_name(exc.ename, exc.evalue), error=exc.ename,
                       message=first_line[0] if first_line else "", cell=_failing_cell(notebook))
    except CellTimeoutError as exc:
        return Outcome(path.stem, False, time.perf_counter() - start, check="timeout",
                       error="CellTimeoutError", message=str(exc).strip().splitlines()[0])
    except DeadKernelError as exc:
        return Outcome(path.stem, False, time.perf_counter() - start, check="dead kernel",
                       error="DeadKernelError", message=str(exc).strip())
    return Outcome(path.stem, True, time.perf_counter() - start)
