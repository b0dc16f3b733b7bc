"""Exercises for a course: checks a student can run, the list of exercises, and the hand-outs.

The conventions are those of the authors' page (``book/authoring.md``):

- an exercise is a sphinx-exercise ``{exercise}`` directive with a ``:label:``, a ``:class:`` that
  names its kind (``coding``, ``derivation`` or ``reading``) and a first paragraph
  ``*Practises:* <what>. *Time:* <N> min.``, which :func:`find_exercises` reads for the course page;
- a coding exercise follows its directive with a code cell tagged ``exercise-scaffold`` (a function
  whose body raises ``NotImplementedError`` or returns ``...``), its solution as code cells between
  the gated markdown directives ``{solution-start} <label>`` and ``{solution-end}``, and a code cell
  tagged ``exercise-check`` that calls :func:`check_function` or :func:`check_estimate`.

A check says ``passed``, or what is wrong (not attempted yet, an exception, the shape, the dtype, the
sign, a constant factor, an additive constant, else the largest relative error), and never prints the
reference values. An unfilled scaffold is reported without raising, so a hand-out runs from top to
bottom; a filled-in answer that is wrong raises :class:`ExerciseNotPassed` (unless ``strict=False``),
so a book whose solution went stale fails under nbval. In IPython that error shows as one line.

``python -m learndyn.teaching book student`` (``make student``) writes ``student/<chapter>.ipynb`` for
every notebook in ``book/``, without solutions: the prose ``{solution}`` directives (fenced with
backticks or colons) are cut out of their markdown cells, and everything from a ``{solution-start}``
to its ``{solution-end}`` (markdown and code cells) is dropped; the scaffold and check cells stay.
"""

from __future__ import annotations

import contextlib
import copy
import fractions
import importlib
import io
import json
import math
import re
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checks import FALSE_ALARM_PER_NOTEBOOK, OUTPUT_WIDTH, CheckFailed, Claims

KINDS = ("coding", "derivation", "reading")
"""The kinds of exercise, which the ``class`` option of an exercise directive names."""

SCAFFOLD_TAG = "exercise-scaffold"
"""The cell tag of a coding exercise's scaffold, the code that a student fills in."""

CHECK_TAG = "exercise-check"
"""The cell tag of a coding exercise's check, a call of :func:`check_function` or :func:`check_estimate`."""

_FENCE = r"(?P<fence>`{3,}|:{3,})"
_SOLUTION = re.compile(
    r"^(?P<fence>`{3,}|:{3,})\{solution\}.*?^(?P=fence)[ \t]*$\n?", re.MULTILINE | re.DOTALL)
