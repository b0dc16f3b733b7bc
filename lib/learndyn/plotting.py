"""One figure style for the whole book: theory is a solid line, simulation markers with error bars,
in the same two colours in every chapter."""

from __future__ import annotations

import matplotlib as mpl
import matplotlib.pyplot as plt

THEORY_COLOR = "#1f4e79"
SIMULATION_COLOR = "#d9541e"
ALTERNATIVE_COLOR = "#7f7f7f"
PALETTE = ["#1f4e79", "#d9541e", "#3a923a", "#8e44ad", "#c49a00", "#17a2b8"]

STYLE = {
    "figure.figsize": (6.4, 4.0),
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": mpl.cycler(color=PALETTE),
    "axes.titlesize": "medium",
    "legend.frameon": False,
    "legend.fontsize": "small",
    "lines.linewidth": 1.8,
    "font.size": 10,
}


def use_book_style() -> None:
    """Apply the book's matplotlib style (call once at the top of a chapter)."""
    mpl.rcParams.update(STYLE)


def theory_line(ax, x, y, label="theory", **kwargs):
    """A theory curve in the book's theory colour."""
    return ax.plot(_np(x), _np(y), color=kwargs.pop("color", THEORY_COLOR), label=label, **kwargs)


def simulation_points(ax, x, y, yerr=None, label="simulation", **kwargs):
    """Simulation means (with standard errors) in the book's simulation colour."""
    return ax.errorbar(_np(x), _np(y), yerr=None if yerr is None else _np(yerr), fmt="o",
                       markersize=kwargs.pop("markersize", 3.5), capsize=2,
                       color=kwargs.pop("color", SIMULATION_COLOR), label=label, **kwargs)


def new_figure(ncols: int = 1, nrows: int = 1, width: float = 6.4, height: float = 4.0, **kwargs):
    """``plt.subplots`` with the book's size per panel and a constrained layout."""
    return plt.subplots(nrows, ncols, figsize=(width * ncols ** 0.75, height * nrows ** 0.9),
                        layout="constrained", **kwargs)


def _np(value):
    return value.detach().cpu().numpy() if hasattr(value, "detach") else value


__all__ = [
    "use_book_style", "theory_line", "simulation_points", "new_figure"
]
