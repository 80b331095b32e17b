"""One decision rule, four outcomes, the same words on every face."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from harness.analysis import decision, stats
from harness.analysis.decision import BETTER, EQUIVALENT, UNRESOLVED, WORSE, decide
from harness.analysis.stats import RatioEstimate

ROOT = Path(__file__).resolve().parent.parent


def est(ratio: float, low: float, high: float, n: int = 5, method: str = "t") -> RatioEstimate:
    return RatioEstimate(ratio, low, high, n, method, 3)


@pytest.mark.parametrize("e, outcome, label", [
    (est(1.22, 1.13, 1.31), BETTER, "faster"),
    (est(0.80, 0.75, 0.85), WORSE, "slower"),
    (est(1.00, 0.99, 1.02), EQUIVALENT, "equivalent within ±3%"),
    (est(1.015, 1.01, 1.02), EQUIVALENT, "equivalent within ±3%"),  # resolved, but too small to matter
    (est(1.02, 1.01, 1.05), BETTER, "faster"),  # resolved, and not shown within the margin
    (est(1.02, 0.97, 1.08), UNRESOLVED, "unresolved"),
])
def test_four_outcomes_at_the_speed_margin(e, outcome, label) -> None:
    d = decide(e, margin=0.03)
    assert d.outcome == outcome and d.label == label
    assert d.text().startswith(f"{label}: x{e.ratio:.3g} [")


def test_lower_is_better_swaps_the_words() -> None:
    d = decide(est(1.2, 1.1, 1.3), higher_is_better=False, words=decision.QUALITY)
    assert d.side == decision.ABOVE and d.outcome == WORSE and d.label == "worse"


def test_no_interval_is_unresolved_and_says_how_many_more_give_one() -> None:
    d = decide(RatioEstimate(1.3, math.nan, math.nan, 1, "insufficient", 3))
    assert d.outcome == UNRESOLVED and d.insufficient and not d.resolved
    assert d.text() == "unresolved: x1.3 (insufficient: n=1; need >= 3); 2 more repeats give an interval"
    assert decide(RatioEstimate(math.nan, math.nan, math.nan, 0)).text().startswith("unresolved: not measured")


def test_more_repeats_is_what_the_t_interval_would_need() -> None:
    # 5 log-ratios around +2% with a 4% SD: unresolved now; the advice is the n at which the same point and
    # spread would give a t interval that leaves 1 or fits within the margin
    rng = np.random.default_rng(3)
    logs = 0.02 + 0.04 * rng.standard_normal(5)
    e = stats.repeat_ratio(np.exp(logs))
    d = decide(e, margin=0.03)
    assert d.outcome == UNRESOLVED and d.more is not None
    s, m = float(np.std(logs, ddof=1)), abs(float(np.mean(logs)))
    n = 5 + d.more
    half = stats.SEQUENTIAL_WIDEN * stats.t_quantile_975(n - 1) * s / math.sqrt(n)
    half_before = stats.SEQUENTIAL_WIDEN * stats.t_quantile_975(n - 2) * s / math.sqrt(n - 1)
    goal = max(m, math.log1p(0.03) - m)
    assert half < goal <= half_before  # the first n that resolves it, not a later one
    assert f"about {d.more} more repeats would likely resolve it" in d.text()


def test_an_estimate_sitting_on_the_reference_gets_no_finite_advice() -> None:
    d = decide(est(1.0, 0.9, 1.11))  # no margin: only leaving 1 resolves it, and the point is at 1
    assert d.outcome == UNRESOLVED and d.more is None and "more than 100 repeats" in d.text()


def test_a_difference_scale_decides_quality_deltas() -> None:
    worse = decide(RatioEstimate(-0.39, -0.45, -0.33, 3, "t", 3), at=0.0, margin=0.01, scale="difference",
                   words=decision.QUALITY)
    assert worse.outcome == WORSE and worse.text() == "worse: -0.39 [-0.45, -0.33]"
    same = decide(RatioEstimate(0.001, -0.004, 0.006, 3, "t", 3), at=0.0, margin=0.01, scale="difference",
                  words=decision.QUALITY)
    assert same.outcome == EQUIVALENT and same.label == "equivalent within ±0.01"


def test_exact_figures_are_equivalent_within_a_relative_tolerance() -> None:
    assert decision.exact(1.0000001, 1.0, 2e-5).outcome == EQUIVALENT
    assert decision.exact(1.001, 1.0, 2e-5).outcome != EQUIVALENT
    assert decision.exact(math.nan, math.nan, 2e-5).outcome == EQUIVALENT
    assert decision.exact(None, 1.0, 2e-5).outcome == UNRESOLVED


def test_contains_is_the_interval_holding_a_value() -> None:
    assert decision.contains(est(1.0, 0.9, 1.1), 1.0) and not decision.contains(est(1.2, 1.1, 1.3), 1.0)
    assert not decision.contains(RatioEstimate(1.0, math.nan, math.nan, 2), 1.0)


_INTERVAL_VS_VALUE = re.compile(
    r"""(ci_low|ci_high|["']low["']|["']high["'])["'\])]*\s*(<=?|>=?)(?!>)"""
    r"""|(?<![-=])(<=?|>=?)\s*[\w.\[\]"'(]*(ci_low|ci_high)\b""")


def test_no_other_code_compares_an_interval_with_a_threshold() -> None:
    # the decision module is the one place an interval's ends meet a threshold; elsewhere they only exist
    offenders = []
    for path in [*ROOT.glob("harness/**/*.py"), *ROOT.glob("bench/*.py"), *ROOT.glob("trainbench/**/*.py")]:
        if path.name == "decision.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if _INTERVAL_VS_VALUE.search(code) and "ci_low > 0" not in code:  # a log's domain, not a decision
                offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_the_pattern_finds_what_it_is_for() -> None:
    for line in ("if e.ci_high < 1.0:", "ok = 1 <= est.ci_low", 'slower = r["high"] < 1.0',
                 'x = float(r["speedup_ci_low"]) > 1'):
        assert _INTERVAL_VS_VALUE.search(line), line
