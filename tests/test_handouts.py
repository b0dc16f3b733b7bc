"""Every coding exercise of the book, as a hand-out: unfilled, its check fails gracefully; filled with
the reference solution, it passes.

The exercises are found in ``book/*.ipynb`` (by :func:`learndyn.teaching.read_exercises`) and in the
fixture ``tests/fixtures/exercises.ipynb``. Each program holds only the exercise's own cells, as
:func:`learndyn.teaching.handout_program` joins them: its scaffold, (filled) its solution, and its
check. All programs run in one fresh interpreter (torch is imported once, not once per exercise),
each in a namespace of its own, so an exercise that leans on a name the chapter defined elsewhere
fails. Nothing is written into the repository: the programs run in a temporary folder.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from learndyn.teaching import exercise_problems, handout_program, read_exercises, strip_solutions

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "exercises.ipynb"
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb")) + [FIXTURE]
EXERCISES = read_exercises(NOTEBOOKS)
CODING = [exercise for exercise in EXERCISES if exercise.coding]
SECONDS, SECONDS_PER_PROGRAM = 120, 30  # the interpreter's start, and each program


def test_the_coding_exercises_are_found():
    assert {"fx-ex-normal-cdf", "fx-ex-ensemble"} <= {exercise.label for exercise in CODING}
    labels = [exercise.label for exercise in EXERCISES]
    assert len(labels) == len(set(labels)), "two exercises share a label"


@pytest.mark.parametrize("exercise", EXERCISES, ids=lambda e: f"{e.chapter}:{e.label}")
def test_each_exercise_follows_the_convention(exercise):
    assert exercise_problems(exercise) == [], f"{exercise.chapter}: {exercise.label}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_the_hand_out_keeps_scaffolds_and_checks_and_drops_solutions(path):
    copy, _ = strip_solutions(json.loads(path.read_text()))
    nbformat.validate(nbformat.from_dict(copy))
    kept = {"".join(cell["source"]) for cell in copy["cells"] if cell["cell_type"] == "code"}
    for exercise in (e for e in CODING if e.chapter == path.stem):
        assert set(exercise.scaffold) <= kept and set(exercise.check) <= kept, exercise.label
        assert not set(exercise.solution) & kept, f"{exercise.label}: a solution cell is in the hand-out"


RUNNER = """
import contextlib, io, json, sys, traceback

results = {}
for name, program in json.load(open(sys.argv[1])).items():
    out, err, error = io.StringIO(), io.StringIO(), None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            exec(compile(program, name, "exec"), {"__name__": "__main__"})
        except BaseException:
            error = traceback.format_exc()
    results[name] = {"stdout": out.getvalue(), "stderr": err.getvalue(), "error": error}
json.dump(results, open(sys.argv[2], "w"))
"""


@pytest.fixture(scope="module")
def handout_runs(tmp_path_factory):
    """What each hand-out program printed, and the traceback of any error, keyed by (label, filled)."""
    folder = tmp_path_factory.mktemp("handouts")
    programs = {f"{e.label}:{filled}": handout_program(e, filled=filled) for e in CODING for filled in (0, 1)}
    (folder / "programs.json").write_text(json.dumps(programs))
    (folder / "runner.py").write_text(RUNNER)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("LEARNDYN_")}
    environment.update(PYTHONDONTWRITEBYTECODE="1", MPLBACKEND="Agg")
    subprocess.run([sys.executable, "runner.py", "programs.json", "results.json"], cwd=folder,
                   env=environment, check=True, timeout=SECONDS + SECONDS_PER_PROGRAM * len(programs))
    return json.loads((folder / "results.json").read_text())


@pytest.mark.parametrize("filled", [False, True], ids=["unfilled", "filled"])
@pytest.mark.parametrize("exercise", CODING, ids=lambda e: f"{e.chapter}:{e.label}")
def test_the_hand_out_checks_itself(exercise, filled, handout_runs):
    run = handout_runs[f"{exercise.label}:{int(filled)}"]
    report = f"stdout:\n{run['stdout']}\nstderr:\n{run['stderr']}\n{run['error'] or ''}"
    assert run["error"] is None, f"{exercise.label} ({'filled' if filled else 'unfilled'}) raised\n{report}"
    if filled:
        assert f"{exercise.label}: passed" in run["stdout"], report
    else:
        assert f"{exercise.label}: not attempted" in run["stdout"], report
        assert f"{exercise.label}: passed" not in run["stdout"], report