_EXERCISE = re.compile(
    rf"^{_FENCE}\{{exercise\}}(?P<title>[^\n]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.MULTILINE | re.DOTALL)
_GATE = re.compile(
    rf"^{_FENCE}\{{solution-(?P<which>start|end)\}}(?P<argument>[^\n]*)\n.*?^(?P=fence)[ \t]*$\n?",
    re.MULTILINE | re.DOTALL)
_OPTION = re.compile(r"^:(?P<key>[\w-]+):[ \t]*(?P<value>.*)$")
_PRACTISES = re.compile(r"\*Practises:\*\s*(?P<what>.*?)\s*(?=\*Time:\*|$)", re.DOTALL)
_TIME = re.compile(r"\*Time:\*\s*(?:about\s+|~\s*)?(?P<minutes>\d+)\s*min", re.IGNORECASE)


# --------------------------------------------------------------------------------------------------
# Hand-outs


def strip_solutions_from_text(text: str) -> str:
    """``text`` with every ``{solution}`` block removed."""
    return _SOLUTION.sub("", text)


def _source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _gates(text: str) -> list[tuple[str, str, int, int]]:
    """The ``{solution-start}``/``{solution-end}`` directives of ``text``: (which, label, start, end)."""
    return [(m["which"], m["argument"].strip(), m.start(), m.end()) for m in _GATE.finditer(text)]


def strip_solutions(notebook: dict) -> tuple[dict, int]:
    """A copy of ``notebook`` (nbformat JSON) without solutions, and how many were removed.

    Removed: every ``{solution}`` block of a markdown cell, and everything from a ``{solution-start}``
    directive to its ``{solution-end}``: the text of the markdown cells between them and every code
    cell. A markdown cell left empty is dropped. An unbalanced gate raises ``ValueError``.
    """
    cells, removed, inside = [], 0, None
    for cell in notebook["cells"]:
        if cell["cell_type"] != "markdown":
            if inside is None:
                cells.append(cell)
            continue
        source, kept, position = _source(cell), [], 0
        for which, label, start, end in _gates(source):
            if which == "start":
                if inside is not None:
                    raise ValueError(f"{{solution-start}} {label} opens inside the solution of {inside}")
                kept.append(source[position:start])
                inside, removed = label or "?", removed + 1
            else:
                if inside is None:
                    raise ValueError("a {solution-end} without its {solution-start}")
                inside = None
            position = end
        if inside is None:
            kept.append(source[position:])
        text = "".join(kept)
        removed += len(_SOLUTION.findall(text))
        stripped = strip_solutions_from_text(text)
        if stripped.strip():
            cells.append({**cell, "source": stripped})
    if inside is not None:
        raise ValueError(f"the {{solution-start}} of {inside} has no {{solution-end}}")
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
        copy_, removed = strip_solutions(json.loads(path.read_text()))
        (out / path.name).write_text(json.dumps(copy_, indent=1, ensure_ascii=False) + "\n")
        counts[path.name] = removed
    return counts


# --------------------------------------------------------------------------------------------------
# The list of exercises


@dataclass(frozen=True)
class Exercise:
    """One ``{exercise}`` of a chapter, as :func:`find_exercises` read it.

    ``kind`` is ``"coding"`` when the exercise has a scaffold or a check cell, else the kind its
    ``:class:`` names (one of :data:`KINDS`), else ``None``; ``practises`` and ``minutes`` come from
    its first paragraph (``None`` when missing). ``scaffold``, ``solution`` and ``check`` are the
    sources of its code cells: those tagged :data:`SCAFFOLD_TAG`, those between its
    ``{solution-start}`` and ``{solution-end}``, and those tagged :data:`CHECK_TAG`.
    """

    label: str
    chapter: str
    title: str = ""
    kind: str | None = None
    practises: str | None = None
    minutes: int | None = None
    classes: tuple[str, ...] = ()
    scaffold: tuple[str, ...] = ()
    solution: tuple[str, ...] = ()
    check: tuple[str, ...] = ()

    @property
    def coding(self) -> bool:
        """Whether a student answers it in code (it has a scaffold or a check cell)."""
        return self.kind == "coding"


def _exercise_header(title: str, body: str) -> dict:
    lines, options = body.splitlines(), {}
    while lines and _OPTION.match(lines[0]):
        match = _OPTION.match(lines.pop(0))
        options[match["key"]] = match["value"].strip()
    text = "\n".join(lines).strip()
    first = text.split("\n\n")[0] if text else ""
    practises = _PRACTISES.search(first)
    minutes = _TIME.search(first)
    what = practises["what"].strip().rstrip(".;,").strip() if practises else ""
    return {"label": options.get("label", ""), "title": title.strip(),
            "classes": tuple(options.get("class", "").split()),
            "practises": " ".join(what.split()) or None,
            "minutes": int(minutes["minutes"]) if minutes else None}


def find_exercises(notebook: dict, chapter: str = "") -> list[Exercise]:
    """The exercises of ``notebook`` (nbformat JSON), in order, with their code cells.

    A scaffold or check cell belongs to the last ``{exercise}`` above it; the code cells between
    ``{solution-start} <label>`` and ``{solution-end}`` belong to the exercise ``<label>``. An exercise
    without a ``:label:``, a scaffold or check cell above every exercise, or a solution whose label
    names no exercise above it raises ``ValueError``.
    """
    found, _ = _read(notebook, chapter)
    exercises = []
    for label, item in found.items():
        declared = next((c for c in item["classes"] if c in KINDS), None)
        kind = "coding" if item["scaffold"] or item["check"] else declared
        exercises.append(Exercise(label=label, chapter=chapter, title=item["title"], kind=kind,
                                  practises=item["practises"], minutes=item["minutes"],
                                  classes=item["classes"], scaffold=tuple(item["scaffold"]),
                                  solution=tuple(item["solution"]), check=tuple(item["check"])))
    return exercises


def exercise_cells(notebook: dict) -> dict[int, str]:
    """The code cells of ``notebook`` that belong to its exercises, by index, each with its part
    (``"scaffold"``, ``"solution"`` or ``"check"``): for a reading budget that counts the chapter's
    own code apart from its exercises."""
    return dict(_read(notebook, "")[1])


def _read(notebook: dict, chapter: str) -> tuple[dict[str, dict], dict[int, str]]:
    """The exercises of ``notebook`` by label, and the part (scaffold, solution, check) of each
    code cell that belongs to one, by cell index."""
    found: dict[str, dict] = {}
    parts: dict[int, str] = {}
    current = inside = None
    for number, cell in enumerate(notebook["cells"]):
        source = _source(cell)
        if cell["cell_type"] == "markdown":
            events = [(m.start(), "exercise", m) for m in _EXERCISE.finditer(source)]
            events += [(start, which, label) for which, label, start, _ in _gates(source)]
            for _, what, item in sorted(events, key=lambda event: event[0]):
                if what == "exercise":
                    header = _exercise_header(item["title"], item["body"])
                    if not header["label"]:
                        raise ValueError(f"{chapter or 'notebook'}, cell {number}: an exercise "
                                         f"without :label:")
                    current = header["label"]
                    found[current] = {**header, "scaffold": [], "solution": [], "check": []}
                elif what == "start":
                    if item not in found:
                        raise ValueError(f"{chapter or 'notebook'}, cell {number}: {{solution-start}} "
                                         f"{item!r} names no exercise above it")
                    inside = item
                else:
                    inside = None
            continue
        if cell["cell_type"] != "code":
            continue
        tags = set(cell.get("metadata", {}).get("tags", []))
        if inside is not None:
            label, parts[number] = inside, "solution"
        elif tags & {SCAFFOLD_TAG, CHECK_TAG}:
            if current is None:
                raise ValueError(f"{chapter or 'notebook'}, cell {number}: a {sorted(tags)} cell above "
                                 f"every exercise")
            label, parts[number] = current, "scaffold" if SCAFFOLD_TAG in tags else "check"
        else:
            continue
        found[label][parts[number]].append(source)
    return found, parts


def read_exercises(paths: Iterable[str | Path]) -> list[Exercise]:
    """The exercises of every notebook in ``paths``, in that order; each names its notebook's stem."""
    exercises = []
    for path in map(Path, paths):
        exercises += find_exercises(json.loads(path.read_text()), chapter=path.stem)
    return exercises


def exercise_problems(exercise: Exercise) -> list[str]:
    """What keeps ``exercise`` from being a complete exercise by the authors' convention (empty: none).

    A coding exercise needs a scaffold, a solution and a check cell that names its label, and its
    cells must be plain Python (no IPython magics), since a test runs them in a fresh interpreter.
    An exercise whose ``:class:`` says ``coding`` needs its scaffold and check cells.
    """
    problems = []
    if "coding" in exercise.classes and exercise.kind != "coding":
        problems.append("its :class: says coding, but no cell is tagged exercise-scaffold or exercise-check")
    if exercise.kind != "coding":
        return problems
    for part in ("scaffold", "solution", "check"):
        if not getattr(exercise, part):
            problems.append(f"no {part} cell")
    if exercise.check and not any(exercise.label in source for source in exercise.check):
        problems.append(f"the check cell does not name the exercise {exercise.label!r}")
    for filled in (False, True):
        try:
            compile(handout_program(exercise, filled=filled), exercise.label, "exec")
        except SyntaxError as exc:
            problems.append(f"its cells are not plain Python: {exc.msg} (line {exc.lineno})")
            break
    return problems


def handout_program(exercise: Exercise, *, filled: bool) -> str:
    """The Python program of a coding exercise as a hand-out runs it: its scaffold cells, then (when
    ``filled``) its solution cells, then its check cells."""
    if exercise.kind != "coding":
        raise ValueError(f"{exercise.label} is not a coding exercise")
    parts = [("scaffold", exercise.scaffold)] + ([("solution", exercise.solution)] if filled else [])
    parts += [("check", exercise.check)]
    return "\n".join(f"# {exercise.label}: {name} cell {number}\n{source}\n"
                     for name, sources in parts for number, source in enumerate(sources, start=1))


def suggest_assignments(exercises: Iterable[Exercise], *,
                        per_week: int = 3) -> list[tuple[str, list[Exercise]]]:
    """Up to ``per_week`` exercises for each chapter (one chapter a week, in the order of
    ``exercises``), varied in kind: the first coding, the first derivation and the first reading
    exercise, then the others in order; each week's choice is listed in the chapter's order."""
    if isinstance(per_week, bool) or not isinstance(per_week, int) or per_week < 1:
        raise ValueError(f"per_week={per_week!r} must be an integer >= 1")
    chapters: dict[str, list[Exercise]] = {}
    for exercise in exercises:
        chapters.setdefault(exercise.chapter, []).append(exercise)
    weeks = []
    for chapter, items in chapters.items():
        first = [next(e for e in items if e.kind == kind) for kind in KINDS
                 if any(e.kind == kind for e in items)]
        ordered = first + [e for e in items if e not in first]
        chosen = ordered[:per_week]
        weeks.append((chapter, [e for e in items if e in chosen]))
    return weeks


# --------------------------------------------------------------------------------------------------
# Checks


class ExerciseNotPassed(AssertionError):
    """A filled-in answer that a check found wrong; the message starts with the exercise's label.

    IPython shows it as its message alone, without a traceback.
    """

    def _render_traceback_(self) -> list[str]:
        return [f"{type(self).__name__}: {self}"]


@dataclass(frozen=True)
class CheckResult:
    """What a check found: ``status`` is ``"passed"``, ``"not attempted"`` (the scaffold is still
    unfilled) or ``"not passed"``, and ``message`` says why. True when it passed."""

    exercise: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        """Whether the answer passed the check."""
        return self.status == "passed"

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return f"{self.exercise}: {self.status}: {self.message}"

    def _ipython_display_(self) -> None:
        """The check has printed its line already: display nothing more."""


@dataclass(frozen=True)
class Draw:
    """An input of :func:`check_function` drawn afresh for every trial: ``sample(generator)``."""

    sample: Callable[[torch.Generator], object]
    description: str = "a random input"


def uniform(low: float, high: float, shape: tuple[int, ...] = (), *, dtype=torch.float64) -> Draw:
    """Uniform on ``[low, high)``: a Python float for ``shape=()``, else a tensor of ``shape``."""
    if not high > low:
        raise ValueError(f"uniform: high={high!r} must exceed low={low!r}")

    def sample(generator):
        value = low + (high - low) * torch.rand(tuple(shape), generator=generator, dtype=dtype)
        return float(value) if tuple(shape) == () else value
    return Draw(sample, f"uniform on [{low:g}, {high:g})")


def normal(mean: float = 0.0, std: float = 1.0, shape: tuple[int, ...] = (), *, dtype=torch.float64) -> Draw:
    """Normal with ``mean`` and ``std``: a Python float for ``shape=()``, else a tensor of ``shape``."""
    if not std > 0:
        raise ValueError(f"normal: std={std!r} must be > 0")

    def sample(generator):
        value = mean + std * torch.randn(tuple(shape), generator=generator, dtype=dtype)
        return float(value) if tuple(shape) == () else value
    return Draw(sample, f"normal({mean:g}, {std:g})")


def _say(result: CheckResult) -> None:
    print(textwrap.fill(str(result), OUTPUT_WIDTH, subsequent_indent="    ", break_on_hyphens=False))


def _conclude(result: CheckResult, strict: bool) -> CheckResult:
    _say(result)
    if strict and result.status == "not passed":
        raise ExerciseNotPassed(str(result))
    return result


def _where(exc: BaseException, student) -> str:
    """The line of the student's own code where ``exc`` was raised, if any."""
    own = getattr(getattr(student, "__code__", None), "co_filename", None)
    frames = [f for f in traceback.extract_tb(exc.__traceback__)[1:] if f.filename == own]
    return f" (in {frames[-1].name}, line {frames[-1].lineno})" if frames else ""


def _call(student, args: dict) -> tuple[object, str | None, str | None]:
    """``student(**args)``, or the status and message of why it gave no answer."""
    if not callable(student):
        return None, "not passed", f"expected a function, got {type(student).__name__}"
    try:
        answer = student(**copy.deepcopy(args))
    except NotImplementedError:
        return None, "not attempted", ("not implemented yet (it raises NotImplementedError): fill in the "
                                       "scaffold, then run this check again")
    except Exception as exc:  # noqa: BLE001 - any error of the student's code is the answer's fault
        text = textwrap.shorten(str(exc), 160, placeholder=" ...")
        return None, "not passed", f"the function raised {type(exc).__name__}: {text}{_where(exc, student)}"
    if answer is Ellipsis:
        return None, "not attempted", ("not implemented yet (it returns ...): fill in the scaffold, then "
                                       "run this check again")
    return answer, None, None


def _resolve(reference):
    if callable(reference):
        return reference
    if isinstance(reference, str) and "." in reference:
        module, _, name = reference.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"reference={reference!r} cannot be imported: {exc}") from exc
    raise ValueError(f"reference={reference!r} must be a function or a dotted name such as "
                     f"'learndyn.gaussian.normal_cdf'")


