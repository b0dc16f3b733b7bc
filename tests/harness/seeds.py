"""``make seeds``: every chapter under N seeds, and how often each check failed, next to the budget.

The seeds are the first N words of ``numpy.random.SeedSequence(ENTROPY).generate_state``, so a sweep
of 5 seeds is the start of one of 20. A run is one execution of a chapter in a fresh kernel with
``LEARNDYN_SEED`` set (:func:`.notebooks.execute`). Each run is appended, as one JSON line, to a
state file as soon as it ends; a run found there with the same fingerprint (a hash of the package
source and of the notebook) is not repeated, so an interrupted sweep resumes where it stopped. The
report is rewritten after every run.

The prediction: each chapter's ledger holds the chance that a correct chapter fails on some seed
under ``learndyn.checks.FALSE_ALARM_PER_NOTEBOOK`` (a Bonferroni bound, so an upper bound), so over
n runs at most n times that many failures are expected, and k or more turn up with at most the
binomial tail probability.

    python -m tests.harness.seeds [--n 20] [--chapters NAME ...] [--report PATH] [--state PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from .notebooks import Outcome, execute

ENTROPY = 20260516
"""The fixed entropy the seeds are drawn from: the seeds are chosen by the target, not by hand."""

NOT_CHAPTERS = ("course", "scaling_up")
"""Notebooks of book/ that are not chapters: the instructors' page runs no experiment."""

DEFAULT_REPORT = Path("tests/harness/SEEDS.md")
DEFAULT_STATE = Path("_build/seeds/runs.jsonl")


def seed_list(count: int) -> list[int]:
    """The first ``count`` seeds of the sweep."""
    if count < 1:
        raise ValueError(f"count={count!r} must be at least 1")
    return [int(word) for word in np.random.SeedSequence(ENTROPY).generate_state(count)]


def chapters_of(book: Path) -> list[str]:
    """The stems of the chapter notebooks in ``book``."""
    return sorted(p.stem for p in book.glob("*.ipynb") if p.stem not in NOT_CHAPTERS)


