"""Gates: the grammar, validation before a sweep (unknown names, injection), and checks on a summary."""

import pytest

from harness.analysis import gates, summarize
from tests.fixtures.synthetic import demo_records

KNOWN = gates.known_metrics(["accuracy", "mae"])
VARIANTS = ["baseline", "batched", "amp", "bs16", "duplicate", "lossy", "crashy"]


@pytest.fixture(scope="module")
def summary():
    return summarize(demo_records(), "baseline", primary_metric="accuracy", higher_is_better=True)


@pytest.mark.parametrize("expr,expected", [
    ("scan.speedup >= 5", ("scan", "speedup", ">=", 5.0, None, None)),
    ("scan.equivalent", ("scan", "equivalent", "", 1.0, None, None)),
    ("amp.qwk_delta >= -0.01", ("amp", "qwk_delta", ">=", -0.01, None, None)),
    ("all.forward_calls_per_step == 1", ("all", "forward_calls_per_step", "==", 1.0, None, None)),
    ("parallel.samples_per_s >= 1.5 * sequential.samples_per_s",
     ("parallel", "samples_per_s", ">=", 1.5, "sequential", "samples_per_s")),
    ("a-b.step_ms<b.step_ms", ("a-b", "step_ms", "<", 1.0, "b", "step_ms")),
    ("x.mfu != 1e-3", ("x", "mfu", "!=", 1e-3, None, None)),
])
def test_grammar(expr, expected):
    g = gates.parse(expr)
    assert (g.variant, g.metric, g.op, g.factor, g.right_variant, g.right_metric) == expected


@pytest.mark.parametrize("expr,message", [
    ("__import__('os').system('rm -rf /')", "not allowed"),
    ("batched.speedup >= 1; import os", "not allowed"),
    ("batched.speedup() >= 1", "not allowed"),
    ("batched.__class__ == 1", "not allowed"),
    ("batched.speedup >= 1 or True", "does not parse"),
    ("lambda: 1", "not allowed"),
    ("batched.speedup >= 2 ** 3", "does not parse"),
    ("batched.speedup", "does not parse"),
    ("", "empty"),
    ("batched.speedup >= 1.5 * all.speedup", "only on the left"),
])
def test_injection_and_garbage_rejected(expr, message):
    with pytest.raises(ValueError, match=message):
        gates.validate([expr], VARIANTS, KNOWN)


def test_unknown_names_rejected_with_suggestion():
    with pytest.raises(ValueError, match="unknown variant 'batchd'; did you mean 'batched'"):
        gates.validate(["batchd.speedup >= 1"], VARIANTS, KNOWN)
    with pytest.raises(ValueError, match="unknown metric 'sped'; did you mean 'speedup'"):
        gates.validate(["batched.sped >= 1"], VARIANTS, KNOWN)
    with pytest.raises(ValueError, match="unknown variant 'nobody'"):
        gates.validate(["batched.speedup >= 2 * nobody.speedup"], VARIANTS, KNOWN)
    with pytest.raises(ValueError, match="unknown metric 'qwk_delta'"):
        gates.validate(["amp.qwk_delta >= 0"], VARIANTS, KNOWN)  # the workload has no qwk


def test_known_metrics_cover_quality_and_deltas():
    assert {"accuracy", "accuracy_delta", "mae_delta", "speedup", "speedup_ci_low", "samples_per_s",
            "time_to_target_s", "forward_calls_per_step"} <= KNOWN


def test_check_against_summary(summary):
    results = gates.check([
        "batched.speedup >= 2.5",                          # 3.0 planted
        "batched.speedup_ci_low > 1",
        "batched.equivalent",
        "lossy.accuracy_delta >= -0.01",                   # -0.39: fails
        "all.forward_calls_per_step == 1",                 # duplicate has 2: fails
        "bs16.samples_per_s >= 1.5 * baseline.samples_per_s",
        "amp.speedup >= 1",                                # 0.8: fails
    ], summary, "baseline", KNOWN)
    assert [r.passed for r in results] == [True, True, True, False, False, True, False]
    assert "lossy.accuracy_delta = -0.39" in results[3].measured
    assert "duplicate: not == 1" in results[4].message
    assert "bs16.samples_per_s / baseline.samples_per_s = above 1.5: x1.6 [" in results[5].measured


def test_equivalence_gates(summary):
    named, everyone, skipped = gates.check(["batched.equivalent", "all.equivalent", "lossy.equivalent"],
                                           summary, "baseline", KNOWN)
    assert named.passed and "max abs err 3e-07" in named.measured
    # all.equivalent skips quality-knob variants by design but fails on one never checked (crashy)
    assert not everyone.passed and "crashy" in everyone.message and "lossy" not in everyone.message
    assert not skipped.passed and "skipped" in skipped.measured


def test_missing_measurement_fails_with_reason(summary):
    (r,) = gates.check(["batched.energy_j_per_sample <= 1"], summary, "baseline", KNOWN)
    assert not r.passed and "not measured" in r.message


def test_plugin_ratio_gate_and_toml_gate_agree_on_the_same_records():
    # One decision rule: the same paired records, decided by a TOML gate through the summary and by the
    # pytest plugin's ratio verdict, at thresholds below, inside and above the measured interval.
    from harness.analysis.speedup import compare
    from harness.analysis.summary import summarize
    from harness.jobs import run_group_here
    from harness.registry import resolve

    base = resolve("lm", {"preset": "tiny", "device": "cpu", "threads": 1, "forward": "per_sequence"})
    records = run_group_here("agree", {"per_sequence": base, "batched": base.replace(forward="batched")},
                             rounds=12, warmup_rounds=2)
    summary = summarize(records, "per_sequence")
    comparison = compare([records[0]], [records[1]])
    est = comparison.estimate
    assert est.has_interval and summary.at["batched", "speedup"] == est.ratio
    for threshold in (est.ci_low * 0.9, (est.ci_low + est.ci_high) / 2, est.ci_high * 1.1):
        (toml,) = gates.check([f"batched.speedup >= {threshold!r}"], summary, "per_sequence", KNOWN)
        plugin, message = gates.ratio_verdict(comparison, threshold)
        assert toml.passed == plugin, (threshold, toml, message)
    assert [gates.ratio_verdict(comparison, t)[0] for t in (est.ci_low * 0.9, est.ci_high * 1.1)] == [True, False]