def _outputs(value) -> list:
    return list(value) if isinstance(value, tuple) else [value]


def _dtype_name(value) -> str | None:
    if isinstance(value, torch.Tensor):
        return str(value.dtype).removeprefix("torch.")
    if isinstance(value, np.ndarray):
        return str(value.dtype)
    return None


def _numbers(value) -> np.ndarray | None:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().double().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array


def _close(a: np.ndarray, b: np.ndarray, rtol: float, atol: float) -> bool:
    return bool(np.all(np.abs(a - b) <= atol + rtol * np.abs(b)))


_CONSTANTS = (("", 1.0), ("π", math.pi), ("√2", math.sqrt(2.0)), ("√π", math.sqrt(math.pi)),
              ("√(2π)", math.sqrt(2.0 * math.pi)))


def describe_factor(factor: float) -> str:
    """A constant factor as a reader names it: ``2``, ``1/2``, ``-3/4``, ``2π``, ``1/√(2π)``, else
    four significant digits."""
    for name, constant in _CONSTANTS:
        for value, divides in ((factor / constant, False), (factor * constant, True)):
            guess = fractions.Fraction(value).limit_denominator(16)
            if guess != 0 and abs(float(guess) - value) <= 1e-6 * abs(value) and abs(guess.numerator) <= 64:
                p, q = guess.numerator, guess.denominator
                if divides and name:
                    return f"{p}/({q}·{name})" if q != 1 else f"{p}/{name}"
                if not name:
                    return f"{p}/{q}" if q != 1 else f"{p}"
                top = name if p == 1 else f"-{name}" if p == -1 else f"{p}{name}"
                return f"{top}/{q}" if q != 1 else top
    return f"{factor:.4g}"


