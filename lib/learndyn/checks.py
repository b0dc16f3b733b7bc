"""The book's one way to state and test a claim.

A chapter opens one :class:`Claims` ledger, declaring how many scalar comparisons it will make. The
ledger turns the book's false-alarm budget (:data:`FALSE_ALARM_PER_NOTEBOOK`, the chance that a correct
chapter fails on some seed) into one z-threshold by the Bonferroni bound: with ``n`` comparisons in
all, each may fail by chance with probability at most ``budget / n``, so

.. math:: z = \\Phi^{-1}\\bigl(1 - \\tfrac{\\text{budget}}{2n}\\bigr).

A statistical comparison (:meth:`Claims.compare`) then reads

.. math:: |\\text{measured} - \\text{theory}| \\le z\\,\\mathrm{SE} + \\textstyle\\sum_a \\text{allowance}_a

elementwise, and every *wrong theory* it names must break the same inequality somewhere. The
allowances are the orders the theory neglects, measured by an experiment that does not involve the
theory (step halving with common random numbers, two widths, quadrature refinement); an allowance
built from the theory under test, such as ``|theory - reference|``, would let that theory pass
whatever it says, and is the one thing this module cannot check for you. A known error *bound* of a
theory is instead tested on its own, as a convergence order (:meth:`Claims.order`). Deterministic
agreements (a kernel against its lambdified sympy form) go through :meth:`Claims.agree`.

Every method prints one line and raises :class:`CheckFailed`, an ``AssertionError`` whose message
starts with the check's name, when the claim fails in either direction.
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import ndtri

OUTPUT_WIDTH = 88
"""Printed lines are wrapped to this width, the width of the book's code column."""

__all__ = ["FALSE_ALARM_PER_NOTEBOOK", "OUTPUT_WIDTH", "CheckFailed", "Claims", "OrderVerdict", "Summary",
           "Verdict", "z_threshold"]

FALSE_ALARM_PER_NOTEBOOK = 1e-3
"""The largest chance that a correct chapter fails by bad luck, for any ``LEARNDYN_SEED``."""


class CheckFailed(AssertionError):
    """A claim that did not hold: a theory outside its tolerance, or a wrong theory inside it."""


def z_threshold(false_alarm: float, comparisons: int) -> float:
    """The two-sided z that keeps ``comparisons`` Gaussian tests under ``false_alarm`` in total."""
    if not 0.0 < false_alarm < 1.0:
        raise ValueError(f"false_alarm={false_alarm!r} must lie in (0, 1)")
    if isinstance(comparisons, bool) or not isinstance(comparisons, int) or comparisons < 1:
        raise ValueError(f"comparisons={comparisons!r} must be an integer >= 1")
    return float(-ndtri(false_alarm / (2 * comparisons)))


def _say(line: str) -> None:
    print(textwrap.fill(line, OUTPUT_WIDTH, subsequent_indent="     ", break_on_hyphens=False))


def _array(value, name: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}={value!r} cannot be read as an array of numbers") from exc
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} is not finite everywhere (NaN or inf at {int((~np.isfinite(array)).sum())}"
                         f" of {array.size} entries)")
    return array


def _nonnegative(value, name: str) -> np.ndarray:
    array = _array(value, name)
    if np.any(array < 0):
        raise ValueError(f"{name} must be >= 0 everywhere; its smallest entry is {array.min():.3g}")
    return array


@dataclass(frozen=True, repr=False)
class Verdict:
    """What :meth:`Claims.compare` measured, kept for the figure that shows it.

    ``tolerance`` is ``z * se`` plus the allowances, broadcast to the shape of ``measured``;
    ``ratio`` is ``max |measured - theory| / tolerance`` (at most 1 for a pass) and
    ``wrong_ratios[name]`` the same for each wrong theory (above ``reject_above`` for a rejection).
    """

    name: str
    measured: np.ndarray
    theory: np.ndarray
    tolerance: np.ndarray
    ratio: float
    wrong_ratios: dict[str, float]
    allowances: dict[str, float]
    z: float

    def __repr__(self) -> str:
        wrong = "".join(f", {k} {v:.2f}" for k, v in self.wrong_ratios.items())
        return f"Verdict({self.name!r}: |gap|/tol {self.ratio:.2f}{wrong})"

    def _ipython_display_(self) -> None:
        """A cell that ends in a check has printed its line already: display nothing more."""

    @property
    def margin(self) -> np.ndarray:
        """``(measured - theory) / tolerance`` elementwise: a passing check's figure stays in [-1, 1]."""
        return (self.measured - self.theory) / self.tolerance


