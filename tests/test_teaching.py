import json

from learndyn.teaching import strip_solutions_from_text, write_student_copies

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


def test_solutions_are_removed_exercises_kept():
    stripped = strip_solutions_from_text(TEXT)
    assert "{exercise}" in stripped and "Do it." in stripped and "After." in stripped
    assert "solution" not in stripped and "The answer" not in stripped


def test_student_copies(tmp_path):
    book = tmp_path / "book"
    book.mkdir()
    notebook = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": TEXT},
                          {"cell_type": "markdown", "metadata": {},
                           "source": "```{solution} x\nonly a solution\n```\n"},
                          {"cell_type": "code", "metadata": {}, "source": "assert True",
                           "outputs": [], "execution_count": None}],
                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    (book / "chapter.ipynb").write_text(json.dumps(notebook))
    counts = write_student_copies(book, tmp_path / "student")
    assert counts == {"chapter.ipynb": 3}
    copy = json.loads((tmp_path / "student" / "chapter.ipynb").read_text())
    assert len(copy["cells"]) == 2 and copy["cells"][1]["cell_type"] == "code"