def _diagnose(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, where: str) -> str:
    """What is wrong with ``got``, which is not close to ``want``, without showing ``want``; ``where``
    names the worst input, for an error that is none of the simple ones."""
    if np.all(got == 0) and np.any(want != 0):
        return "it returns zero everywhere"
    norm = float(np.dot(want, want))
    if norm > 0:
        if _close(got, -want, rtol, atol):
            return "the sign is wrong"
        factor = float(np.dot(got, want)) / norm
        if (factor != 0 and not math.isclose(factor, 1.0, rel_tol=rtol)
                and _close(got, factor * want, rtol, atol)):
            return f"off by a constant factor: yours is {describe_factor(factor)} times the reference"
    offset = float(np.mean(got - want))
    if offset != 0 and _close(got - offset, want, rtol, atol):
        sign = "+" if offset > 0 else "-"
        return f"off by an additive constant: yours is the reference {sign} {abs(offset):.4g}"
    error = np.abs(got - want) / np.maximum(np.abs(want), atol / rtol if rtol > 0 else atol)
    message = (f"the largest relative error is {float(np.max(error)):.2g} "
               f"(allowed: rtol={rtol:g}, atol={atol:g})")
    return message + (f", worst at {where}" if where else "")


def _structure(got, want, label: str) -> tuple[str | None, np.ndarray | None, np.ndarray | None]:
    """A message about the type, shape or dtype of one output, else both as float64 arrays."""
    if got is None:
        return f"{label}None: does the function end in a return?", None, None
    got_array, want_array = _numbers(got), _numbers(want)
    if got_array is None:
        return f"{label}a {type(got).__name__}, not numbers", None, None
    if got_array.shape != want_array.shape:
        return f"{label}shape {tuple(got_array.shape)}; expected {tuple(want_array.shape)}", None, None
    got_dtype, want_dtype = _dtype_name(got), _dtype_name(want)
    if got_dtype and want_dtype and got_dtype != want_dtype:
        return f"{label}dtype {got_dtype}; expected {want_dtype}", None, None
    bad = ~np.isfinite(got_array) & np.isfinite(want_array)
    if np.any(bad):
        return f"{label}NaN or inf at {int(bad.sum())} of {bad.size} entries", None, None
    return None, got_array.astype(np.float64).ravel(), want_array.astype(np.float64).ravel()


