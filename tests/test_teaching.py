import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from learndyn import teaching
from learndyn.teaching import (
    CheckResult,
    Draw,
    Exercise,
    ExerciseNotPassed,
    check_estimate,
    check_function,
    describe_factor,
    exercise_cells,
    exercise_problems,
    find_exercises,
    handout_program,
    read_exercises,
    strip_solutions,
    strip_solutions_from_text,
    suggest_assignments,
    write_student_copies,
)

FIXTURE = Path(__file__).parent / "fixtures" / "exercises.ipynb"

TEXT = """Intro

```{exercise}
:label: ex-1
Do it.
```

```{solution} ex-1
:class: dropdown
The answer, with a code fence inside:
`inline`
```

:::{solution} ex-2
colon fenced
:::
After."""


def markdown(text):
    return {"cell_type": "markdown", "metadata": {}, "source": text}


def code(text, *tags):
    return {"cell_type": "code", "metadata": {"tags": list(tags)} if tags else {}, "source": text,
            "outputs": [], "execution_count": None}


def notebook(*cells):
    return {"cells": list(cells), "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


START = "```{solution-start} ex-1\n:class: dropdown\n```\n"
END = "```{solution-end}\n```\n"


# --- hand-outs ------------------------------------------------------------------------------------


def test_solutions_are_removed_exercises_kept():
    stripped = strip_solutions_from_text(TEXT)
    assert "{exercise}" in stripped and "Do it." in stripped and "After." in stripped
    assert "solution" not in stripped and "The answer" not in stripped


def test_student_copies(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    chapter = notebook(markdown(TEXT), markdown("```{solution} x\nonly a solution\n```\n"),
                       code("assert True"))
    (book / "chapter.ipynb").write_text(json.dumps(chapter))
    counts = write_student_copies(book, tmp_path / "student")
    assert counts == {"chapter.ipynb": 3}
    copy = json.loads((tmp_path / "student" / "chapter.ipynb").read_text())
    assert len(copy["cells"]) == 2 and copy["cells"][1]["cell_type"] == "code"


def test_student_copies_need_notebooks(tmp_path):
    with pytest.raises(ValueError, match="holds no notebooks"):
        write_student_copies(tmp_path, tmp_path / "student")


def test_gated_solutions_are_removed_with_their_code_cells():
    exercise = "```{exercise}\n:label: ex-1\n:class: coding\nDo it.\n```\n"
    scaffold = code("def f(x):\n    raise NotImplementedError", "exercise-scaffold")
    chapter = notebook(markdown(exercise), scaffold,
                       markdown("Before the solution.\n\n" + START + "Prose of the solution."),
                       code("def f(x):\n    return 2 * x"), markdown("More solution prose."),
                       markdown(END + "\nAfter the solution."), code("check(f)", "exercise-check"))
    copy, removed = strip_solutions(chapter)
    sources = ["".join(cell["source"]) for cell in copy["cells"]]
    assert removed == 1
    assert sources[1].startswith("def f(x):\n    raise") and sources[-1] == "check(f)"
    assert "Before the solution." in sources[2] and "After the solution." in sources[3]
    joined = "\n".join(sources)
    assert "return 2 * x" not in joined and "Prose of the solution" not in joined
    assert "solution-start" not in joined and "solution-end" not in joined and "More solution" not in joined


def test_a_gated_solution_within_one_cell():
    copy, removed = strip_solutions(notebook(markdown("A\n" + START + "hidden\n" + END + "B")))
    assert removed == 1 and copy["cells"][0]["source"] == "A\nB"


@pytest.mark.parametrize("cells, message", [
    ([markdown(END)], "without its"),
    ([markdown(START)], "has no"),
    ([markdown(START), markdown(START)], "opens inside"),
])
def test_unbalanced_gates_are_errors(cells, message):
    with pytest.raises(ValueError, match=message):
        strip_solutions(notebook(*cells))


def test_the_fixture_hand_out_keeps_scaffolds_and_checks():
    copy, removed = strip_solutions(json.loads(FIXTURE.read_text()))
    assert removed == 3  # two gated solutions and one prose solution
    text = json.dumps(copy)
    assert "raise NotImplementedError" in text and "return ..." in text
    assert "torch.special.erf(z" not in text and "noqa: F811" not in text
    tags = [tag for cell in copy["cells"] for tag in cell["metadata"].get("tags", [])]
    assert tags.count(teaching.SCAFFOLD_TAG) == 2 and tags.count(teaching.CHECK_TAG) == 2


def test_the_command_line_writes_hand_outs(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    (book / "fixture.ipynb").write_text(FIXTURE.read_text())
    done = subprocess.run([sys.executable, "-m", "learndyn.teaching", str(book), str(tmp_path / "out")],
                          capture_output=True, text=True, check=True)
    assert "fixture.ipynb: 3 solution(s) removed" in done.stdout
    assert (tmp_path / "out" / "fixture.ipynb").is_file()


# --- the list of exercises ------------------------------------------------------------------------


def test_the_fixture_exercises_are_read_with_their_fields():
    exercises = read_exercises([FIXTURE])
    assert [e.label for e in exercises] == ["fx-ex-normal-cdf", "fx-ex-variance", "fx-ex-ensemble"]
    assert [e.kind for e in exercises] == ["coding", "derivation", "coding"]
    assert [e.minutes for e in exercises] == [10, 15, 20]
    assert exercises[0].practises == "a Gaussian integral as a kernel"
    assert exercises[0].title == "The normal distribution function" and exercises[1].title == ""
    assert all(e.chapter == "exercises" for e in exercises)
    first = exercises[0]
    assert len(first.scaffold) == len(first.solution) == len(first.check) == 1
    assert "erf(z" in first.solution[0] and "fx-ex-normal-cdf" in first.check[0]
    assert exercises[1].scaffold == exercises[1].solution == exercises[1].check == ()
    assert [exercise_problems(e) for e in exercises] == [[], [], []]


def test_fields_that_are_missing_are_none_and_other_spellings_are_read():
    cell = markdown(
        ":::{exercise}\n:label: a\nNo fields here.\n:::\n\n"
        "````{exercise} Title\n:label: b\n:class: reading extra\n\n*Practises:* reading a\nlong phrase; "
        "*Time:* about 25 minutes.\n\nBody with *Time:* 99 min later.\n````\n")
    first, second = find_exercises(notebook(cell), chapter="ch")
    assert (first.kind, first.practises, first.minutes, first.classes) == (None, None, None, ())
    assert (second.kind, second.practises, second.minutes) == ("reading", "reading a long phrase", 25)
    assert second.classes == ("reading", "extra") and second.title == "Title"


def test_a_scaffold_makes_an_exercise_coding_and_an_undeclared_kind_is_none():
    cells = markdown("```{exercise}\n:label: a\nx\n```"), code("f = 1", "exercise-check")
    exercise = find_exercises(notebook(*cells))
    assert exercise[0].kind == "coding" and exercise[0].coding and exercise[0].check == ("f = 1",)


@pytest.mark.parametrize("cells, message", [
    ([markdown("```{exercise}\nno label\n```")], "without :label:"),
    ([code("def f(): ...", "exercise-scaffold")], "above every exercise"),
    ([markdown("```{exercise}\n:label: a\nx\n```"), markdown("```{solution-start} b\n```")],
     "names no exercise"),
])
def test_malformed_exercises_are_errors(cells, message):
    with pytest.raises(ValueError, match=message):
        find_exercises(notebook(*cells), chapter="ch")


def coding_exercise(**changes):
    fields = {"label": "ex-a", "chapter": "ch", "kind": "coding", "classes": ("coding",),
              "scaffold": ("def f(x):\n    return ...",), "solution": ("def f(x):\n    return x",),
              "check": ("print('ex-a', f(1))",)}
    return Exercise(**{**fields, **changes})


def test_problems_of_incomplete_coding_exercises():
    assert exercise_problems(coding_exercise()) == []
    assert exercise_problems(coding_exercise(solution=())) == ["no solution cell"]
    assert exercise_problems(coding_exercise(check=("print(f(1))",))) == [
        "the check cell does not name the exercise 'ex-a'"]
    assert "not plain Python" in exercise_problems(coding_exercise(scaffold=("%matplotlib inline",)))[0]
    declared = Exercise(label="ex-b", chapter="ch", kind=None, classes=("coding",))
    assert "no cell is tagged" in exercise_problems(declared)[0]


def test_handout_programs():
    exercise = coding_exercise()
    unfilled, filled = handout_program(exercise, filled=False), handout_program(exercise, filled=True)
    assert "return x" not in unfilled and "return x" in filled
    assert unfilled.index("return ...") < unfilled.index("print(")
    assert filled.index("return ...") < filled.index("return x") < filled.index("print(")
    with pytest.raises(ValueError, match="not a coding exercise"):
        handout_program(Exercise(label="b", chapter="ch", kind="derivation"), filled=False)


def test_assignments_vary_in_kind_and_keep_the_chapter_order():
    kinds = ["derivation", "derivation", None, "coding", "reading", "coding"]
    items = [Exercise(label=f"a{i}", chapter="one", kind=k) for i, k in enumerate(kinds)]
    items += [Exercise(label="b0", chapter="two", kind=None)]
    weeks = suggest_assignments(items)
    assert [chapter for chapter, _ in weeks] == ["one", "two"]
    assert [e.label for e in weeks[0][1]] == ["a0", "a3", "a4"]
    assert [e.label for e in weeks[1][1]] == ["b0"]
    assert [e.label for e in suggest_assignments(items, per_week=5)[0][1]] == ["a0", "a1", "a2", "a3", "a4"]
    with pytest.raises(ValueError, match="per_week"):
        suggest_assignments(items, per_week=0)


# --- check_function -------------------------------------------------------------------------------


def reference(x, scale=1.0):
    return scale * torch.sin(x) + 0.5


INPUTS = {"x": teaching.uniform(0.1, 2.0, shape=(6,))}


def run(student, capsys=None, **options):
    result = check_function("ex-sin", student, reference, INPUTS, strict=False, **options)
    if capsys is not None:
        printed = capsys.readouterr().out
        assert printed.startswith("ex-sin: ")
        return result, printed
    return result


def test_a_right_answer_passes_and_the_line_names_the_exercise(capsys):
    result, printed = run(lambda x: torch.sin(x) + 0.5, capsys)
    assert result.passed and bool(result) and result.status == "passed"
    assert printed.strip() == "ex-sin: passed: agrees with the reference on 8 random inputs"


@pytest.mark.parametrize("student, expected", [
    (lambda x: -(torch.sin(x) + 0.5), "the sign is wrong"),
    (lambda x: 2 * (torch.sin(x) + 0.5), "off by a constant factor: yours is 2 times the reference"),
    (lambda x: (torch.sin(x) + 0.5) / 2, "yours is 1/2 times"),
    (lambda x: math.pi * (torch.sin(x) + 0.5), "yours is π times"),
    (lambda x: torch.sin(x) + 0.75, "off by an additive constant: yours is the reference + 0.25"),
    (lambda x: torch.sin(x), "off by an additive constant: yours is the reference - 0.5"),
    (lambda x: torch.zeros_like(x), "it returns zero everywhere"),
    (lambda x: torch.sin(x) * x + 0.5, "the largest relative error is"),
    (lambda x: torch.sin(x).float() + 0.5, "it returns dtype float32; expected float64"),
    (lambda x: (torch.sin(x) + 0.5)[:3], "it returns shape (3,); expected (6,)"),
    (lambda x: torch.full_like(x, float("nan")), "NaN or inf at 6 of 6 entries"),
    (lambda x: "sin", "it returns a str, not numbers"),
    (lambda x: None, "it returns None: does the function end in a return?"),
    (lambda x: (x, x), "it returns 2 output(s); expected 1"),
    (lambda x: 1 / 0, "the function raised ZeroDivisionError: division by zero (in <lambda>, line"),
    (42, "expected a function, got int"),
])
def test_what_is_wrong_is_said(student, expected, capsys):
    result, printed = run(student, capsys)
    assert result.status == "not passed" and not result.passed
    assert expected in result.message and expected in " ".join(printed.split())


def test_the_worst_input_is_named():
    result = check_function("ex-scalar", lambda a: a**2 + a, lambda a: a**2, {"a": teaching.uniform(1, 2)},
                            strict=False)
    assert "the largest relative error" in result.message and ", worst at a=" in result.message


def test_a_scaffold_not_filled_in_never_raises(capsys):
    def scaffold(x):
        raise NotImplementedError("ex-sin: fill in")
    for student, says in ((scaffold, "raises NotImplementedError"), (lambda x: ..., "returns ...")):
        result = check_function("ex-sin", student, reference, INPUTS)  # strict
        assert result.status == "not attempted" and says in result.message
        assert "ex-sin: not attempted: not implemented yet" in capsys.readouterr().out


def test_a_wrong_answer_raises_when_strict():
    with pytest.raises(ExerciseNotPassed, match=r"^ex-sin: not passed: the sign is wrong") as caught:
        check_function("ex-sin", lambda x: -(torch.sin(x) + 0.5), reference, INPUTS)
    assert caught.value._render_traceback_() == [f"ExerciseNotPassed: {caught.value}"]
    assert isinstance(caught.value, AssertionError)


def test_the_reference_values_are_never_printed(capsys):
    def secret(a):
        return torch.full((3,), 12345.678, dtype=torch.float64) * a

    inputs = {"a": teaching.uniform(1, 2)}
    for student in (lambda a: torch.zeros(3, dtype=torch.float64) + a, lambda a: torch.ones(4) * a):
        check_function("ex-secret", student, secret, inputs, strict=False)
    printed = capsys.readouterr().out
    assert "12345" not in printed and "1.234" not in printed


def test_several_outputs_are_checked_one_by_one():
    def pair(x):
        return torch.cos(x), torch.sin(x)

    assert run_pair(pair, lambda x: (torch.cos(x), torch.sin(x))).passed
    result = run_pair(pair, lambda x: (torch.cos(x), -torch.sin(x)))
    assert result.message.startswith("output 1: the sign is wrong")
    result = run_pair(pair, lambda x: (torch.cos(x)[:2], torch.sin(x)))
    assert result.message == "output 0 is shape (2,); expected (6,)"


def run_pair(reference_pair, student):
    return check_function("ex-pair", student, reference_pair, INPUTS, strict=False)


def test_numpy_and_float_answers_and_constant_inputs():
    result = check_function("ex-np", lambda x, k: np.sin(x) * k, lambda x, k: np.sin(x) * k,
                            {"x": Draw(lambda g: np.linspace(0, 1, 5)), "k": 3}, strict=False)
    assert result.passed
    assert check_function("ex-float", lambda a: math.exp(a), lambda a: math.exp(a),
                          {"a": teaching.normal(0, 1)}, strict=False).passed


def test_the_reference_by_name_and_inputs_that_a_student_modifies():
    def in_place(z):
        z.mul_(0.0)
        return 0.5 * torch.special.erfc(-z / math.sqrt(2))

    result = check_function("ex-cdf", in_place, "learndyn.gaussian.normal_cdf",
                            {"z": teaching.normal(0, 1, shape=(4,))}, strict=False)
    assert "the largest relative error" in result.message  # the reference saw the unmodified input


def test_draws_come_from_the_seed():
    seen = []

    def record(a):
        seen.append(a)
        return a

    for _ in range(2):
        check_function("ex-seed", record, lambda a: a, {"a": teaching.uniform(0, 1)}, trials=3, seed=7)
    assert seen[:3] == seen[3:] and len(set(seen[:3])) == 3 and all(isinstance(a, float) for a in seen)
    sample = teaching.normal(2.0, 0.1, shape=(1000,)).sample(torch.Generator().manual_seed(0))
    assert sample.dtype == torch.float64 and abs(float(sample.mean()) - 2.0) < 0.02


@pytest.mark.parametrize("call, message", [
    (lambda: check_function("", abs, abs, {}), "must name the exercise"),
    (lambda: check_function("e", abs, 3, {}), "must be a function or a dotted name"),
    (lambda: check_function("e", abs, "learndyn.gaussian.nothing", {}), "cannot be imported"),
    (lambda: check_function("e", abs, abs, [1]), "must map argument names"),
    (lambda: check_function("e", abs, abs, {}, trials=0), "trials=0"),
    (lambda: check_function("e", abs, abs, {}, rtol=0, atol=0), "positive tolerance"),
    (lambda: teaching.uniform(1, 1), "must exceed"),
    (lambda: teaching.normal(0, 0), "std=0"),
    (lambda: check_estimate(" ", abs, 1.0), "must name the exercise"),
])
def test_bad_arguments_of_the_author_are_value_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize("factor, name", [
    (2.0, "2"), (0.5, "1/2"), (-1.5, "-3/2"), (2 * math.pi, "2π"), (-math.pi, "-π"), (math.pi / 4, "π/4"),
    (1 / math.sqrt(2 * math.pi), "1/√(2π)"), (1 / (2 * math.pi), "1/(2·π)"), (math.sqrt(2), "√2"),
    (1.2345678, "1.235"),
])
def test_factors_are_named(factor, name):
    assert describe_factor(factor) == name


def test_a_check_result_reads_as_its_line():
    result = CheckResult("ex", "passed", "fine")
    assert str(result) == "ex: passed: fine" and result._ipython_display_() is None


# --- check_estimate -------------------------------------------------------------------------------


def experiment(mean, se=0.01):
    return lambda **inputs: (torch.tensor(mean, dtype=torch.float64), torch.tensor(se, dtype=torch.float64))


def estimate(student, theory=1.0, **options):
    return check_estimate("ex-mc", student, theory, {"n": 10}, strict=False, **options)


def test_an_estimate_within_its_tolerance_passes(capsys):
    result = estimate(experiment(1.01), wrong={"half": 0.5})
    assert result.passed and "agrees with the theory" in result.message
    assert capsys.readouterr().out.startswith("ex-mc: passed: the estimate agrees")
    assert estimate(experiment([1.0, 2.0]), lambda n: np.array([1.0, 2.0]) + 0 * n).passed


@pytest.mark.parametrize("student, wrong, expected", [
    (experiment(1.2), None, "tolerances above the theory"),
    (experiment(0.8), None, "tolerances below the theory"),
    (experiment(1.0, se=0.3), {"half": 0.5}, "cannot yet tell the theory from half"),
    (lambda n: 1.0, None, "should return a pair"),
    (lambda n: ("a", "b"), None, "must be numbers"),
    (experiment([1.0, 1.0]), None, "shape (2,); expected ()"),
    (experiment(float("nan")), None, "NaN or inf"),
    (experiment(1.0, se=0.0), None, "standard error must be > 0"),
    (lambda n: 1 / 0, None, "raised ZeroDivisionError"),
])
def test_what_is_wrong_with_an_estimate(student, wrong, expected):
    result = estimate(student, wrong=wrong)
    assert result.status == "not passed" and expected in result.message


def test_an_unfilled_experiment_is_not_attempted_and_a_wrong_one_raises():
    assert check_estimate("ex-mc", lambda n: ..., 1.0, {"n": 1}).status == "not attempted"
    with pytest.raises(ExerciseNotPassed, match="^ex-mc: not passed"):
        check_estimate("ex-mc", experiment(2.0), 1.0)


def test_the_estimate_check_never_prints_the_theory(capsys):
    estimate(experiment(1.5), theory=1.23456)
    estimate(experiment(1.23456, se=1.0), theory=1.23456, wrong={"other": 1.3})
    assert "1.23" not in capsys.readouterr().out


def test_raw_and_plain_code_cells_belong_to_no_exercise():
    cells = (markdown("```{exercise}\n:label: a\nx\n```"), code("chapter = 1"),
             {"cell_type": "raw", "metadata": {}, "source": "raw"}, code("f = 1", "exercise-scaffold"))
    (exercise,) = find_exercises(notebook(*cells))
    assert exercise.scaffold == ("f = 1",) and exercise.check == exercise.solution == ()


def test_an_error_in_a_builtin_and_a_reference_that_is_zero():
    result = check_function("ex-sqrt", math.sqrt, lambda a: a, {"a": teaching.uniform(-2, -1)}, strict=False)
    assert result.message == "the function raised TypeError: math.sqrt() takes no keyword arguments"
    assert " (in " not in result.message
    def deep(x):
        return torch.einsum("ij,j->i", x, x)  # the error is raised inside torch's Python code

    result = check_function("ex-deep", deep, reference, INPUTS, strict=False)
    assert result.message.startswith("the function raised RuntimeError: ")
    assert result.message.endswith(f"(in deep, line {deep.__code__.co_firstlineno + 1})")
    result = check_function("ex-zero", lambda x: x, lambda x: 0 * x, INPUTS, strict=False)
    assert "the largest relative error" in result.message


def test_the_cells_of_exercises_are_known_by_index():
    cells = json.loads(FIXTURE.read_text())["cells"]
    parts = exercise_cells({"cells": cells})
    tagged = {i for i, c in enumerate(cells) if c["metadata"].get("tags")}
    assert tagged <= set(parts) and len(parts) == 6
    assert all(cells[i]["cell_type"] == "code" for i in parts)
    assert set(parts.values()) == {"scaffold", "solution", "check"}
