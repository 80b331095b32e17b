"""`compare OLD NEW`: per-variant changes with their decision, and --fail-on thresholds."""

import pytest

from harness.analysis.compare import Threshold, compare, parse_fail_on
from harness.analysis.stats import RatioEstimate
from tests.fixtures.synthetic import speed_record, write


@pytest.fixture
def dirs(tmp_path):
    noise = (0.0, 0.02, -0.02)
    old = [speed_record(v, r, speedup=s, noise=noise[r]) for r in range(3) for v, s in (("a", 1.0), ("b", 2.0))]
    new = [speed_record(v, r, speedup=s, noise=noise[(r + 1) % 3]) for r in range(3)
           for v, s in (("a", 0.8), ("b", 2.02), ("c", 1.0))]
    return write(tmp_path / "old", old), write(tmp_path / "new", new)


def test_table_and_decisions(dirs):
    text, failed = compare(*dirs, fail_on=[])
    assert not failed
    a_row = next(line for line in text.splitlines() if line.startswith("| a | samples_per_s |"))
    b_row = next(line for line in text.splitlines() if line.startswith("| b | samples_per_s |"))
    assert "-20.0%" in a_row and "| lower |" in a_row  # a 20% drop, outside the noise
    # 1% inside +-2% run-to-run noise: neither resolved nor shown within +-3%, with what would settle it
    assert "+1.0%" in b_row and "| unresolved; about " in b_row and "more repeats would likely resolve it" in b_row
    assert "only one directory (not compared): c" in text


def test_fail_on_crossed_and_not(dirs):
    text, failed = compare(*dirs, fail_on=["samples_per_s:-10%"])
    assert failed and "❌ crossed -10%" in text and "FAILED" in text
    _, failed = compare(*dirs, fail_on=["samples_per_s:-25%"])
    assert not failed
    _, failed = compare(*dirs, fail_on=["step_ms_median:+10%"])  # a's steps got 25% longer
    assert failed


def _est(ratio: float, low: float, high: float) -> RatioEstimate:
    return RatioEstimate(ratio, low, high, 3, "bootstrap", 3)


def test_a_threshold_is_crossed_by_the_whole_interval_not_the_point():
    assert Threshold("x", -10).crossed(_est(0.7, 0.65, 0.75)) and Threshold("x", -10).crossed(_est(0.85, 0.8, 0.89))
    assert not Threshold("x", -10).crossed(_est(0.85, 0.8, 0.95))  # the point past -10%, the interval not wholly
    assert not Threshold("x", -10).crossed(_est(1.5, 1.4, 1.6))
    assert Threshold("x", 5).crossed(_est(1.1, 1.06, 1.14)) and not Threshold("x", 5).crossed(_est(0.8, 0.7, 0.9))
    assert not Threshold("x", 5).crossed(_est(1.1, float("nan"), float("nan")))  # no interval: never crossed


@pytest.mark.parametrize("spec,message", [("samples_per_s-10%", "write METRIC"), ("samples_per_s:10", "write"),
                                          ("speed:-10%", "unknown metric 'speed'")])
def test_bad_fail_on_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_fail_on([spec], ["samples_per_s"])


def test_a_constant_figure_changed_by_a_hair_is_equivalent(tmp_path):
    # peak RSS identical in every run, 0.00001 GiB apart: an interval of width 0, inside the margin
    old = [speed_record("a", r, peak_rss_gib=1.50000) for r in range(3)]
    new = [speed_record("a", r, peak_rss_gib=1.49999) for r in range(3)]
    text, _ = compare(write(tmp_path / "old", old), write(tmp_path / "new", new), fail_on=[])
    row = next(line for line in text.splitlines() if line.startswith("| a | peak_rss_gib |"))
    assert "-0.0%" in row and "| equivalent within ±3% |" in row


def test_different_configs_are_said(tmp_path):
    from tests.fixtures.synthetic import base_config

    old = [speed_record("a", r) for r in range(3)]
    new = [speed_record("a", r, config={**base_config(), "batch_size": 64}) for r in range(3)]
    text, _ = compare(write(tmp_path / "old", old), write(tmp_path / "new", new), fail_on=[])
    assert "**`a` ran different configs**: batch_size=" in text and "-> 64" in text


def test_one_or_two_runs_per_side_are_insufficient_never_significant(tmp_path, capsys):
    from harness.cli import main

    old = write(tmp_path / "old", [speed_record("a", 0, speedup=1.0)])  # 1 run
    new = write(tmp_path / "new", [speed_record("a", r, speedup=0.5, noise=0.01 * r) for r in range(2)])  # 2 runs
    text, failed = compare(old, new, fail_on=[])
    row = next(line for line in text.splitlines() if line.startswith("| a | samples_per_s |"))
    assert "-49.8%" in row and "insufficient (1 vs 2 runs; need >= 3 each)" in row
    assert "| lower |" not in text and "| unresolved: insufficient |" in row and not failed
    assert main(["compare", str(old), str(new)]) == 0
    assert main(["compare", str(old), str(new), "--fail-on", "samples_per_s:-10%"]) == 2
    out, err = capsys.readouterr()
    assert "undecided: insufficient" in out  # the table still prints
    assert err.strip().splitlines()[-1] == (
        "error: --fail-on cannot be decided: fewer than 3 runs on a side for a samples_per_s (1 old vs 2 new runs); "
        "run each sweep with --repeats 3 or more")


def test_a_rerun_replaces_its_contended_attempt(tmp_path):
    import dataclasses

    old = [speed_record("a", r, speedup=1.0) for r in range(3)]
    new = [speed_record("a", r, speedup=1.0) for r in range(3)]
    slow = dataclasses.replace(new[0], metrics={**new[0].metrics, "samples_per_s": 1.0})  # contended, then re-run
    new = [slow, dataclasses.replace(new[0], attempt=1), *new[1:]]
    text, _ = compare(write(tmp_path / "old", old), write(tmp_path / "new", new), fail_on=[])
    row = next(line for line in text.splitlines() if line.startswith("| a | samples_per_s |"))
    assert "+0.0%" in row
