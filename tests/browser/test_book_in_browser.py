"""The built book as a reader's browser shows it.

Run with ``make browser-test`` after ``make book`` (or ``make test``). Every page must load without a
console error, have every equation typeset by MathJax, every image loaded, no traceback in an executed
cell, and every internal link resolving. A screenshot of each chapter's first screen is saved under
``_build/screenshots/``. The second group of tests breaks pages on purpose and asserts the checks
notice.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from .bookcheck import check_page, screenshot_first_screen
from .conftest import ROOT, serve

HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"


def book_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    pages = [toc["root"]] + [c["file"] for part in toc["parts"] for c in part["chapters"]]
    return [f"{page}.html" for page in pages]


def chapters() -> list[str]:
    return [page for page in book_pages() if (ROOT / page.replace(".html", ".ipynb")).exists()]


@pytest.fixture(scope="module")
def book_site():
    if not (HTML / "index.html").is_file():
        pytest.fail("no built book: run `make book` before `make browser-test`")
    server, base = serve(HTML)
    yield base
    server.shutdown()


@pytest.mark.parametrize("page", book_pages())
def test_page_as_a_reader_sees_it(browser, book_site, page):
    report = check_page(browser, book_site + page, book_site)
    assert not report.problems, "\n".join([page] + report.problems)
    if page in chapters():
        assert report.equations > 0, f"{page}: no typeset equation"
        assert report.images > 0, f"{page}: no figure"


@pytest.mark.parametrize("page", chapters())
def test_screenshot_of_each_chapter(browser, book_site, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / (Path(page).stem + ".png")
    screenshot_first_screen(browser, book_site + page, target)
    assert target.stat().st_size > 10_000


def _insert(fragment):
    def breaks(page: str) -> str:
        return page.replace("<h1>", fragment + "<h1>", 1)
    return breaks


def _without_mathjax(page: str) -> str:
    return re.sub(r'<script[^>]*src="[^"]*tex-chtml\.js[^"]*"[^>]*></script>', "", page)


BROKEN = {
    "raw_equation": _without_mathjax,  # equations on the page, but nothing typesets them
    "missing_image": _insert('<p>A figure:</p><img src="_images/no-such-figure.png" alt="missing">'),
    "traceback": _insert('<div class="cell_output docutils container"><div class="output traceback '
                         'highlight-ipythontb notranslate"><pre>Traceback (most recent call last):\n'
                         "ValueError: boom</pre></div></div>"),
    "dead_link": _insert('<p>See <a href="no-such-chapter.html">the next chapter</a>.</p>'),
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    folder = tmp_path_factory.mktemp("broken")
    template = (HTML / "book" / "notation.html").read_text()
    (folder / "book").mkdir()
    for name, breaks in BROKEN.items():
        page = breaks(template)
        assert page != template, f"breaking {name} changed nothing"
        (folder / "book" / f"{name}.html").write_text(page)
    shutil.copytree(HTML / "_static", folder / "_static")
    server, base = serve(folder)
    yield base
    server.shutdown()


@pytest.mark.parametrize("name, expected", [("raw_equation", "raw math"),
                                            ("missing_image", "image does not load"),
                                            ("traceback", "traceback"),
                                            ("dead_link", "internal link")])
def test_checks_catch_a_page_broken_on_purpose(browser, broken_site, name, expected):
    report = check_page(browser, f"{broken_site}book/{name}.html", broken_site)
    assert any(expected in problem for problem in report.problems), report.problems
