"""The API reference of ``learndyn``, one page per module, without generated source files.

``.. learndyn-module:: learndyn.backend`` (in MyST: a ``{learndyn-module}`` fence) expands, at read time,
into the module's docstring (``automodule``), an ``autosummary`` table of its public names and one
``autofunction`` / ``autoclass`` / ``autodata`` entry per name, grouped by kind. The public names are the
module's ``__all__``; a module without one contributes every function and class it defines whose name
does not start with an underscore. Nothing is written into the source tree (no autosummary stubs), so
parallel builds of the book never race on generated files.

The build also fails (a warning, and the book builds with ``-W``) when

- a module of the package has no ``learndyn-module`` page, or a name in ``__all__`` does not exist;
- a documented name has no docstring, so that no public name ships undocumented.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from docutils.statemachine import StringList
from sphinx.pycode import ModuleAnalyzer
from sphinx.util import logging
from sphinx.util.docutils import SphinxDirective

PACKAGE = "learndyn"
LOGGER = logging.getLogger(__name__)
KINDS = (("Classes", "autoclass"), ("Functions", "autofunction"), ("Constants", "autodata"))


def public_names(module) -> list[str]:
    """The names the reference documents for ``module``: its ``__all__``, else its own functions and
    classes that are not private."""
    if hasattr(module, "__all__"):
        return list(module.__all__)
    return [name for name, value in vars(module).items()
            if not name.startswith("_") and (inspect.isfunction(value) or inspect.isclass(value))
            and getattr(value, "__module__", None) == module.__name__]


def _home(value, module_name: str) -> str:
    """The module that defines ``value`` (classes and functions), else ``module_name`` (data)."""
    home = getattr(value, "__module__", None) if inspect.isclass(value) or callable(value) else None
    return home if isinstance(home, str) and home.startswith(PACKAGE) else module_name


def _first_line(value) -> str:
    doc = inspect.getdoc(value) or ""
    return doc.split("\n\n")[0].replace("\n", " ").strip()


def _kind(value) -> str:
    if inspect.isclass(value):
        return "autoclass"
    if callable(value):
        return "autofunction"
    return "autodata"


class LearndynModule(SphinxDirective):
    """The reference page body of one module of ``learndyn``."""

    required_arguments = 1
    has_content = False

    def run(self):
        name = self.arguments[0]
        if name != PACKAGE and not name.startswith(PACKAGE + "."):
            raise self.error(f"learndyn-module: {name!r} is not a module of {PACKAGE}")
        try:
            module = importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - any import failure is reported as the page's error
            raise self.error(f"learndyn-module: cannot import {name}: {exc!r}") from exc
        _pages(self.env)[name] = self.env.docname
        names = public_names(module)
        missing = [n for n in names if not hasattr(module, n)]
        if missing:
            raise self.error(f"learndyn-module: {name}.__all__ names {missing}, which do not exist")
        own = [n for n in names if _home(getattr(module, n), name) == name]
        imported = [n for n in names if n not in own]
        attribute_docs = ModuleAnalyzer.for_module(name).find_attr_docs()
        for n in own:
            value = getattr(module, n)
            documented = (("", n) in attribute_docs if _kind(value) == "autodata"
                          else bool(inspect.getdoc(value)))
            if not documented:
                LOGGER.warning(f"{name}.{n} is public but has no docstring", location=self.get_location())
        lines = [f".. automodule:: {name}", "   :no-members:", ""]
        if own:
            lines += [".. rubric:: Summary", "", ".. autosummary::", "   :nosignatures:", ""]
            lines += [f"   {n}" for n in own] + [""]
        if imported:
            lines += [".. rubric:: Re-exported", "", ".. list-table::", "   :class: autosummary", ""]
            for n in imported:
                value = getattr(module, n)
                home = _home(value, name)
                lines += [f"   * - :py:obj:`{n} <{home}.{n}>`",
                          f"     - {_first_line(value)} (from :py:mod:`{home}`)"]
            lines += [""]
        for title, directive in KINDS:
            group = [n for n in own if _kind(getattr(module, n)) == directive]
            if not group:
                continue
            lines += [f".. rubric:: {title}", ""]
            for n in group:
                lines += [f".. {directive}:: {name}.{n}"]
                if directive == "autoclass":
                    lines += ["   :members:"]
                elif directive == "autodata" and len(repr(getattr(module, n))) > 60:
                    lines += ["   :no-value:"]
                lines += [""]
        if type(self.state).__module__.startswith("myst_parser"):
            lines = ["````{eval-rst}", *lines, "````"]  # a MyST page parses nested content as MyST
        content = StringList(lines, source=f"<learndyn-module {name}>")
        node = self._container()
        self.state.nested_parse(content, 0, node)
        return node.children

    def _container(self):
        from docutils import nodes

        holder = nodes.Element()
        holder.document = self.state.document
        return holder


def _pages(env) -> dict[str, str]:
    """Module name -> the document that holds its reference, kept in the build environment."""
    if not hasattr(env, "learndyn_api_pages"):
        env.learndyn_api_pages = {}
    return env.learndyn_api_pages


def _every_module_has_a_page(app, env):
    documented = _pages(env)
    if not documented:
        return  # a build of a subset of the book without the reference
    package = importlib.import_module(PACKAGE)
    modules = [PACKAGE] + [f"{PACKAGE}.{m.name}" for m in pkgutil.iter_modules(package.__path__)
                           if not m.name.startswith("_")]
    for module in modules:
        if module not in documented:
            LOGGER.warning(f"{module} has no API page: add book/api/<module>.md with a "
                           f"learndyn-module directive and list it in _toc.yml")


def _merge(app, env, docnames, other):
    _pages(env).update(_pages(other))


def _purge(app, env, docname):
    pages = _pages(env)
    for module in [m for m, doc in pages.items() if doc == docname]:
        del pages[module]


def setup(app):
    app.add_directive("learndyn-module", LearndynModule)
    app.connect("env-check-consistency", _every_module_has_a_page)
    app.connect("env-merge-info", _merge)
    app.connect("env-purge-doc", _purge)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
