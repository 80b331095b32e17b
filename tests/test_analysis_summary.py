"""summarize(): one row per variant with paired speedups, spreads, equivalence, quality and status."""

import math

import pytest

from harness.analysis import summarize
from harness.analysis.summary import best_epoch, curve_value_at, time_to_target
from tests.fixtures.synthetic import BASE_SAMPLES_PER_S, DEMO_VARIANTS, demo_records, quality_record, speed_record


@pytest.fixture(scope="module")
def summary():
    return summarize(demo_records(), "baseline", target=0.6)


def test_rows_in_order_baseline_first_and_failures_kept(summary):
    assert list(summary.index) == [v for v, *_ in DEMO_VARIANTS] + ["crashy"]
    crashy = summary.loc["crashy"]
    assert crashy["runs_failed"] == 1 and crashy["runs_ok"] == 2
    assert "1 crash" in crashy["status"] and "planted failure" in crashy["errors"][0]


@pytest.mark.parametrize("variant,planted", [(v, s) for v, s, *_ in DEMO_VARIANTS if v != "baseline"])
def test_speedup_ci_covers_planted_ratio(summary, variant, planted):
    row = summary.loc[variant]
    assert row["speedup_ci_low"] <= planted * 1.001 and planted * 0.999 <= row["speedup_ci_high"]
    assert row["speedup"] == pytest.approx(planted, rel=0.05)


def test_speed_columns_hand_computed(summary):
    base = summary.loc["baseline"]
    # noise for the baseline's repeats 0,1,2 is NOISE[(rep + 8) % 4] = 0, +3%, -2%
    assert base["samples_per_s"] == pytest.approx(BASE_SAMPLES_PER_S)
    assert base["samples_per_s_min"] == pytest.approx(BASE_SAMPLES_PER_S * 0.98)
    assert base["samples_per_s_max"] == pytest.approx(BASE_SAMPLES_PER_S * 1.03)
    assert base["spread_pct"] == pytest.approx(5.0)
    assert base["step_ms"] == pytest.approx(8 / BASE_SAMPLES_PER_S * 1000)
    assert base["samples_per_s_p10"] < base["samples_per_s"] < base["samples_per_s_p90"]
    assert base["phase_pct_forward"] == pytest.approx(35.0)
    assert base["speedup"] == 1.0 and not base["unstable"]
    assert summary.loc["duplicate", "forward_calls_per_step"] == 2.0


def test_equivalence_and_quality_columns(summary):
    assert summary.loc["batched", "equivalent"] is True
    assert summary.loc["batched", "equiv_status"] == "pass"
    assert summary.loc["lossy", "equiv_status"] == "skipped"
    assert "lr" in summary.loc["lossy", "equiv_reason"]
    assert summary.loc["amp", "equiv_dtype"] == "bfloat16"
    assert summary.loc["lossy", "accuracy_delta"] == pytest.approx(0.30 - 0.69)
    assert summary.loc["lossy", "mae_delta"] == pytest.approx(1.08 - 0.53)
    assert summary.loc["batched", "best_epoch"] == 5
    # accuracy rises 0.69 * e/5: 0.552 at epoch 4, 0.69 at epoch 5; 0.6 is reached 0.048 / 0.138 of the way
    # between them: 4 s epochs -> 16 + 4 x 0.348 = 17.39 s; 1.4 s epochs -> 5.6 + 1.4 x 0.348 = 6.087 s
    assert summary.loc["baseline", "time_to_target_s"] == pytest.approx(16 + 4 * 0.048 / 0.138)
    assert summary.loc["batched", "time_to_target_s"] == pytest.approx(5.6 + 1.4 * 0.048 / 0.138)
    assert summary.loc["batched", "time_to_target_reached"] == "1/1"
    assert math.isnan(summary.loc["lossy", "time_to_target_s"])  # never reaches 0.6
    # equal time = the shortest run (batched, 7 s); baseline's last eval within 7 s is epoch 1 (4 s)
    assert summary.attrs["equal_time_s"] == pytest.approx(7.0)
    assert summary.loc["baseline", "primary_at_equal_time"] == pytest.approx(0.69 / 5)
    assert summary.attrs["primary_metric"] == "accuracy" and summary.attrs["higher_is_better"]