def fingerprint(root: Path, chapter: str) -> str:
    """A hash of what a run's outcome depends on: the package source and the chapter notebook."""
    digest = hashlib.sha256()
    sources = sorted((root / "lib").rglob("*.py")) + [root / "pyproject.toml", root / "book" /
                                                      f"{chapter}.ipynb"]
    for path in sources:
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def false_alarm_budget() -> float:
    from learndyn.checks import FALSE_ALARM_PER_NOTEBOOK

    return FALSE_ALARM_PER_NOTEBOOK


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p)."""
    if k <= 0:
        return 1.0
    return float(sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1)))


def load_state(path: Path) -> dict[tuple[str, int, str], dict]:
    """The runs recorded in ``path``, keyed by (chapter, seed, fingerprint); the last one wins."""
    runs = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                record = json.loads(line)
                runs[record["chapter"], record["seed"], record["fingerprint"]] = record
    return runs


def _commit(root: Path) -> str:
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "no git commit"
    return f"commit {head}" + (" with local changes" if dirty else "")


def _rate(value: float) -> str:
    return f"{value:.3g}"


def render(records: Sequence[dict], *, chapters: Sequence[str], seeds: Sequence[int], budget: float,
           heading: str) -> str:
    """The markdown report of the runs ``records`` of the sweep ``chapters`` x ``seeds``."""
    by_chapter = defaultdict(list)
    for record in records:
        by_chapter[record["chapter"]].append(record)
    planned = len(chapters) * len(seeds)
    failed = [r for r in records if not r["passed"]]
    lines = [
        "# Seed sweep",
        "",
        heading,
        "",
        f"{len(records)} of {planned} runs done ({len(chapters)} chapters x {len(seeds)} seeds).",
        "",
        f"Seeds: the first {len(seeds)} words of "
        f"`numpy.random.SeedSequence({ENTROPY}).generate_state`: "
        + ", ".join(str(s) for s in seeds) + ".",
        "",
        f"Budget: a correct chapter fails on a seed with probability at most {budget:g} "
        "(`learndyn.checks.FALSE_ALARM_PER_NOTEBOOK`).",
        "",
        "## Per chapter",
        "",
        "| chapter | runs | failed | failure rate | predicted rate (at most) "
        "| expected failures (at most) | P(as many or more) (at most) | median run time (s) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for chapter in chapters:
        runs = by_chapter.get(chapter, [])
        k = sum(not r["passed"] for r in runs)
        n = len(runs)
        median = f"{statistics.median(r['seconds'] for r in runs):.1f}" if runs else ""
        rate = _rate(k / n) if n else ""
        lines.append(f"| {chapter} | {n} | {k} | {rate} | {budget:g} | {_rate(n * budget)} "
                     f"| {_rate(binomial_tail(k, n, budget))} | {median} |")
    n, k = len(records), len(failed)
    lines.append(f"| all | {n} | {k} | {_rate(k / n) if n else ''} | {budget:g} "
                 f"| {_rate(n * budget)} | {_rate(binomial_tail(k, n, budget))} | |")
    lines += ["", "## Failures per check", ""]
    per_check = Counter((r["chapter"], r["check"]) for r in failed)
    if per_check:
        lines += ["| chapter | check | failures | seeds |", "| --- | --- | ---: | --- |"]
        for (chapter, check), count in sorted(per_check.items()):
            failing = ", ".join(str(r["seed"]) for r in failed
                                if r["chapter"] == chapter and r["check"] == check)
            lines.append(f"| {chapter} | {check} | {count} | {failing} |")
        lines += ["", "## Failed runs", "", "| chapter | seed | check | cell | message |",
                  "| --- | ---: | --- | ---: | --- |"]
        for r in failed:
            message = (r.get("message") or "").replace("|", "\\|")
            lines.append(f"| {r['chapter']} | {r['seed']} | {r['check']} | {r.get('cell', '')} "
                         f"| {message} |")
    else:
        lines.append("No check failed.")
    return "\n".join(lines) + "\n"


def sweep(root: Path, chapters: Sequence[str], count: int, *, state: Path, report: Path,
          runner: Callable[..., Outcome] = execute, heading: str = "") -> list[dict]:
    """Run every chapter under each of the first ``count`` seeds, skipping runs already in ``state``;
    rewrite ``report`` after each run. Returns the records of the sweep."""
    seeds = seed_list(count)
    budget = false_alarm_budget()
    done = load_state(state)
    fingerprints = {chapter: fingerprint(root, chapter) for chapter in chapters}
    records = [done[key] for chapter in chapters for seed in seeds
               if (key := (chapter, seed, fingerprints[chapter])) in done]
    heading = heading or f"{_commit(root)}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
    state.parent.mkdir(parents=True, exist_ok=True)
    report.parent.mkdir(parents=True, exist_ok=True)

    def write_report():
        report.write_text(render(records, chapters=chapters, seeds=seeds, budget=budget, heading=heading))

    write_report()
    for seed in seeds:  # seed-major: a partial sweep covers every chapter
        for chapter in chapters:
            if (chapter, seed, fingerprints[chapter]) in done:
                continue
            outcome = runner(root / "book" / f"{chapter}.ipynb", env={"LEARNDYN_SEED": str(seed)})
            record = {"chapter": chapter, "seed": seed, "fingerprint": fingerprints[chapter],
                      **{k: v for k, v in outcome.as_dict().items() if k != "notebook"}}
            with state.open("a") as file:
                file.write(json.dumps(record) + "\n")
            records.append(record)
            verdict = "passed" if outcome.passed else f"FAILED at {outcome.check}: {outcome.message}"
            print(f"{chapter} seed {seed}: {verdict} ({outcome.seconds:.0f} s)", flush=True)
            write_report()
    return records


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="number of seeds (default 20)")
    parser.add_argument("--chapters", nargs="*", default=None, help="chapter stems (default: all)")
    parser.add_argument("--root", type=Path, default=Path.cwd())
    parser.add_argument("--report", type=Path, default=None)
    parser.add_argument("--state", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.root.resolve()
    available = [p.stem for p in sorted((root / "book").glob("*.ipynb"))]
    chapters = [c for part in args.chapters for c in part.replace(",", " ").split()] \
        if args.chapters else chapters_of(root / "book")
    unknown = sorted(set(chapters) - set(available))
    if unknown:
        parser.error(f"no notebook book/<name>.ipynb for {unknown}; choose from {available}")
    report = args.report or root / DEFAULT_REPORT
    selection = "" if not args.chapters else f" CHAPTERS=\"{' '.join(chapters)}\""
    heading = f"`make seeds N={args.n}{selection}`, {_commit(root)}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC."
    records = sweep(root, chapters, args.n, state=args.state or root / DEFAULT_STATE, report=report,
                    heading=heading)
    failures = sum(not r["passed"] for r in records)
    print(f"{failures} failures in {len(records)} runs; report: {report}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
