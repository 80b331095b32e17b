"""Statistics: paired bootstrap CIs against known ratios, spreads, instability, and the A/A noise floor."""

import math

import numpy as np
import pytest

from harness.analysis import decision, noise_floor, stats
from harness.analysis.summary import instability_advice
from tests.fixtures.synthetic import aa_records, speed_record


def test_bootstrap_ci_covers_known_ratio_on_synthetic_samples():
    # 20 paired runs, true ratio 1.5, 3% lognormal noise on each side: the 95% CI must cover 1.5
    rng = np.random.default_rng(1)
    base = 100 * np.exp(0.03 * rng.standard_normal(20))
    variant = 150 * np.exp(0.03 * rng.standard_normal(20))
    est = stats.paired_ratio(dict(enumerate(variant)), dict(enumerate(base)))
    assert est.ci_low < 1.5 < est.ci_high
    assert est.ci_high - est.ci_low < 0.1  # and it is tight enough to be useful
    assert decision.decide(est).outcome == decision.BETTER and not decision.contains(est, 1.0)


def test_bootstrap_coverage_is_near_nominal():
    # over 200 synthetic experiments the 95% interval should cover the true ratio most of the time
    rng = np.random.default_rng(2)
    hits = 0
    for _ in range(200):
        ratios = 2.0 * np.exp(0.05 * rng.standard_normal(10))
        est = stats.bootstrap_ratio(ratios, n_boot=2000, seed=int(rng.integers(1 << 30)))
        hits += est.ci_low <= 2.0 <= est.ci_high
    assert 0.85 <= hits / 200 <= 0.99


def test_paired_ratio_is_geometric_mean_over_shared_repeats():
    # repeat 4 is missing from the baseline and repeat 3's baseline failed (None): pairs 0, 1 and 2 only
    est = stats.paired_ratio({0: 2.0, 1: 8.0, 2: 9.0, 3: 5.0, 4: 9.0}, {0: 1.0, 1: 2.0, 2: 3.0, 3: None})
    assert est.n == 3 and est.method == "t"
    assert est.ratio == pytest.approx((2.0 * 4.0 * 3.0) ** (1 / 3))
    assert est.ci_low < est.ratio < est.ci_high


def test_an_interval_from_two_samples_is_insufficient():
    # A percentile bootstrap over 2 pairs has at most 3 distinct values: no interval is printed.
    est = stats.paired_ratio({0: 1.05, 1: 1.06}, {0: 1.0, 1: 1.0})
    assert est.n == 2 and est.method == "insufficient" and not est.has_interval
    assert est.describe() == "x1.05 (insufficient: n=2; need >= 3)"
    assert math.isnan(est.half_width_pct) and decision.decide(est).insufficient


def test_t_interval_coverage_is_near_nominal_with_few_repeats():
    # 3 repeats per experiment, 5% lognormal noise: Student t keeps ~95% coverage where a bootstrap cannot.
    rng = np.random.default_rng(3)
    hits, trials = 0, 400
    for _ in range(trials):
        est = stats.repeat_ratio(1.3 * np.exp(0.05 * rng.standard_normal(3)))
        hits += est.ci_low <= 1.3 <= est.ci_high
    assert 0.90 <= hits / trials <= 0.99


def test_block_bootstrap_widens_for_autocorrelated_steps():
    # AR(1) step ratios (phi 0.8): an i.i.d. bootstrap is too narrow; the block bootstrap is wider.
    rng = np.random.default_rng(4)
    noise = np.zeros(200)
    for i in range(1, 200):
        noise[i] = 0.8 * noise[i - 1] + 0.02 * rng.standard_normal()
    ratios = 1.2 * np.exp(noise)
    iid, block = stats.bootstrap_ratio(ratios), stats.block_bootstrap_ratio(ratios, block=10)
    assert block.method == "block bootstrap" and block.ci_high - block.ci_low > 1.5 * (iid.ci_high - iid.ci_low)
    assert not stats.block_bootstrap_ratio(ratios[:5]).has_interval  # fewer than MIN_STEP_PAIRS


def test_single_pair_has_no_interval():
    est = stats.paired_ratio({0: 3.0}, {0: 1.0})
    assert est.ratio == pytest.approx(3.0) and math.isnan(est.ci_low) and decision.decide(est).insufficient


def test_bootstrap_is_seeded():
    r = [1.1, 1.3, 0.9, 1.2]
    assert stats.bootstrap_ratio(r) == stats.bootstrap_ratio(r)


def test_unpaired_ratio_of_medians():
    est = stats.unpaired_ratio([9.0, 10.0, 11.0], [4.0, 5.0, 6.0])
    assert est.ratio == pytest.approx(2.0)
    assert est.ci_low < 2.0 < est.ci_high


def test_spread_and_percentiles_hand_computed():
    assert stats.spread_pct([90, 100, 110]) == pytest.approx(20.0)
    assert stats.spread_pct([5.0]) == 0.0
    assert math.isnan(stats.spread_pct([]))
    assert stats.percentile(list(range(11)), 10) == pytest.approx(1.0)
    assert stats.min_max([3, None, 1, float("nan")]) == (1.0, 3.0)


def test_instability_advice():
    tight = stats.RatioEstimate(1.5, 1.4, 1.6, 5)
    assert instability_advice(ci=tight, spreads_pct={"its": 3.0, "the baseline's": 4.0}, repeats=5,
                                    bench_steps=20) == ""
    straddle = stats.RatioEstimate(1.02, 0.97, 1.08, 5)
    text = instability_advice(ci=straddle, spreads_pct={"its": 3.0}, repeats=5, bench_steps=20)
    assert "includes 1.0" in text and "repeats=10" in text and "bench_steps=40" in text
    noisy = instability_advice(ci=tight, spreads_pct={"its": 2.0, "the baseline's": 15.0}, repeats=3,
                                     bench_steps=None)
    assert "the baseline's run-to-run spread 15%" in noisy and "its run" not in noisy
    assert "quieter machine" in noisy and "bench_steps" not in noisy


def test_noise_floor_from_aa_variant_scales_with_noise():
    quiet = noise_floor(aa_records(noise_scale=0.5), "baseline")
    loud = noise_floor(aa_records(noise_scale=4.0), "baseline")
    assert quiet["method"].startswith("paired A/A")
    assert quiet["repeats"] == 5
    assert quiet["ci_low"] <= quiet["aa_ratio"] <= quiet["ci_high"]
    assert 1.0 < quiet["min_resolvable_speedup"] < loud["min_resolvable_speedup"]
    assert quiet["half_width"] == pytest.approx(quiet["min_resolvable_speedup"] - 1.0)


def test_noise_floor_without_aa_uses_baseline_repeats_and_needs_two():
    records = [speed_record("baseline", i, noise=n) for i, n in enumerate([0.0, 0.05, -0.05])]
    nf = noise_floor(records, "baseline")
    assert "no 'baseline_aa'" in nf["method"] and nf["half_width"] > 0
    with pytest.raises(ValueError, match="repeats >= 3"):
        noise_floor(records[:1], "baseline")
