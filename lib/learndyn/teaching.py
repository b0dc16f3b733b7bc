"""Hand-outs for a course: copies of the chapter notebooks with the exercise solutions removed.

``python -m learndyn.teaching book student`` (``make student``) writes ``student/<chapter>.ipynb`` for
every notebook in ``book/``. A solution is a sphinx-exercise ``{solution}`` directive, fenced with
backticks or colons; it is cut out of its markdown cell, and a cell left empty is dropped.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

_SOLUTION = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{solution\}.*?^(?P=fence)[ \t]*$\n?", re.MULTILINE | re.DOTALL)


def strip_solutions_from_text(text: str) -> str:
    """``text`` with every ``{solution}`` block removed."""
    return _SOLUTION.sub("", text)


def strip_solutions(notebook: dict) -> tuple[dict, int]:
    """A copy of ``notebook`` (nbformat JSON) without solutions, and how many were removed."""
    cells, removed = [], 0
    for cell in notebook["cells"]:
        if cell["cell_type"] == "markdown":
            source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
            stripped = strip_solutions_from_text(source)
            removed += len(_SOLUTION.findall(source))
            if not stripped.strip():
                continue
            cell = {**cell, "source": stripped}
        cells.append(cell)
    return {**notebook, "cells": cells}, removed


def write_student_copies(book: str | Path, out: str | Path) -> dict[str, int]:
    """Write solution-free copies of every ``book/*.ipynb`` into ``out``; returns removals per file."""
    book, out = Path(book), Path(out)
    notebooks = sorted(book.glob("*.ipynb"))
    if not notebooks:
        raise ValueError(f"book={str(book)!r} holds no notebooks")
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for path in notebooks:
        copy, removed = strip_solutions(json.loads(path.read_text()))
        (out / path.name).write_text(json.dumps(copy, indent=1, ensure_ascii=False) + "\n")
        counts[path.name] = removed
    return counts


if __name__ == "__main__":
    source, target = (sys.argv[1:] + ["book", "student"][len(sys.argv) - 1:])[:2]
    for name, removed in write_student_copies(source, target).items():
        print(f"{target}/{name}: {removed} solution(s) removed")


__all__ = [
    "strip_solutions_from_text", "strip_solutions", "write_student_copies"
]
