"""What a reader's browser shows of one page of the built book, and what is wrong with it."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

RAW_MATH_MARKERS = ("$$", "\\(", "\\[", "\\begin{", "\\frac", "\\mathbb")
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
    return report


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
