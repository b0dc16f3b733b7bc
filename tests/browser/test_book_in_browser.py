"""The built book as a reader's browser shows it.

Run with ``make browser-test`` after ``make book`` (or ``make test``). Every page must load without a
console error, have every equation typeset by MathJax, every image loaded, no traceback in an executed
cell, every internal link resolving, nothing cut off at the right edge at 1280 px, every figure
numbered, every API page filled, and one search box (see ``bookcheck``). A screenshot of the first
screen of the landing page, each chapter and the API index is saved under ``_build/screenshots/``.
The second group of tests breaks pages on purpose and asserts the checks notice.
"""

from __future__ import annotations

import re
import shutil

import pytest
import yaml

from .bookcheck import check_page, screenshot_first_screen
from .conftest import ROOT, serve

HTML = ROOT / "_build" / "html"
SCREENSHOTS = ROOT / "_build" / "screenshots"


def book_pages() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())

    def files(entries):
        for entry in entries:
            if "file" in entry:
                yield entry["file"]
            yield from files(entry.get("sections", []))

    pages = [toc["root"]] + [page for part in toc["parts"] for page in files(part["chapters"])]
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


def screenshot_pages() -> list[str]:
    first = book_pages()[0]
    return [first] + chapters() + [page for page in book_pages() if page.endswith("api/index.html")]


@pytest.mark.parametrize("page", screenshot_pages())
def test_screenshot_of_each_chapter(browser, book_site, page):
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    target = SCREENSHOTS / (page.removesuffix(".html").replace("book/", "").replace("/", "-") + ".png")
    screenshot_first_screen(browser, book_site + page, target)
    assert target.stat().st_size > 10_000


def _insert(fragment):
    def breaks(page: str) -> str:
        return page.replace("<h1>", fragment + "<h1>", 1)
    return breaks


def _in_article(fragment):
    """Put ``fragment`` at the top of the article, where a reader sees it (the first ``<h1>`` of a
    page is the print-only header, which is not laid out on screen)."""
    def breaks(page: str) -> str:
        return page.replace('<article class="bd-article">', '<article class="bd-article">' + fragment, 1)
    return breaks


def _without_mathjax(page: str) -> str:
    return re.sub(r'<script[^>]*src="[^"]*tex-chtml\.js[^"]*"[^>]*></script>', "", page)


LONG_LINE = "total = " + " + ".join(f"weight_{i}" for i in range(40))
TINY_PNG = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
            "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")
BROKEN = {
    "raw_equation": _without_mathjax,  # equations on the page, but nothing typesets them
    "missing_image": _insert('<p>A figure:</p><img src="_images/no-such-figure.png" alt="missing">'),
    "traceback": _insert('<div class="cell_output docutils container"><div class="output traceback '
                         'highlight-ipythontb notranslate"><pre>Traceback (most recent call last):\n'
                         "ValueError: boom</pre></div></div>"),
    "dead_link": _insert('<p>See <a href="no-such-chapter.html">the next chapter</a>.</p>'),
    "wide_code": _in_article('<div class="cell docutils container"><div class="cell_input docutils '
                             'container"><div class="highlight-ipython3 notranslate"><div class="highlight">'
                             f"<pre>{LONG_LINE}</pre></div></div></div></div>"),
    "wide_folded_code": _in_article('<div class="cell tag_hide-input docutils container"><details '
                                    'class="hide above-input"><summary>Show code cell source</summary><div '
                                    'class="cell_input docutils container"><div class="highlight-ipython3 '
                                    f'notranslate"><div class="highlight"><pre>{LONG_LINE}</pre></div></div>'
                                    "</div></details></div>"),
    "wide_output": _in_article('<div class="cell docutils container"><div class="cell_output docutils '
                               'container"><div class="output stream highlight-myst-ansi notranslate"><div '
                               f'class="highlight"><pre>{LONG_LINE}</pre></div></div></div></div>'),
    "wide_equation": _in_article('<div class="math notranslate nohighlight" id="equation-too-wide">\\['
                                 + LONG_LINE.replace("_", "_{").replace(" +", "} +") + "}\\]</div>"),
    "unnumbered_figure": _in_article(f'<figure class="align-default" id="fig-no-number"><img alt="a '
                                     f'plot" src="{TINY_PNG}" width="200" height="100"><figcaption><p>A '
                                     "caption and no number.</p></figcaption></figure>"),
    "bare_output_image": _in_article('<div class="cell docutils container"><div class="cell_output '
                                     f'docutils container"><img alt="a plot" src="{TINY_PNG}" width="200" '
                                     'height="100"></div></div>'),
    "raw_role": _insert("<p>Implements <cite>{eq}sgd-update</cite> of chapter 1.</p>"),
    "two_search_boxes": _in_article('<button class="btn search-button-field search-button__button" '
                                'style="display:flex">Search</button>'),
}


