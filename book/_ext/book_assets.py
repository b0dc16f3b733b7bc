"""Assets of the HTML book that must work offline and load cleanly.

- MathJax: Sphinx loads it from a CDN by default, so a reader without a network (or this project's
  CI) would see raw LaTeX. The PyPI package ``django-static-mathjax`` ships MathJax 3; its ``es5``
  build is copied into ``_static/mathjax`` and ``_config.yml`` points ``mathjax_path`` at it.
- Scripts: with Sphinx 7.4, sphinx-togglebutton and sphinx-thebe register their inline set-up scripts
  twice, and the second ``const THEBE_JS_URL`` is a JavaScript error on every page; each page keeps one
  copy of every script.
"""

import shutil
from importlib.resources import files
from pathlib import Path


def _copy_mathjax(app, exception):
    if exception is not None or app.builder.format != "html":
        return
    source = Path(str(files("mathjax"))) / "static" / "mathjax" / "es5"
    target = Path(app.outdir) / "_static" / "mathjax"
    if not (target / "tex-chtml.js").is_file():
        shutil.copytree(source, target, dirs_exist_ok=True)


def _one_copy_of_each_script(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for script in scripts:
        key = (str(getattr(script, "filename", script) or ""),  # inline scripts: None or ""
               tuple(sorted(getattr(script, "attributes", {}).items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    scripts[:] = unique


def setup(app):
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _one_copy_of_each_script, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

