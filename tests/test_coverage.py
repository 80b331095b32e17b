"""The sweep's interval keeps its 95% promise under its own stopping rule (simulated A/A comparisons)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from harness.analysis import stats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import simulate_coverage as sim  # noqa: E402

TRIALS = 2000


@pytest.mark.parametrize("condition", list(sim.CONDITIONS))
@pytest.mark.parametrize("noise", sim.NOISES_PCT)
def test_the_stopping_rule_covers_at_least_94_5_percent(condition: str, noise: float) -> None:
    phi, k, j = sim.CONDITIONS[condition]
    cov = sim.simulate(noise, TRIALS, phi=phi, k=k, j=j, seed=int(noise * 10))
    assert cov.trials == TRIALS
    assert cov.pct >= 94.5, (condition, noise, cov)
    assert cov.median_repeats >= stats.MIN_STOP_REPEATS  # the rule never stops before its minimum


def test_the_rule_as_it_was_under_covers() -> None:
    # stopping from 3 processes on the plain t interval: the failure the correction is for
    phi, k, j = sim.CONDITIONS["AR(0.5), 2 variants"]
    old = sim.simulate(5.0, TRIALS, phi=phi, k=k, j=j, min_stop=3, widen=1.0, seed=50)
    assert old.pct < 93.0, old


def test_a_fixed_number_of_repeats_covers_as_student_t_says() -> None:
    # no stopping (the first look is the last): the plain t interval is exact for iid normal log-ratios
    fixed = sim.simulate(2.0, TRIALS, min_stop=sim.MAX_REPEATS, widen=1.0, seed=7)
    assert fixed.median_repeats == sim.MAX_REPEATS
    low, high = sim.binomial_interval(fixed.covered, fixed.trials)
    assert low <= 95.0 <= high, (low, high)


def test_the_binomial_interval_is_wilsons() -> None:
    low, high = sim.binomial_interval(95, 100)
    assert (round(low, 1), round(high, 1)) == (88.8, 97.8)