def _api_article(content: str):
    def breaks(page: str) -> str:
        start = page.index('<article class="bd-article">') + len('<article class="bd-article">')
        return page[:start] + content + page[page.index("</article>", start):]
    return breaks


API_BROKEN = {
    # automodule could not import the module: the page keeps its title and nothing else
    "empty_module": _api_article("<section><h1>learndyn.broken</h1><p>Nothing here.</p></section>"),
    # autosummary could not import a name: no link, no summary line
    "failed_summary": _api_article(
        '<section><h1>learndyn.broken</h1><table class="autosummary longtable table autosummary"><tbody>'
        '<tr class="row-odd"><td><p><code class="xref py py-obj docutils literal notranslate"><span '
        'class="pre">run_everything</span></code></p></td><td><p></p></td></tr></tbody></table></section>'),
    # an entry whose docstring came out empty
    "empty_entry": _api_article(
        '<section><h1>learndyn.broken</h1><dl class="py function"><dt class="sig sig-object py" '
        'id="learndyn.broken.run_everything"><span class="sig-name descname"><span class="pre">'
        "run_everything</span></span>()</dt><dd></dd></dl></section>"),
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
    api_template = (HTML / "book" / "api" / "ensemble.html").read_text()
    (folder / "book" / "api").mkdir()
    for name, breaks in API_BROKEN.items():
        page = breaks(api_template)
        assert page != api_template, f"breaking {name} changed nothing"
        (folder / "book" / "api" / f"{name}.html").write_text(page)
    shutil.copytree(HTML / "_static", folder / "_static")
    server, base = serve(folder)
    yield base
    server.shutdown()


@pytest.mark.parametrize("name, expected", [("raw_equation", "raw math"),
                                            ("missing_image", "image does not load"),
                                            ("traceback", "traceback"),
                                            ("dead_link", "internal link"),
                                            ("wide_code", "code cell overflows"),
                                            ("wide_folded_code", "code cell overflows"),
                                            ("wide_output", "output overflows"),
                                            ("wide_equation", "display equation overflows"),
                                            ("unnumbered_figure", "unnumbered figure fig-no-number"),
                                            ("bare_output_image", "output image outside a numbered figure"),
                                            ("raw_role", "MyST role left unrendered"),
                                            ("two_search_boxes", "2 search boxes visible"),
                                            ("api/empty_module", "API page documents nothing"),
                                            ("api/failed_summary", "failed autosummary stub"),
                                            ("api/empty_entry", "API entry without content")])
def test_checks_catch_a_page_broken_on_purpose(browser, broken_site, name, expected):
    report = check_page(browser, f"{broken_site}book/{name}.html", broken_site)
    assert any(expected in problem for problem in report.problems), report.problems


def test_the_unbroken_templates_pass(browser, broken_site, book_site):
    """The pages the broken ones are made from pass the same checks: each broken page fails for the
    defect put into it, not for something its template already had."""
    for page in ("book/notation.html", "book/api/ensemble.html"):
        report = check_page(browser, book_site + page, book_site)
        assert not report.problems, "\n".join([page] + report.problems)
