"""Notebooks are committed clean: no outputs, no markers that hide a failure, at least one check."""

import json
import re
from pathlib import Path

import pytest
import yaml

from learndyn.teaching import exercise_cells, find_exercises
from tests.harness.seeds import NOT_CHAPTERS

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
FORBIDDEN = re.compile(r"NBVAL_SKIP|NBVAL_IGNORE_OUTPUT|NBVAL_RAISES_EXCEPTION|allow_errors|xfail")


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_clean(path):
    notebook = json.loads(path.read_text())
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), \
        f"{path.name} is committed with outputs"
    for cell in notebook["cells"]:
        tags = cell.get("metadata", {}).get("tags", [])
        assert not {"raises-exception", "skip-execution"} & set(tags), f"{path.name}: {tags}"
    source = "\n".join("".join(c["source"]) for c in code)
    assert not FORBIDDEN.search(source), f"{path.name} carries a marker that hides a failure"
    assert "assert" in source, f"{path.name} has no assertion"
    assert notebook["metadata"]["kernelspec"]["name"] == "python3"


def test_every_notebook_is_in_the_table_of_contents():
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = {entry["file"] for part in toc["parts"] for entry in part["chapters"]}
    for path in NOTEBOOKS:
        assert f"book/{path.stem}" in files, f"{path.name} is not in _toc.yml"


def test_config_executes_and_fails_on_errors():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "cache"
    assert config["execute"]["raise_on_error"] is True
    assert config["execute"]["allow_errors"] is False
    assert config["execute"]["timeout"] > 0


FOLDED = {"hide-input", "remove-input", "remove-cell"}
VISIBLE_CODE_LINES = 250


def _folded(cell: dict) -> bool:
    return bool(FOLDED & set(cell.get("metadata", {}).get("tags", [])))


def visible_code_lines(notebook: dict) -> int:
    """Non-blank lines of the code cells a reader sees unfolded (no hide/remove tag)."""
    return sum(1 for cell in notebook["cells"] if cell["cell_type"] == "code" and not _folded(cell)
               for line in "".join(cell["source"]).splitlines() if line.strip())


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_keeps_its_reading_budget(path):
    notebook = json.loads(path.read_text())
    count = visible_code_lines(notebook)
    assert count <= VISIBLE_CODE_LINES, f"{path.name}: {count} visible code lines, over {VISIBLE_CODE_LINES}"
    unfolded = [number for number in exercise_cells(notebook) if not _folded(notebook["cells"][number])]
    assert not unfolded, f"{path.name}: exercise code cells {unfolded} are not folded (hide-input)"


CHAPTERS = [path for path in NOTEBOOKS if path.stem not in NOT_CHAPTERS]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.name)
def test_every_chapter_has_five_exercises_two_of_them_coding(path):
    exercises = find_exercises(json.loads(path.read_text()), path.stem)
    kinds = [exercise.kind for exercise in exercises]
    assert len(exercises) >= 5 and kinds.count("coding") >= 2, f"{path.name}: {kinds}"
