"""``make mutants``: each chapter under each mutant it declares; every mutant must be killed.

``tests/mutants/<chapter>.toml`` declares the mutants of the chapter ``book/<chapter>.ipynb``::

    [[mutant]]
    name = "covariance term 1.5x in the mean equation"
    file = "lib/learndyn/flows.py"   # relative to the repository root: lib/... or book/<chapter>.ipynb
    old = "0.5 * torch.einsum("      # exact text, EXACTLY ONCE in that file (in a notebook: once
    new = "0.75 * torch.einsum("     #   across the sources of its cells)
    expect = "closure mean"          # the name, or the start of the name, of the check that kills it

For each chapter the unmutated chapter runs first (the baseline); if it fails, its mutants are
reported as not run. Each mutant then gets its own copy of ``lib/`` and ``book/`` (and the book's
configuration) in a temporary folder, with the substitution applied (a notebook is edited through
nbformat), and the chapter is executed there (:func:`.notebooks.execute`) with ``PYTHONPATH`` on the
copied ``lib/``, ahead of the editable install (checked before each run), and ``LEARNDYN_SEED=0``.
A mutant is killed when the execution fails; the check that failed is taken from the error.

The report (``tests/mutants/REPORT.md``) is rewritten after each run; the exit status is 1 when a
mutant survived, a declaration is wrong, or a baseline failed.

    python -m tests.harness.mutants [--chapters NAME ...] [--mutants-dir DIR] [--report PATH]
    python -m tests.harness.mutants --dry-run    # only check that every declaration applies
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import nbformat

from .notebooks import Outcome, execute
from .seeds import _commit

KEYS = ("name", "file", "old", "new", "expect")
COPIED = ("lib", "book", "_config.yml", "_toc.yml", "pyproject.toml")
IGNORED = shutil.ignore_patterns("__pycache__", "*.egg-info", ".ipynb_checkpoints", "_build")
SEED = "0"


class DeclarationError(ValueError):
    """A mutant that cannot be applied as declared."""


@dataclass(frozen=True)
class Mutant:
    chapter: str
    name: str
    file: str
    old: str
    new: str
    expect: str


@dataclass
class Row:
    """One line of the report."""

    chapter: str
    mutant: str
    file: str
    result: str  # "killed", "survived", "declaration error", "not run", or for a baseline "passed"/"FAILED"
    check: str = ""
    expect: str = ""
    matches: str = ""
    message: str = ""
    seconds: float | None = None


def load(path: Path) -> list[Mutant | DeclarationError]:
    """The mutants declared in ``path``; a malformed entry is a :class:`DeclarationError` in its place."""
    chapter = path.stem
    try:
        entries = tomllib.loads(path.read_text()).get("mutant", [])
    except tomllib.TOMLDecodeError as exc:
        return [DeclarationError(f"{path.name} is not valid TOML: {exc}")]
    if not isinstance(entries, list) or not entries:
        return [DeclarationError(f"{path.name} declares no [[mutant]]")]
    mutants = []
    for index, entry in enumerate(entries, start=1):
        missing = [key for key in KEYS if not isinstance(entry.get(key), str) or not entry.get(key)]
        unknown = sorted(set(entry) - set(KEYS))
        if missing or unknown:
            label = entry.get("name", f"mutant {index}")
            mutants.append(DeclarationError(f"{label}: missing or empty {missing}" if missing
                                            else f"{label}: unknown keys {unknown}"))
            continue
        mutants.append(Mutant(chapter, *(entry[key] for key in KEYS)))
    return mutants


def _target(mutant: Mutant, root: Path) -> Path:
    relative = Path(mutant.file)
    if relative.is_absolute() or ".." in relative.parts or relative.parts[0] not in ("lib", "book"):
        raise DeclarationError(f"file={mutant.file!r} must be a path under lib/ or book/")
    if relative.suffix == ".ipynb" and relative != Path("book") / f"{mutant.chapter}.ipynb":
        raise DeclarationError(f"file={mutant.file!r}: a notebook mutant edits the chapter it runs, "
                               f"book/{mutant.chapter}.ipynb")
    path = root / relative
    if not path.is_file():
        raise DeclarationError(f"file={mutant.file!r} does not exist")
    return path


def _occurrences(count: int, mutant: Mutant) -> None:
    if count != 1:
        raise DeclarationError(f"old={mutant.old!r} occurs {count} times in {mutant.file}, not exactly once")


def apply(mutant: Mutant, root: Path) -> None:
    """Substitute ``new`` for the one occurrence of ``old`` in ``root / file``."""
    path = _target(mutant, root)
    if path.suffix == ".ipynb":
        notebook = nbformat.read(path, as_version=4)
        counts = [cell.source.count(mutant.old) for cell in notebook.cells]
        if sum(counts) == 0 and mutant.old in "\n".join(cell.source for cell in notebook.cells):
            raise DeclarationError(f"old={mutant.old!r} spans two cells of {mutant.file}")
        _occurrences(sum(counts), mutant)
        cell = notebook.cells[counts.index(1)]
        cell.source = cell.source.replace(mutant.old, mutant.new)
        nbformat.write(notebook, path)
    else:
        text = path.read_text()
        _occurrences(text.count(mutant.old), mutant)
        path.write_text(text.replace(mutant.old, mutant.new))


def copy_book(root: Path, destination: Path) -> None:
    """The parts of the repository a chapter runs on: lib/, book/ and the book's configuration."""
    for name in COPIED:
        source = root / name
        if source.is_dir():
            shutil.copytree(source, destination / name, ignore=IGNORED)
        elif source.is_file():
            shutil.copy2(source, destination / name)


