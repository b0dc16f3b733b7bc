"""learndyn.checks: the threshold follows the budget, checks fail in both directions, bad input is named."""

import numpy as np
import pytest
import torch

from learndyn.backend import stream_seed
from learndyn.checks import CheckFailed, Claims, z_threshold


def test_threshold_follows_the_budget():
    assert z_threshold(0.05, 1) == pytest.approx(1.959964, abs=1e-6)
    assert z_threshold(1e-3, 100) == pytest.approx(4.4172, abs=1e-3)
    assert Claims("ch", comparisons=10).z < Claims("ch", comparisons=1000).z
    with pytest.raises(ValueError, match="comparisons"):
        Claims("ch", comparisons=0)
    with pytest.raises(ValueError, match="false_alarm"):
        z_threshold(1.5, 3)


def test_compare_passes_a_right_theory_and_rejects_a_wrong_one():
    claims = Claims("ch", comparisons=20)
    measured = np.linspace(0, 1, 10)
    verdict = claims.compare("line", measured + 0.01, 0.01, measured, wrong={"doubled": 2 * measured})
    assert verdict.ratio < 1 and verdict.wrong_ratios["doubled"] > 1
    assert verdict.tolerance.shape == measured.shape
    assert np.all(np.abs(verdict.margin) <= 1)
    assert claims.used == 10


def test_compare_fails_a_wrong_theory_and_an_unrejected_alternative():
    claims = Claims("ch", comparisons=100)
    with pytest.raises(CheckFailed, match="^off: the theory misses"):
        claims.compare("off", np.ones(3), 0.01, 1.2 * np.ones(3))
    with pytest.raises(CheckFailed, match="^close: the wrong theories"):
        claims.compare("close", np.ones(3), 0.01, np.ones(3), wrong={"nearby": 1.001 * np.ones(3)})


def test_allowances_widen_the_tolerance_and_must_be_nonnegative():
    claims = Claims("ch", comparisons=100)
    claims.compare("with allowance", torch.ones(4), torch.full((4,), 1e-3), 1.1 * torch.ones(4),
                   allowances={"O(eta)": 0.2})
    with pytest.raises(ValueError, match=r"allowances\['bad'\]"):
        claims.compare("x", np.ones(2), 0.1, np.ones(2), allowances={"bad": -1.0})
    with pytest.raises(ValueError, match="tolerance is zero"):
        claims.compare("x", np.ones(2), 0.0, np.ones(2))


def test_bad_input_is_named():
    claims = Claims("ch", comparisons=5)
    with pytest.raises(ValueError, match="measured"):
        claims.compare("x", [np.nan], 0.1, [0.0])
    with pytest.raises(ValueError, match="broadcast"):
        claims.compare("x", np.ones(3), 0.1, np.ones(4))
    with pytest.raises(ValueError, match="declared"):
        claims.compare("too many", np.ones(6), 0.1, np.ones(6))


def test_agree_and_order():
    claims = Claims("ch", comparisons=1)
    claims.agree("kernel", [1.0, 2.0], [1.0, 2.0 + 1e-14], rtol=1e-12)
    with pytest.raises(CheckFailed, match="^kernel2"):
        claims.agree("kernel2", [1.0], [1.1], rtol=1e-12)
    verdict = claims.order("closure", 4e-3, 1.05e-3, expected=2, wrong=[1])
    assert verdict.observed == pytest.approx(1.93, abs=0.01)
    with pytest.raises(CheckFailed, match="^first order"):
        claims.order("first order", 4e-3, 2e-3, expected=2, wrong=[1])
    assert "2 checks passed" in claims.summary()


def test_stream_seeds_are_distinct_and_deterministic():
    seeds = {stream_seed(s, k) for s in range(20) for k in range(20)}
    assert len(seeds) == 400
    assert stream_seed(3, 4) == stream_seed(3, 4)
    with pytest.raises(ValueError, match="stream"):
        stream_seed(1, -1)


def test_results_print_short_and_display_nothing_more():
    claims = Claims("ch", comparisons=3)
    verdict = claims.compare("line", np.ones(3), 0.1, np.ones(3), wrong={"doubled": 2 * np.ones(3)})
    assert repr(verdict) == "Verdict('line': |gap|/tol 0.00, doubled 2.79)"
    order = claims.order("closure", 4e-3, 1e-3, expected=2, wrong=[1])
    assert repr(order) == "OrderVerdict('closure': order 2.00, expected 2)"
    summary = claims.summary()
    assert summary.startswith("ch: 2 checks passed")
    for shown in (verdict, order, summary):
        assert shown._ipython_display_() is None
