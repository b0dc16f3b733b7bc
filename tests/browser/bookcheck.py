"""What a reader's browser shows of one page of the built book, and what is wrong with it.

Besides what fails to load, a page is wrong when, at the width the browser runs at (1280 px):

- a code cell (folded ones unfolded first), an output or a display equation is cut off at its right
  edge (it scrolls: ``scrollWidth > clientWidth``) or is wider than the article's content column;
- a figure has no number ("Fig. N"), or a cell shows an image outside any numbered figure;
- an API page documents nothing, has an entry without text, or a summary row without a target or a
  summary (what autodoc and autosummary leave when an import or a docstring fails);
- Sphinx left an error message in the page, a MyST role was printed instead of rendered (``{eq}``
  in a docstring, which is reStructuredText), or the page shows more (or fewer) than one search box.
"""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

RAW_MATH_MARKERS = ("$$", "\\(", "\\[", "\\begin{", "\\frac", "\\mathbb")
# A MyST role written where reStructuredText is parsed (a docstring) is printed, not linked.
RAW_ROLE = re.compile(r"\{(eq|doc|numref|ref|cite(:[pt])?|math|func|class|mod)\}")
PAGE_STATE = """
const images = Array.from(document.images).map(i => ({src: i.src, complete: i.complete,
    width: i.naturalWidth, height: i.naturalHeight}));
const links = Array.from(document.querySelectorAll('a[href]')).map(a => a.href);
const ids = Array.from(document.querySelectorAll('[id]')).map(e => e.id);
const main = document.querySelector('main') || document.body;
const clone = main.cloneNode(true);
clone.querySelectorAll('mjx-container, script, style, pre, code, .highlight').forEach(e => e.remove());
const tracebacks = Array.from(document.querySelectorAll('.output.traceback, .output .traceback'))
    .length + (main.innerText.includes('Traceback (most recent call last)') ? 1 : 0);
return {images, links, ids, text: clone.innerText, tracebacks,
        typeset: document.querySelectorAll('mjx-container').length,
        mathjaxLoaded: typeof window.MathJax === 'object' && !!window.MathJax.startup};
"""
# Measured after every <details> is opened, so folded (hide-input) cells count too.
LAYOUT_STATE = """
document.querySelectorAll('main details').forEach(d => { d.open = true; });
const article = document.querySelector('article.bd-article') || document.querySelector('main');
const style = getComputedStyle(article);
const columnRight = article.getBoundingClientRect().left + article.clientWidth
    - parseFloat(style.paddingRight);
const cut = text => Array.from(text.trim().replace(/\\s+/g, ' ')).slice(0, 60).join('');
const tex = e => { try { const items = MathJax.startup.document.getMathItemsWithin(e);
    return items.length ? items[0].math : null; } catch (error) { return null; } };
const label = e => {
    const holder = e.closest('div.math');
    return holder && holder.id ? holder.id + ': ' : '';
};
const snippet = e => e.matches('div.math, mjx-container')
    ? label(e) + cut(tex(e) || e.textContent || '')
    : cut(e.innerText || e.textContent || '');
const kindOf = e => e.closest('mjx-container, div.math') ? 'display equation'
    : e.closest('.cell_output') ? 'output' : 'code cell';
const candidates = new Set([
    ...article.querySelectorAll('.cell_input pre, div[class*="highlight-"] pre'),
    ...article.querySelectorAll('.cell_output > *, .cell_output pre'),
    ...article.querySelectorAll('mjx-container[display="true"]'),
    ...Array.from(article.querySelectorAll('div.math')).filter(e => !e.querySelector('mjx-container'))]);
const overflows = [];
for (const e of candidates) {
    const box = e.getBoundingClientRect();
    if (box.width === 0) continue;
    const scrolled = e.scrollWidth - e.clientWidth;
    const beyond = box.right - columnRight;
    if (scrolled > 1 || beyond > 1) {
        overflows.push({kind: kindOf(e), text: snippet(e), scrolled: Math.round(scrolled),
                        beyond: Math.round(beyond)});
    }
}
const figures = Array.from(article.querySelectorAll('figure, div.figure')).map(f => ({
    id: f.id || (f.querySelector('[id]') || {}).id || '',
    number: ((f.querySelector('.caption-number') || {}).textContent || '').trim()}));
const bareImages = Array.from(article.querySelectorAll('.cell_output img'))
    .filter(i => !i.closest('figure, div.figure')).map(i => i.src.slice(-60));
const entries = Array.from(article.querySelectorAll('dl.py')).map(dl => {
    const dt = dl.querySelector(':scope > dt'), dd = dl.querySelector(':scope > dd');
    return {name: dt ? (dt.id || snippet(dt)) : '', text: dd ? dd.innerText.trim().length : 0};
});
const summaries = Array.from(article.querySelectorAll('table.autosummary tr')).filter(
    tr => tr.querySelector('td')).map(tr => {
    const cells = tr.querySelectorAll('td');
    return {name: snippet(cells[0]), linked: !!cells[0].querySelector('a[href]'),
            summary: cells.length > 1 ? cells[1].innerText.trim().length : 0};
});
const visible = e => { const b = e.getBoundingClientRect();
    return b.width > 0 && b.height > 0 && getComputedStyle(e).visibility !== 'hidden'; };
return {overflows, figures, bareImages, entries, summaries,
        systemMessages: Array.from(article.querySelectorAll('.system-message, .problematic')).map(snippet),
        searchBoxes: Array.from(document.querySelectorAll('.search-button__button, input[type="search"]'))
            .filter(e => !e.closest('dialog, .search-button__wrapper') && visible(e)).length};
"""