def _check_package_resolves(lib: Path, env: dict) -> None:
    """The kernel will import ``learndyn`` from the copy in ``lib`` (when it has one), not the install."""
    if not (lib / "learndyn").is_dir():
        return
    code = "import importlib.util; print(importlib.util.find_spec('learndyn').origin)"
    origin = subprocess.run([sys.executable, "-c", code], env=env, check=True, capture_output=True,
                            text=True).stdout.strip()
    if not Path(origin).resolve().is_relative_to(lib.resolve()):
        raise RuntimeError(f"learndyn resolves to {origin}, not to the mutated copy in {lib}")


def run_chapter(root: Path, chapter: str, mutant: Mutant | None = None,
                runner: Callable[..., Outcome] | None = None) -> Outcome:
    """Execute ``book/<chapter>.ipynb`` in a temporary copy of the book, with ``mutant`` applied."""
    runner = runner or execute
    with tempfile.TemporaryDirectory(prefix=f"mutant-{chapter}-") as folder:
        copy = Path(folder)
        copy_book(root, copy)
        if mutant is not None:
            apply(mutant, copy)
        lib = copy / "lib"
        path = os.pathsep.join(p for p in (str(lib), os.environ.get("PYTHONPATH", "")) if p)
        env = {"PYTHONPATH": path, "LEARNDYN_SEED": SEED}
        _check_package_resolves(lib, {**os.environ, **env})
        return runner(copy / "book" / f"{chapter}.ipynb", env=env)


