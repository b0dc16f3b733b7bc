"""Serve MathJax from the book itself, so that equations render offline.

Sphinx loads MathJax from a CDN by default; a reader without a network (or this project's CI) would
then see raw LaTeX. The PyPI package ``django-static-mathjax`` ships MathJax 3; this extension copies
its ``es5`` build into ``_static/mathjax`` and ``_config.yml`` points ``mathjax_path`` at it.
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


def setup(app):
    app.connect("build-finished", _copy_mathjax)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