@dataclass
class PageReport:
    url: str
    problems: list[str] = field(default_factory=list)
    equations: int = 0
    images: int = 0


def wait_for_mathjax(driver, timeout: float = 20.0) -> None:
    """Wait until MathJax (if the page loads it) has finished typesetting."""
    driver.set_script_timeout(timeout)
    driver.execute_async_script("""
        const done = arguments[arguments.length - 1];
        if (window.MathJax && MathJax.startup && MathJax.startup.promise) {
            MathJax.startup.promise.then(() => done(true), () => done(false));
        } else { setTimeout(() => done(false), 300); }
    """)


def check_page(driver, url: str, base: str) -> PageReport:
    """Load ``url`` and list its problems: console errors, raw math, broken images, tracebacks,
    internal links that do not resolve."""
    report = PageReport(url)
    driver.get_log("browser")  # drop what earlier pages logged
    driver.get(url)
    wait_for_mathjax(driver)
    state = driver.execute_script(PAGE_STATE)
    for entry in driver.get_log("browser"):
        if entry.get("level") == "SEVERE":
            report.problems.append(f"console error: {entry.get('message', '')[:200]}")
    for marker in RAW_MATH_MARKERS:
        if marker in state["text"]:
            where = state["text"].index(marker)
            snippet = state["text"][max(0, where - 40):where + 40].replace("\n", " ")
            report.problems.append(f"raw math left untypeset ({marker!r}): ...{snippet}...")
    for match in RAW_ROLE.finditer(state["text"]):
        snippet = state["text"][max(0, match.start() - 40):match.end() + 40].replace("\n", " ")
        report.problems.append(f"MyST role left unrendered ({match.group()}): ...{snippet}...")
    report.equations = state["typeset"]
    for image in state["images"]:
        if not image["complete"] or image["width"] == 0 or image["height"] == 0:
            report.problems.append(f"image does not load: {image['src']}")
    report.images = len(state["images"])
    if state["tracebacks"]:
        report.problems.append(f"{state['tracebacks']} executed cell(s) show a traceback")
    for link in sorted(set(state["links"])):
        problem = _check_link(link, url, base, set(state["ids"]))
        if problem:
            report.problems.append(problem)
    report.problems += layout_problems(driver.execute_script(LAYOUT_STATE), is_api_page(url, base))
    return report


def is_api_page(url: str, base: str) -> bool:
    """A module page of the API reference (book/api/<module>.html, not its index)."""
    path = url[len(base):] if url.startswith(base) else url
    return "/api/" in f"/{path}" and not path.endswith("/index.html")


def layout_problems(state: dict, api_page: bool) -> list[str]:
    """The problems of a page's layout, figures, API entries and search box, from ``LAYOUT_STATE``."""
    problems = []
    for box in state["overflows"]:
        how = (f"scrolls by {box['scrolled']} px" if box["scrolled"] > 1 else "")
        if box["beyond"] > 1:
            how += ("; " if how else "") + f"{box['beyond']} px wider than the content column"
        problems.append(f"{box['kind']} overflows at the right edge ({how}): {box['text']!r}")
    for figure in state["figures"]:
        if not figure["number"].startswith("Fig."):
            problems.append(f"unnumbered figure {figure['id'] or '(no id)'}: no 'Fig. N' caption number")
    for src in state["bareImages"]:
        problems.append(f"unnumbered figure: an output image outside a numbered figure (...{src})")
    for entry in state["entries"]:
        if not entry["text"]:
            problems.append(f"API entry without content: {entry['name']}")
    for row in state["summaries"]:
        if not row["linked"] or not row["summary"]:
            what = "no target" if not row["linked"] else "no summary"
            problems.append(f"API summary entry with {what} (a failed autosummary stub): {row['name']}")
    if api_page and not state["entries"] and not state["summaries"]:
        problems.append("API page documents nothing (empty autodoc content)")
    for message in state["systemMessages"]:
        problems.append(f"Sphinx error message in the page: {message}")
    if state["searchBoxes"] != 1:
        problems.append(f"{state['searchBoxes']} search boxes visible (want one)")
    return problems


def _check_link(link: str, page: str, base: str, page_ids: set[str]) -> str | None:
    if not link.startswith(base):
        return None  # external links are not followed: the machines that test this are offline
    target, _, fragment = link.partition("#")
    if target in ("", page.partition("#")[0]):
        if fragment and urllib.parse.unquote(fragment) not in page_ids:
            return f"link to a missing anchor: {link}"
        return None
    try:
        with urllib.request.urlopen(target, timeout=10) as response:
            if response.status != 200:
                return f"internal link answers {response.status}: {link}"
    except urllib.error.URLError as exc:
        return f"internal link does not resolve ({exc}): {link}"
    return None


def screenshot_first_screen(driver, url: str, path) -> None:
    driver.get(url)
    wait_for_mathjax(driver)
    driver.save_screenshot(str(path))