def _describe_inputs(args: dict) -> str:
    shown = [f"{k}={v:.4g}" for k, v in args.items() if isinstance(v, float)]
    shown += [f"{k} of shape {tuple(v.shape)}" for k, v in args.items() if isinstance(v, torch.Tensor)]
    return ", ".join(shown)


def check_function(exercise: str, student, reference, inputs: Mapping[str, object], *, rtol: float = 1e-7,
                   atol: float = 1e-12, trials: int = 8, seed: int = 0, strict: bool = True) -> CheckResult:
    """Run the student's function against the reference on random inputs and say what is wrong.

    ``student`` and ``reference`` (a function, or its dotted name such as
    ``"learndyn.gaussian.normal_cdf"``) are called with the same keyword arguments ``inputs``: each
    :class:`Draw` (see :func:`uniform`, :func:`normal`) is drawn afresh for each of ``trials`` trials
    from a generator seeded with ``seed``; every other value is passed as it is. A tuple returned is
    several outputs. The answer passes when every output has the reference's type, shape and dtype
    and lies within ``atol + rtol |reference|`` of it. Otherwise the message names, in this order:
    a scaffold not filled in (``NotImplementedError`` or ``...``), an exception, a missing return,
    the number of outputs, the shape, the dtype, NaN, the sign, a constant factor (which), an
    additive constant (how large), else the largest relative error; it never shows the reference's
    values.

    Prints one line naming ``exercise`` and returns a :class:`CheckResult`. A wrong answer raises
    :class:`ExerciseNotPassed` when ``strict`` (the default); a scaffold not yet filled in never does.
    """
    if not isinstance(exercise, str) or not exercise.strip():
        raise ValueError(f"exercise={exercise!r} must name the exercise (its label)")
    reference = _resolve(reference)
    if not isinstance(inputs, Mapping):
        raise ValueError(f"inputs={inputs!r} must map argument names to values or Draws")
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ValueError(f"trials={trials!r} must be an integer >= 1")
    if rtol < 0 or atol < 0 or rtol == atol == 0:
        raise ValueError(f"rtol={rtol!r}, atol={atol!r}: give a positive tolerance")
    generator = torch.Generator().manual_seed(seed)
    pooled: list[tuple[list, list]] = []
    worst = (0.0, None)
    for _ in range(trials):
        args = {k: v.sample(generator) if isinstance(v, Draw) else v for k, v in inputs.items()}
        expected = _outputs(reference(**copy.deepcopy(args)))
        answer, status, message = _call(student, args)
        if status is not None:
            return _conclude(CheckResult(exercise, status, message), strict)
        answer = _outputs(answer)
        if len(answer) != len(expected):
            message = f"it returns {len(answer)} output(s); expected {len(expected)}"
            return _conclude(CheckResult(exercise, "not passed", message), strict)
        if not pooled:
            pooled = [([], []) for _ in expected]
        for index, (got, want) in enumerate(zip(answer, expected, strict=True)):
            label = f"output {index} is " if len(expected) > 1 else "it returns "
            message, got_array, want_array = _structure(got, want, label)
            if message is not None:
                return _conclude(CheckResult(exercise, "not passed", message), strict)
            pooled[index][0].append(got_array)
            pooled[index][1].append(want_array)
            gap = np.abs(got_array - want_array) - atol - rtol * np.abs(want_array)
            if gap.size and float(gap.max()) > worst[0]:
                worst = (float(gap.max()), args)
    for index, (got, want) in enumerate(pooled):
        got, want = np.concatenate(got), np.concatenate(want)
        if not _close(got, want, rtol, atol):
            prefix = f"output {index}: " if len(pooled) > 1 else ""
            where = _describe_inputs(worst[1]) if worst[1] is not None else ""
            message = prefix + _diagnose(got, want, rtol, atol, where)
            return _conclude(CheckResult(exercise, "not passed", message), strict)
    return _conclude(CheckResult(exercise, "passed", f"agrees with the reference on {trials} random inputs"),
                     strict)