def _cell(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def render(rows: Sequence[Row], heading: str) -> str:
    killed = sum(r.result == "killed" for r in rows)
    mutants = [r for r in rows if r.mutant != "(baseline)"]
    lines = ["# Mutation test", "", heading, "",
             f"{killed} of {len(mutants)} mutants killed; "
             f"{sum(r.result == 'survived' for r in rows)} survived, "
             f"{sum(r.result == 'declaration error' for r in rows)} declaration errors, "
             f"{sum(r.result == 'not run' for r in rows)} not run (baseline failed). "
             f"Each run: `LEARNDYN_SEED={SEED}`.", "",
             "| chapter | mutant | file | result | failing check | expect | matches | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- | ---: |"]
    for r in rows:
        check = r.check + (f" ({_cell(r.message)})" if r.result in ("declaration error", "FAILED") else "")
        seconds = "" if r.seconds is None else f"{r.seconds:.0f}"
        lines.append(f"| {r.chapter} | {_cell(r.mutant)} | `{r.file}` | {r.result} | {_cell(check)} "
                     f"| {_cell(r.expect)} | {r.matches} | {seconds} |")
    return "\n".join(lines) + "\n"


def mutation_test(root: Path, chapters: Sequence[str], mutants_dir: Path, report: Path, *,
                  runner: Callable[..., Outcome] | None = None, heading: str = "") -> list[Row]:
    """Run the baseline and the mutants of each chapter; rewrite ``report`` after each run."""
    heading = heading or f"{_commit(root)}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
    rows: list[Row] = []
    report.parent.mkdir(parents=True, exist_ok=True)

    def log(row: Row) -> None:
        rows.append(row)
        report.write_text(render(rows, heading))
        detail = f" at {row.check}" if row.check else ""
        print(f"{row.chapter}: {row.mutant}: {row.result}{detail}", flush=True)

    for chapter in chapters:
        declared = load(mutants_dir / f"{chapter}.toml")
        if not (root / "book" / f"{chapter}.ipynb").is_file():
            log(Row(chapter, "(baseline)", f"book/{chapter}.ipynb", "declaration error",
                    message=f"no notebook book/{chapter}.ipynb"))
            continue
        baseline = run_chapter(root, chapter, runner=runner)
        log(Row(chapter, "(baseline)", f"book/{chapter}.ipynb", "passed" if baseline.passed else "FAILED",
                check=baseline.check or "", message=baseline.message or "", seconds=baseline.seconds))
        for mutant in declared:
            if isinstance(mutant, DeclarationError):
                log(Row(chapter, "?", "", "declaration error", message=str(mutant)))
                continue
            if not baseline.passed:
                log(Row(chapter, mutant.name, mutant.file, "not run", expect=mutant.expect))
                continue
            try:
                outcome = run_chapter(root, chapter, mutant, runner=runner)
            except DeclarationError as exc:
                log(Row(chapter, mutant.name, mutant.file, "declaration error", expect=mutant.expect,
                        message=str(exc)))
                continue
            if outcome.passed:
                log(Row(chapter, mutant.name, mutant.file, "survived", expect=mutant.expect, matches="no",
                        seconds=outcome.seconds))
            else:
                matches = "yes" if (outcome.check or "").startswith(mutant.expect) else "no"
                log(Row(chapter, mutant.name, mutant.file, "killed", check=outcome.check or "",
                        expect=mutant.expect, matches=matches, message=outcome.message or "",
                        seconds=outcome.seconds))
    return rows


def dry_run(root: Path, chapters: Sequence[str], mutants_dir: Path) -> int:
    """Apply each declared mutant to a temporary copy, execute nothing; the number of bad declarations."""
    bad = 0
    for chapter in chapters:
        for mutant in load(mutants_dir / f"{chapter}.toml"):
            try:
                if isinstance(mutant, DeclarationError):
                    raise mutant
                with tempfile.TemporaryDirectory() as folder:
                    copy_book(root, Path(folder))
                    apply(mutant, Path(folder))
            except DeclarationError as exc:
                bad += 1
                print(f"{chapter}: declaration error: {exc}")
            else:
                print(f"{chapter}: {mutant.name}: applies")
    return bad


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chapters", nargs="*", default=None,
                        help="chapter stems (default: every tests/mutants/*.toml)")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--mutants-dir", type=Path, default=None)
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--dry-run", action="store_true", help="check the declarations, run nothing")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    mutants_dir = (args.mutants_dir or root / "tests" / "mutants").resolve()
    declared = sorted(p.stem for p in mutants_dir.glob("*.toml"))
    chapters = [c for part in args.chapters for c in part.replace(",", " ").split()] \
        if args.chapters else declared
    unknown = sorted(set(chapters) - set(declared))
    if unknown:
        parser.error(f"no {mutants_dir}/<name>.toml for {unknown}; declared: {declared}")
    if not chapters:
        parser.error(f"no mutants declared in {mutants_dir}")
    if args.dry_run:
        return 1 if dry_run(root, chapters, mutants_dir) else 0
    report = args.report or mutants_dir / "REPORT.md"
    selection = "" if not args.chapters else f" CHAPTERS=\"{' '.join(chapters)}\""
    heading = f"`make mutants{selection}`, {_commit(root)}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
    rows = mutation_test(root, chapters, mutants_dir, report, heading=heading)
    bad = [r for r in rows if r.result in ("survived", "declaration error", "FAILED", "not run")]
    print(f"report: {report}")
    for r in bad:
        print(f"  {r.chapter}: {r.mutant}: {r.result} {r.message}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
