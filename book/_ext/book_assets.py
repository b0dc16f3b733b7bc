"""Assets of the HTML book that must work offline and load cleanly.

- MathJax: Sphinx loads it from a CDN by default, so a reader without a network (or this project's
  CI) would see raw LaTeX. The PyPI package ``django-static-mathjax`` ships MathJax 3; its ``es5``
  build is copied into ``_static/mathjax`` and ``_config.yml`` points ``mathjax_path`` at it.
- Scripts: with Sphinx 7.4, sphinx-togglebutton and sphinx-thebe register their inline set-up scripts
  twice, and the second ``const THEBE_JS_URL`` is a JavaScript error on every page; each page keeps one
  copy of every script.
- Search: sphinx-book-theme 1.3 has a search field in the primary sidebar (and a search button in the
  article header for narrow screens, where the sidebar is folded away). pydata-sphinx-theme adds a
  second field in a header bar of its own unless ``navbar_persistent`` is set, which sphinx-book-theme
  leaves to its theme.conf, where pydata-sphinx-theme does not look; it is set empty here, so a page
  shows one search box at any width.
- Pasted figures: the landing page shows each chapter's headline figure with myst-nb's cross-document
  ``{glue}`` (``:doc:`` option), which points the image at ``_images/<sha256>.png`` but writes the file
  only when the chapter itself displayed the very same bytes; the image is written from the chapter's
  glue data here, so a figure glued with ``display=False`` shows too. A page that pastes from a
  chapter is rebuilt whenever that chapter is.
"""

import hashlib
import shutil
from binascii import a2b_base64
from importlib.resources import files
from pathlib import Path

from docutils import nodes
from myst_nb.ext.glue.crossref import read_glue_cache
from myst_nb.ext.glue.utils import PendingGlueReference
from sphinx.transforms.post_transforms import SphinxPostTransform

IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpeg", "image/gif": ".gif"}


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


class WritePastedImages(SphinxPostTransform):
    """Write the image of every cross-document glue reference where myst-nb's own post-transform
    (priority 5, next) will point to it, and remember an alt text for it."""

    default_priority = 4

    def apply(self, **kwargs):
        if self.app.builder.format != "html":
            return
        folder = self.env.mystnb_config.output_folder
        alts = self.document.setdefault("learndyn_pasted_alt", {})
        for node in list(self.document.findall(PendingGlueReference)):
            data = read_glue_cache(folder, node.refdoc).get(node.key, {}).get("data", {})
            mime = next((m for m in IMAGE_TYPES if m in data), None)
            if mime is None or "text/html" in data:
                continue  # nothing to write, or myst-nb will paste the HTML instead
            raw = a2b_base64(data[mime])
            target = Path(self.app.builder.outdir) / self.app.builder.imagedir / (
                hashlib.sha256(raw).hexdigest() + IMAGE_TYPES[mime])
            if not target.is_file():
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(raw)
            title = self.env.titles.get(node.refdoc)
            alts[target.name] = f"The headline figure of {title.astext() if title else node.refdoc}"


class DescribePastedImages(SphinxPostTransform):
    """Give the images myst-nb pasted (which carry their file path as alt text) a description."""

    default_priority = 6

    def apply(self, **kwargs):
        alts = self.document.get("learndyn_pasted_alt", {})
        for image in self.document.findall(nodes.image):
            name = Path(image.get("uri", "")).name
            if name in alts and image.get("alt", image["uri"]) == image["uri"]:
                image["alt"] = alts[name]


def _note_pasted_documents(app, doctree):
    sources = {node.refdoc for node in doctree.findall(PendingGlueReference)}
    if sources:
        _pastes(app.env)[app.env.docname] = sources


def _pastes(env) -> dict[str, set[str]]:
    if not hasattr(env, "learndyn_glue_sources"):
        env.learndyn_glue_sources = {}
    return env.learndyn_glue_sources


def _rebuild_pasting_pages(app, env, added, changed, removed):
    touched = added | changed
    return [doc for doc, sources in _pastes(env).items() if sources & touched and doc not in touched]


def _merge_pastes(app, env, docnames, other):
    _pastes(env).update(_pastes(other))


def _purge_pastes(app, env, docname):
    _pastes(env).pop(docname, None)


def _one_search_box(app, config):
    config.html_theme_options.setdefault("navbar_persistent", [])


def setup(app):
    app.connect("config-inited", _one_search_box)
    app.add_post_transform(WritePastedImages)
    app.add_post_transform(DescribePastedImages)
    app.connect("doctree-read", _note_pasted_documents)
    app.connect("env-get-outdated", _rebuild_pasting_pages)
    app.connect("env-merge-info", _merge_pastes)
    app.connect("env-purge-doc", _purge_pastes)
    app.connect("build-finished", _copy_mathjax)
    app.connect("html-page-context", _one_copy_of_each_script, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}