def check_estimate(exercise: str, student, theory, inputs: Mapping[str, object] | None = None, *,
                   wrong: Mapping[str, object] | None = None, false_alarm: float = FALSE_ALARM_PER_NOTEBOOK,
                   strict: bool = True) -> CheckResult:
    """Check a student's experiment, which returns ``(estimate, standard_error)``, against a theory.

    ``student(**inputs)`` runs the experiment; ``theory`` is the predicted value, or a function
    called with ``inputs`` that returns it. The comparison is :meth:`learndyn.checks.Claims.compare`
    with a ledger of its own (one comparison per entry of the estimate, the false-alarm budget
    ``false_alarm``): the estimate must lie within ``z`` standard errors of the theory, and every
    ``wrong`` theory (name: prediction) must lie outside, so an ensemble too small to tell them
    apart does not pass. The message gives the gap in tolerances and its direction, never the
    theory's value. Prints one line naming ``exercise`` and returns a :class:`CheckResult`; a wrong
    answer raises :class:`ExerciseNotPassed` when ``strict``, an unfilled scaffold never does.
    """
    if not isinstance(exercise, str) or not exercise.strip():
        raise ValueError(f"exercise={exercise!r} must name the exercise (its label)")
    inputs = dict(inputs or {})
    prediction = theory(**copy.deepcopy(inputs)) if callable(theory) else theory
    answer, status, message = _call(student, inputs)
    if status is None:
        status, message = "not passed", None
        if not isinstance(answer, tuple) or len(answer) != 2:
            message = "the experiment should return a pair (estimate, standard_error)"
        else:
            estimate, se = _numbers(answer[0]), _numbers(answer[1])
            expected = np.asarray(_numbers(prediction), dtype=np.float64)
            if estimate is None or se is None:
                message = "the estimate and its standard error must be numbers"
            elif estimate.shape != expected.shape:
                message = f"the estimate has shape {tuple(estimate.shape)}; expected {tuple(expected.shape)}"
            elif not (np.all(np.isfinite(estimate)) and np.all(np.isfinite(se))):
                message = "the estimate or its standard error is NaN or inf"
            elif np.any(se <= 0):
                message = "the standard error must be > 0 everywhere: is it computed from the replicas?"
            else:
                message, status = _compare_estimate(exercise, estimate, se, expected, wrong, false_alarm)
    return _conclude(CheckResult(exercise, status, message), strict)


