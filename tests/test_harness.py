"""The runners of ``make seeds`` and ``make mutants`` and the notebook cache of ``make notebooks``, on
tiny notebooks written under tmp_path (each execution starts a kernel: a few seconds)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from harness import mutants, seeds
from harness.notebooks import Outcome, check_name, execute

ROOT = Path(__file__).resolve().parents[1]


def write_notebook(path: Path, *sources: str) -> Path:
    notebook = nbformat.v4.new_notebook()
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook.cells = [nbformat.v4.new_markdown_cell("# A tiny chapter")]
    notebook.cells += [nbformat.v4.new_code_cell(source) for source in sources]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def test_check_name_is_the_start_of_the_assertion_message():
    assert check_name("CheckFailed", "closure mean: the theory misses by 3.1 tolerances") == "closure mean"
    assert check_name("AssertionError", "variance too small") == "variance too small"
    assert check_name("AssertionError", "") == "AssertionError"
    assert check_name("ValueError", "lr: must be positive") == "ValueError"


def test_seeds_are_fixed_and_a_short_sweep_is_the_start_of_a_long_one():
    assert seeds.seed_list(3) == seeds.seed_list(20)[:3]
    assert len(set(seeds.seed_list(20))) == 20
    with pytest.raises(ValueError, match="count"):
        seeds.seed_list(0)


def test_seed_report_counts_failures_per_check():
    chapters, sweep_seeds = ["one", "two"], [11, 12, 13]
    records = [
        {"chapter": "one", "seed": 11, "passed": True, "seconds": 1.0},
        {"chapter": "one", "seed": 12, "passed": False, "check": "mean", "message": "mean: off",
         "seconds": 1.0},
        {"chapter": "one", "seed": 13, "passed": False, "check": "mean", "message": "mean: off",
         "seconds": 1.0},
        {"chapter": "two", "seed": 11, "passed": False, "check": "variance", "message": "variance: off",
         "seconds": 2.0},
    ]
    report = seeds.render(records, chapters=chapters, seeds=sweep_seeds, budget=1e-3, heading="test")
    assert "| one | mean | 2 | 12, 13 |" in report
    assert "| two | variance | 1 | 11 |" in report
    assert "| one | 3 | 2 | 0.667 | 0.001 | 0.003 |" in report
    assert "| all | 4 | 3 |" in report
    assert "4 of 6 runs done" in report


def test_binomial_tail():
    assert seeds.binomial_tail(0, 5, 0.1) == 1.0
    assert seeds.binomial_tail(1, 5, 0.1) == pytest.approx(1 - 0.9**5)
    assert seeds.binomial_tail(5, 5, 0.1) == pytest.approx(1e-5)


def test_seed_sweep_runs_each_seed_and_resumes(tmp_path):
    first, second, third = seeds.seed_list(3)
    write_notebook(tmp_path / "book" / "tiny.ipynb",
                   "import os\nseed = int(os.environ['LEARNDYN_SEED'])",
                   f"assert seed != {second}, f'alpha: fails for seed {{seed}}'",
                   f"assert seed != {third}, f'beta: fails for seed {{seed}}'")
    state, report = tmp_path / "_build" / "runs.jsonl", tmp_path / "SEEDS.md"
    records = seeds.sweep(tmp_path, ["tiny"], 3, state=state, report=report, heading="test")
    assert [(r["seed"], r["passed"], r.get("check")) for r in records] == \
        [(first, True, None), (second, False, "alpha"), (third, False, "beta")]
    text = report.read_text()
    assert "| tiny | alpha | 1 |" in text and "| tiny | beta | 1 |" in text
    assert "| tiny | 3 | 2 |" in text

    def must_not_run(*args, **kwargs):
        raise AssertionError("a recorded run was repeated")

    again = seeds.sweep(tmp_path, ["tiny"], 3, state=state, report=report, runner=must_not_run,
                        heading="test")
    assert again == records


def tiny_book(root: Path) -> None:
    """A package ``tinylib`` in lib/ and a chapter that checks it."""
    (root / "lib").mkdir(parents=True)
    (root / "lib" / "tinylib.py").write_text("RATE = 0.5\nNOISE = 2.0\n")
    write_notebook(root / "book" / "tiny.ipynb",
                   "import tinylib\n# the experiment\nproduct = tinylib.RATE * tinylib.NOISE",
                   "assert abs(product - 1.0) < 1e-12, f'product of rate and noise: {product}'")


def declare(path: Path, *entries: dict) -> None:
    def toml_string(value: str) -> str:
        return json.dumps(value)  # a JSON string is a TOML basic string

    blocks = ["[[mutant]]\n" + "".join(f"{k} = {toml_string(v)}\n" for k, v in entry.items())
              for entry in entries]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(blocks))


def test_mutants_killed_survived_and_declaration_error(tmp_path):
    root = tmp_path / "repo"
    tiny_book(root)
    mutants_dir = root / "tests" / "mutants"
    declare(mutants_dir / "tiny.toml",
            {"name": "rate 4% off", "file": "lib/tinylib.py", "old": "RATE = 0.5", "new": "RATE = 0.52",
             "expect": "product of rate"},
            {"name": "a comment changed", "file": "book/tiny.ipynb", "old": "# the experiment",
             "new": "# the same experiment", "expect": "product"},
            {"name": "ambiguous", "file": "lib/tinylib.py", "old": " = ", "new": " == ", "expect": "x"})
    report = mutants_dir / "REPORT.md"
    rows = mutants.mutation_test(root, ["tiny"], mutants_dir, report, heading="test")
    results = {row.mutant: row for row in rows}
    assert results["(baseline)"].result == "passed"
    assert results["rate 4% off"].result == "killed"
    assert results["rate 4% off"].check == "product of rate and noise"
    assert results["rate 4% off"].matches == "yes"
    assert results["a comment changed"].result == "survived"
    assert results["ambiguous"].result == "declaration error"
    assert "occurs 2 times" in results["ambiguous"].message
    assert (root / "lib" / "tinylib.py").read_text() == "RATE = 0.5\nNOISE = 2.0\n", "lib/ was edited"
    text = report.read_text()
    assert "1 of 3 mutants killed; 1 survived, 1 declaration errors" in text


@pytest.mark.parametrize("kills, status", [(True, 0), (False, 1)])
def test_make_mutants_fails_when_a_mutant_survives(tmp_path, monkeypatch, kills, status):
    def runner(path, env=None):
        mutated = "0.6" in (Path(env["PYTHONPATH"].split(":")[0]) / "tinylib.py").read_text()
        if kills and mutated:
            return Outcome(Path(path).stem, False, 0.1, check="product", error="CheckFailed",
                           message="product: off")
        return Outcome(Path(path).stem, True, 0.1)

    monkeypatch.setattr(mutants, "execute", runner)
    tiny_book(tmp_path)
    declare(tmp_path / "tests" / "mutants" / "tiny.toml",
            {"name": "rate", "file": "lib/tinylib.py", "old": "RATE = 0.5", "new": "RATE = 0.6",
             "expect": "product"})
    assert mutants.main(["--root", str(tmp_path), "--chapters", "tiny"]) == status
    assert ("| killed | product |" in (tmp_path / "tests" / "mutants" / "REPORT.md").read_text()) == kills


def test_a_mutant_whose_text_is_missing_or_outside_the_book_is_a_declaration_error(tmp_path):
    tiny_book(tmp_path)
    for file, old in [("lib/tinylib.py", "RATE = 7"), ("../elsewhere.py", "x"), ("lib/absent.py", "x"),
                      ("book/other.ipynb", "x")]:
        mutant = mutants.Mutant("tiny", "m", file, old, "y", "product")
        with pytest.raises(mutants.DeclarationError):
            mutants.apply(mutant, tmp_path)
    declare(tmp_path / "m" / "tiny.toml",
            {"name": "fine", "file": "lib/tinylib.py", "old": "RATE = 0.5", "new": "RATE = 0.6",
             "expect": "p"},
            {"name": "twice", "file": "lib/tinylib.py", "old": " = ", "new": " == ", "expect": "p"},
            {"name": "no expect", "file": "lib/tinylib.py", "old": "RATE", "new": "RATE"})
    assert mutants.dry_run(tmp_path, ["tiny"], tmp_path / "m") == 2


def test_a_failing_baseline_skips_the_mutants(tmp_path):
    def failing(path, env=None):
        return Outcome(Path(path).stem, False, 0.1, check="product", error="CheckFailed",
                       message="product: x")

    tiny_book(tmp_path)
    declare(tmp_path / "m" / "tiny.toml",
            {"name": "rate", "file": "lib/tinylib.py", "old": "RATE = 0.5", "new": "RATE = 0.6",
             "expect": "product"})
    rows = mutants.mutation_test(tmp_path, ["tiny"], tmp_path / "m", tmp_path / "m" / "REPORT.md",
                                 runner=failing, heading="test")
    assert [row.result for row in rows] == ["FAILED", "not run"]


def test_execute_sees_the_environment_and_leaves_the_notebook_unchanged(tmp_path):
    path = write_notebook(tmp_path / "env.ipynb",
                          "import os\nassert os.environ['EXTRA'] == 'yes', 'extra: unset'")
    before = path.read_bytes()
    assert execute(path, env={"EXTRA": "yes"}).passed
    assert path.read_bytes() == before


def test_nbval_fills_the_jupyter_cache_that_the_book_build_reads(tmp_path):
    """book/conftest.py stores a passed notebook under the key myst-nb's cache mode looks up."""
    from jupyter_cache import get_cache

    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "conftest.py", tmp_path / "book" / "conftest.py")
    passing = write_notebook(tmp_path / "book" / "passing.ipynb", "print('hello')", "6 * 7")
    failing = write_notebook(tmp_path / "book" / "failing.ipynb", "assert False, 'broken: always'")
    cache = tmp_path / "_build" / ".jupyter_cache"
    book_defaults = {name: value for name, value in os.environ.items() if not name.startswith("LEARNDYN_")}
    result = subprocess.run([sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", "-q",
                             f"--nb-jupyter-cache={cache}", str(passing), str(failing)],
                            cwd=tmp_path, capture_output=True, text=True, env=book_defaults)
    assert result.returncode == 1, result.stdout  # the failing notebook fails
    jcache = get_cache(str(cache))
    record = jcache.match_cache_notebook(nbformat.reads(passing.read_text(), as_version=4))
    _, merged = jcache.merge_match_into_notebook(nbformat.reads(passing.read_text(), as_version=4))
    code = [cell for cell in merged.cells if cell.cell_type == "code"]
    assert code[0].outputs[0].text == "hello\n"
    assert code[1].outputs[0].data["text/plain"] == "42"
    assert [cell.execution_count for cell in code] == [1, 2]
    assert record.data["execution_seconds"] > 0
    with pytest.raises(KeyError):
        jcache.match_cache_notebook(nbformat.reads(failing.read_text(), as_version=4))
    timings = json.loads((tmp_path / "_build" / "notebook_timings.json").read_text())
    assert set(timings["seconds"]) == {"passing"}