def test_changed_knobs_from_record_configs(summary):
    assert summary.loc["lossy", "changed"] == {"forward": ("loop", "parallel"), "lr": (0.001, 0.01)}
    assert summary.loc["baseline", "changed"] == {}


def test_unstable_when_ci_straddles_one():
    records = []
    for rep, (a, b) in enumerate([(0.0, 0.06), (0.05, -0.04), (-0.03, 0.02)]):
        records += [speed_record("baseline", rep, noise=a), speed_record("same", rep, noise=b)]
    row = summarize(records, "baseline").loc["same"]
    assert row["unstable"] and "includes 1.0" in row["advice"]


def test_missing_baseline_is_a_clear_error():
    with pytest.raises(ValueError, match="baseline 'nope' has no records"):
        summarize(demo_records(repeats=1), "nope")


def test_curve_helpers_hand_computed():
    curve = quality_record("x", final={"mae": 0.5}, epochs=4, seconds_per_epoch=1.0).curve
    # mae = 0.5 + (1 - e/4): 1.25, 1.0, 0.75, 0.5 -> lower is better
    # 1.0 at 2 s, 0.75 at 3 s: 0.8 is reached 0.2 / 0.25 of the way, at 2.8 s (interpolated)
    assert time_to_target(curve, "mae", 0.8, higher_is_better=False) == pytest.approx(2.8)
    assert time_to_target(curve, "mae", 1.25, higher_is_better=False) == 1.0  # the first evaluation: its time
    assert math.isnan(time_to_target(curve, "mae", 0.4, higher_is_better=False))
    assert best_epoch(curve, "mae", higher_is_better=False) == 4.0
    assert curve_value_at(curve, "mae", 2.5) == pytest.approx(1.0)
    assert math.isnan(curve_value_at(curve, "mae", 0.5))


def test_time_to_target_defaults_to_95_percent_of_the_baseline_with_an_interval_over_seeds():
    """No quality_target: 95% of the baseline's final primary; per variant the median over seeds, a 95% interval
    from 3 seeds, and how many seeds reached it."""
    import dataclasses

    records = []
    for seed, spe in enumerate([1.0, 1.2, 1.1]):
        base = quality_record("baseline", final={"accuracy": 0.8}, seconds_per_epoch=2 * spe)
        fast = quality_record("fast", final={"accuracy": 0.8}, seconds_per_epoch=spe)
        slow = quality_record("never", final={"accuracy": 0.5}, seconds_per_epoch=spe)
        records += [dataclasses.replace(r, repeat=seed) for r in (base, fast, slow)]
    s = summarize(records, "baseline")
    assert s.attrs["target"] == pytest.approx(0.95 * 0.8) and s.attrs["target_is_default"]
    # 0.76 between epoch 4 (0.64) and 5 (0.8): 4.75 epochs of each seed's seconds
    assert s.loc["fast", "time_to_target_s"] == pytest.approx(4.75 * 1.1)
    assert s.loc["fast", "time_to_target_ci_low"] < 4.75 * 1.1 < s.loc["fast", "time_to_target_ci_high"]
    assert s.loc["fast", "time_to_target_reached"] == "3/3"
    assert math.isnan(s.loc["never", "time_to_target_s"]) and s.loc["never", "time_to_target_reached"] == "0/3"


def test_an_ema_variant_is_judged_by_its_ema_weights():
    from harness.analysis.summary import deployed

    q = {"accuracy": 0.60, "ema_accuracy": 0.65, "loss": 1.0}
    assert deployed(q, {"ema": 0.98}) == {"accuracy": 0.65, "ema_accuracy": 0.65, "loss": 1.0}
    assert deployed(q, {"ema": 0.0}) == q and deployed(q, {}) == q