def _compare_estimate(exercise, estimate, se, expected, wrong, false_alarm) -> tuple[str, str]:
    claims = Claims(exercise, comparisons=max(1, int(estimate.size)), false_alarm=false_alarm)
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            verdict = claims.compare(exercise, estimate, se, expected, wrong=wrong)
        except CheckFailed:
            verdict = claims.verdicts[-1]
    if verdict.ratio > 1:
        gaps = (verdict.measured - verdict.theory) / verdict.tolerance
        worst = float(gaps.ravel()[np.argmax(np.abs(gaps))])
        side = "above" if worst > 0 else "below"
        return (f"the estimate lies {abs(worst):.2f} tolerances {side} the theory (z = {verdict.z:.2f} "
                f"standard errors)", "not passed")
    unresolved = [name for name, ratio in verdict.wrong_ratios.items() if ratio <= 1]
    if unresolved:
        return (f"the estimate cannot yet tell the theory from {', '.join(unresolved)}: its standard error "
                f"is too large (use more replicas or a longer run)", "not passed")
    return (f"the estimate agrees with the theory ({verdict.ratio:.2f} tolerances at z = {verdict.z:.2f})",
            "passed")


if __name__ == "__main__":
    source, target = (sys.argv[1:] + ["book", "student"][len(sys.argv) - 1:])[:2]
    for name, removed in write_student_copies(source, target).items():
        print(f"{target}/{name}: {removed} solution(s) removed")


__all__ = [
    "CHECK_TAG", "KINDS", "SCAFFOLD_TAG", "CheckResult", "Draw", "Exercise", "ExerciseNotPassed",
    "check_estimate", "check_function", "describe_factor", "exercise_cells", "exercise_problems",
    "find_exercises", "handout_program", "normal", "read_exercises", "strip_solutions",
    "strip_solutions_from_text", "suggest_assignments", "uniform", "write_student_copies",
]