@dataclass(frozen=True, repr=False)
class OrderVerdict:
    """What :meth:`Claims.order` measured: the observed order ``log(coarse/fine) / log(refinement)``."""

    name: str
    observed: float
    expected: float
    wrong: tuple[float, ...]

    def __repr__(self) -> str:
        return f"OrderVerdict({self.name!r}: order {self.observed:.2f}, expected {self.expected:g})"

    def _ipython_display_(self) -> None:
        """A cell that ends in a check has printed its line already: display nothing more."""


class Summary(str):
    """The line :meth:`Claims.summary` printed; a notebook does not display it a second time."""

    def _ipython_display_(self) -> None:
        """Displayed as nothing: the line is printed already."""


@dataclass
class Claims:
    """One chapter's ledger of checks under one false-alarm budget.

    ``comparisons`` is the number of scalar statistical comparisons the chapter will make, counted
    over every :meth:`compare` (each entry of ``measured`` is one). It is declared up front because
    it sets the threshold; making more than declared raises ``ValueError``.
    """

    chapter: str
    comparisons: int
    false_alarm: float = FALSE_ALARM_PER_NOTEBOOK
    z: float = field(init=False)
    used: int = field(init=False, default=0)
    verdicts: list = field(init=False, default_factory=list)
    passed: int = field(init=False, default=0)

    def __post_init__(self):
        self.z = z_threshold(self.false_alarm, self.comparisons)

    def compare(self, name: str, measured, se, theory, *, allowances: Mapping | None = None,
                wrong: Mapping | None = None, reject_above: float = 1.0) -> Verdict:
        """``measured`` (standard error ``se``) agrees with ``theory`` and rejects each ``wrong`` theory.

        ``allowances`` maps a name to a non-negative array, broadcastable to ``measured``: an order
        the theory neglects, measured independently of it. ``wrong`` maps a name to the prediction of
        a plausible alternative; each must miss the same tolerance by more than ``reject_above``.
        """
        measured = _array(measured, "measured")
        se = _nonnegative(se, "se")
        theory = _array(theory, "theory")
        budget = {str(k): _nonnegative(v, f"allowances[{k!r}]") for k, v in (allowances or {}).items()}
        try:
            shape = np.broadcast_shapes(measured.shape, se.shape, theory.shape,
                                        *(a.shape for a in budget.values()))
        except ValueError as exc:
            raise ValueError(f"{name}: measured, se, theory and allowances do not broadcast: {exc}") from exc
        if shape != measured.shape:
            raise ValueError(f"{name}: measured has shape {measured.shape}, but se, theory or an "
                             f"allowance broadcasts it to {shape}")
        self._spend(name, measured.size)
        tolerance = self.z * se + sum(budget.values(), np.zeros(shape))
        tolerance = np.broadcast_to(tolerance, shape)
        if np.any(tolerance <= 0):
            raise ValueError(f"{name}: the tolerance is zero somewhere; give se > 0 or an allowance")
        ratio = float(np.max(np.abs(measured - theory) / tolerance))
        wrong_ratios = {}
        for label, prediction in (wrong or {}).items():
            prediction = np.broadcast_to(_array(prediction, f"wrong[{label!r}]"), shape)
            wrong_ratios[str(label)] = float(np.max(np.abs(measured - prediction) / tolerance))
        verdict = Verdict(name, measured, np.broadcast_to(theory, shape), tolerance, ratio, wrong_ratios,
                          {k: float(np.max(v)) for k, v in budget.items()}, self.z)
        self.verdicts.append(verdict)
        rejected = ", ".join(f"{k} {v:.2f}" for k, v in wrong_ratios.items())
        _say(f"{'ok  ' if ratio <= 1 else 'FAIL'} {name}: |gap|/tol {ratio:.2f}"
             + (f"; wrong: {rejected}" if rejected else ""))
        if ratio > 1.0:
            raise CheckFailed(f"{name}: the theory misses the measurement by {ratio:.2f} tolerances "
                              f"(z = {self.z:.2f}, allowances {verdict.allowances})")
        accepted = [k for k, v in wrong_ratios.items() if v <= reject_above]
        if accepted:
            raise CheckFailed(f"{name}: the wrong theories {accepted} are not rejected "
                              f"(ratios {[round(wrong_ratios[k], 2) for k in accepted]}, "
                              f"need > {reject_above})")
        self.passed += 1
        return verdict

    def agree(self, name: str, computed, reference, *, rtol: float, atol: float = 0.0) -> float:
        """A deterministic agreement: ``|computed - reference| <= atol + rtol |reference|`` everywhere.

        Returns the largest ``|computed - reference| / (atol + rtol |reference|)``. It spends nothing
        of the false-alarm budget: there is no chance in it.
        """
        computed, reference = _array(computed, "computed"), _array(reference, "reference")
        if rtol < 0 or atol < 0 or rtol == atol == 0:
            raise ValueError(f"{name}: rtol={rtol!r}, atol={atol!r}: give a positive tolerance")
        scale = atol + rtol * np.abs(reference)
        gap = np.abs(computed - reference)
        ratio = float(np.max(gap / scale))
        _say(f"{'ok  ' if ratio <= 1 else 'FAIL'} {name}: max gap {np.max(gap):.1e} "
             f"(rtol {rtol:.0e}, atol {atol:.0e})")
        if ratio > 1.0:
            raise CheckFailed(f"{name}: computed and reference differ by up to {np.max(gap):.3g}, "
                              f"{ratio:.2f} times the tolerance")
        self.passed += 1
        return ratio

    def order(self, name: str, coarse, fine, *, expected: float, refinement: float = 2.0,
              wrong: Sequence[float] = (), within: float | None = None) -> OrderVerdict:
        """An error that falls as ``h**expected`` when ``h`` shrinks by ``refinement``.

        ``coarse`` and ``fine`` are the error sizes (arrays are reduced by their largest entry). The
        observed order must be within ``within`` of ``expected`` (default: half the distance to the
        nearest wrong order, or 0.5) and farther than that from every order in ``wrong``.
        """
        coarse = float(np.max(np.abs(_array(coarse, "coarse"))))
        fine = float(np.max(np.abs(_array(fine, "fine"))))
        if coarse <= 0 or fine <= 0:
            raise ValueError(f"{name}: errors must be > 0 (coarse={coarse!r}, fine={fine!r})")
        if refinement <= 1:
            raise ValueError(f"refinement={refinement!r} must be > 1")
        if within is None:
            within = min([0.5] + [abs(w - expected) / 2 for w in wrong])
        observed = math.log(coarse / fine) / math.log(refinement)
        verdict = OrderVerdict(name, observed, float(expected), tuple(float(w) for w in wrong))
        good = abs(observed - expected) <= within
        _say(f"{'ok  ' if good else 'FAIL'} {name}: order {observed:.2f} (expected {expected:g} "
             f"+- {within:g}" + (f"; wrong: {', '.join(f'{w:g}' for w in wrong)}" if wrong else "") + ")")
        if not good:
            raise CheckFailed(f"{name}: observed order {observed:.3f}, expected {expected} +- {within}")
        self.verdicts.append(verdict)
        self.passed += 1
        return verdict

    def _spend(self, name: str, count: int) -> None:
        if self.used + count > self.comparisons:
            raise ValueError(f"{name}: {self.used + count} comparisons made, {self.comparisons} declared "
                             f"in Claims({self.chapter!r}, comparisons=...); raise the declaration")
        self.used += count

    def summary(self) -> str:
        """One line: how many checks passed and how much of the budget they spent."""
        line = (f"{self.chapter}: {self.passed} checks passed; {self.used} of {self.comparisons} "
                f"declared comparisons at z = {self.z:.2f} (false-alarm budget {self.false_alarm:g})")
        _say(line)
        return Summary(line)
