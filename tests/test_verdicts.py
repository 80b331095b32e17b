"""Reports that decide: the unit of a speedup, the verdict rule, activation memory on known loads, quality
intervals across seeds, and a report that carries its records and re-renders byte for byte."""

import dataclasses
import json
import math
import shutil

import pytest
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.analysis import decision, speedup
from harness.analysis.stats import RatioEstimate, paired_difference
from harness.analysis.summary import summarize
from harness.probes.counters import SavedTensors
from harness.report import write_index, write_report
from harness.report.verdicts import decision_rows, quality_metric
from harness.results import find_results, load_records
from tests.fixtures.synthetic import RECORDED_DIR, base_config, quality_record, speed_record


def _est(ratio: float, lo: float, hi: float, n: int = 5) -> RatioEstimate:
    return RatioEstimate(ratio, lo, hi, n, "t", 3)


FASTER = decision.decide(_est(1.5, 1.4, 1.6), margin=0.03)
SLOWER = decision.decide(_est(0.7, 0.65, 0.75), margin=0.03)
SAME = decision.decide(_est(1.0, 0.99, 1.01), margin=0.03)
OPEN = decision.decide(_est(1.05, 0.95, 1.16), margin=0.03)


def _quality(delta: float, lo: float, hi: float, n: int = 3) -> decision.Decision:
    return decision.quality_decision(_est(delta, lo, hi, n), 0.8)


@pytest.mark.parametrize("speed, same, quality, memory, word", [
    (FASTER, True, None, None, decision.ADOPT),  # faster, same function
    (FASTER, None, None, None, decision.UNRESOLVED),  # a quality knob without a quality run
    (FASTER, None, _quality(-0.001, -0.004, 0.002), None, decision.ADOPT),  # quality equivalent within 2%
    (FASTER, None, _quality(-0.3, -0.35, -0.25), None, decision.REJECT),  # seed 000: faster, 30 points worse
    (FASTER, None, _quality(-0.3, math.nan, math.nan, 1), None, decision.UNRESOLVED),  # one seed: no interval
    (FASTER, False, None, None, decision.REJECT),  # an exact knob that changed the function
    (SLOWER, True, None, None, decision.REJECT),
    (SAME, True, None, None, decision.REJECT),  # no gain
    (SAME, True, None, 0.5, decision.ADOPT),  # same speed, half the activations
    (OPEN, True, None, None, decision.UNRESOLVED),
])
def test_verdict_rule(speed, same, quality, memory, word):
    v = decision.verdict(speed, same_function=same, quality=quality, memory_ratio=memory)
    assert v.word == word, v.why
    assert v.why


def test_paired_difference_interval_on_known_values():
    d = paired_difference({0: 0.5, 1: 0.6, 2: 0.7}, {0: 0.4, 1: 0.5, 2: 0.6})
    assert d.ratio == pytest.approx(0.1) and d.ci_low == pytest.approx(0.1) and d.ci_high == pytest.approx(0.1)
    d = paired_difference({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})
    assert d.ratio == pytest.approx(2.0)
    assert d.ci_high - d.ratio == pytest.approx(4.303 * 1.0 / math.sqrt(3), rel=1e-3)  # t(2) x sd / sqrt(n)
    assert not paired_difference({0: 1.0, 1: 2.0}, {0: 0.0, 1: 0.0}).has_interval  # 2 seeds: insufficient


def _with_tokens(r, tokens_per_sample: float):
    """A speed record whose samples each hold `tokens_per_sample` real tokens (a chunk-length change)."""
    totals = dict(r.totals, real_tokens=r.totals["samples"] * tokens_per_sample)
    metrics = dict(r.metrics, tokens_per_s=r.metrics["samples_per_s"] * tokens_per_sample)
    return dataclasses.replace(r, totals=totals, metrics=metrics)


def test_speedup_counts_tokens_when_a_sample_changes_size():
    # chunk64 runs 2x the samples/s of the baseline, but each sample holds 25 tokens against 40: x1.25 the work
    records = []
    for rep in range(4):
        records.append(_with_tokens(speed_record("baseline", rep), 40.0))
        records.append(_with_tokens(speed_record("chunk64", rep, speedup=2.0,
                                                 config=base_config(max_length=64)), 25.0))
        records.append(_with_tokens(speed_record("bucketed", rep, speedup=1.5,
                                                 config=base_config(bucket_by_length=True)), 40.0))
    assert speedup.work_unit(records, "baseline") == "tokens"
    s = summarize(records, "baseline")
    assert s.attrs["work_unit"] == "tokens"
    assert s.at["chunk64", "speedup"] == pytest.approx(1.25)
    assert s.at["bucketed", "speedup"] == pytest.approx(1.5)  # same tokens per sample: the same ratio either way
    same = [r for r in records if r.variant != "chunk64"]
    assert speedup.work_unit(same, "baseline") == "samples"
    assert summarize(same, "baseline").at["bucketed", "speedup"] == pytest.approx(1.5)


def _saved_bytes(ckpt: bool, micro_steps: int = 2) -> int:
    torch.manual_seed(0)
    model = nn.Sequential(*[nn.Sequential(nn.Linear(64, 64), nn.ReLU()) for _ in range(4)])
    x = torch.randn(32, 64)
    with SavedTensors(model) as saved:
        for _ in range(micro_steps):
            h = x
            for block in model:
                h = checkpoint(block, h, use_reentrant=False) if ckpt else block(h)
            h.sum().backward()
    return saved.peak_bytes


def test_saved_tensors_on_a_known_model():
    act = 32 * 64 * 4  # one activation of the stack, float32
    # each Linear saves its input, each ReLU its output (the next Linear's input, counted once): x + 4 outputs;
    # parameters are not activations; a second micro-step does not add to the first
    assert _saved_bytes(False) == 5 * act
    assert _saved_bytes(False, micro_steps=1) == 5 * act
    # checkpointing keeps only each block's input
    assert _saved_bytes(True) == 4 * act


def test_quality_metric_skips_a_metric_at_zero_everywhere():
    records = [speed_record(v, rep) for rep in range(3) for v in ("baseline", "fast")]
    records += [quality_record("baseline", final={"grid_acc": 0.0, "cell_acc": 0.235}),
                quality_record("fast", final={"grid_acc": 0.0, "cell_acc": 0.112})]
    s = summarize(records, "baseline", primary_metric="grid_acc", higher_is_better=True)
    assert quality_metric(s) == "cell_acc"
    (row,) = decision_rows(s, None)
    assert "grid_acc" not in row.quality_text and "cell_acc 0.235 → 0.112" in row.quality_text


def test_seeded_quality_runs_give_the_delta_an_interval():
    records = [speed_record(v, rep, speedup=1.0 if v == "baseline" else 2.0) for rep in range(3)
               for v in ("baseline", "fast")]
    for seed, (a, b) in enumerate([(0.80, 0.50), (0.82, 0.51), (0.79, 0.49)]):
        records += [dataclasses.replace(quality_record("baseline", final={"accuracy": a}), repeat=seed),
                    dataclasses.replace(quality_record("fast", final={"accuracy": b}), repeat=seed)]
    s = summarize(records, "baseline", primary_metric="accuracy", higher_is_better=True)
    assert s.at["fast", "quality_seeds"] == 3
    assert s.at["fast", "accuracy_delta_ci_high"] < 0
    (row,) = decision_rows(s, None)
    assert row.quality.outcome == decision.WORSE and row.verdict.word == decision.REJECT


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("decide")
    shutil.copytree(RECORDED_DIR, root / "results")
    first = write_report(root / "results", root / "reports" / "demo").parent
    again = write_report(find_results(first), root / "again").parent
    write_index(root / "reports")
    return root, first, again


def test_decision_table_comes_first(rendered):
    _, first, _ = rendered
    text = (first / "README.md").read_text()
    assert text.index("## What it buys, what it costs") < text.index("## Key changes")
    assert "| Variant | changes | speed (samples/s) | quality | memory | verdict |" in text
    assert "**❌ reject**" in text  # the duplicate forward is decided slower
    assert "unmeasured" in text  # bs16: a quality knob without a quality run


def test_report_carries_its_records_and_rerenders_identically(rendered):
    root, first, again = rendered
    assert find_results(first) == first / "results"
    assert len(load_records(first / "results")) == len(load_records(root / "results"))
    assert (first / "results" / "records.jsonl.gz").is_file() and not (first / "results" / "records.jsonl").exists()
    for name in ("README.md", "report.json", "throughput.png", "phases.png", "resources.png", "quality.png"):
        assert (first / name).read_bytes() == (again / name).read_bytes(), name
    for path in (first / "README.md", first / "report.json", root / "reports" / "README.md"):
        assert str(root) not in path.read_text(), path  # no machine paths


def test_report_json_and_index_carry_commit_gates_and_verdicts(rendered):
    root, first, _ = rendered
    meta = json.loads((first / "report.json").read_text())
    assert meta["commit"] == "0123456789"
    assert meta["variants"]["duplicate"]["decision"]["verdict"] == decision.REJECT
    assert meta["variants"]["batched"]["config"]["forward"] == "batched"
    assert meta["variants"]["batched"]["tokens_per_s"] > 0
    index = (root / "reports" / "README.md").read_text()
    assert "| Experiment | Headline | gates | commit | when | device |" in index and "`0123456789`" in index


def test_short_windows_are_warned(rendered):
    _, first, _ = rendered
    assert "shorter than the 0.5 s the intervals were calibrated on" in (first / "README.md").read_text()


@pytest.mark.parametrize("base,variant,outcome", [
    # QWK per seed, baseline and variant paired by seed; margin 0.01 QWK (the experiment's quality_margin)
    ({0: 0.630, 1: 0.640, 2: 0.635, 3: 0.633}, {0: 0.631, 1: 0.639, 2: 0.636, 3: 0.632}, decision.EQUIVALENT),
    ({0: 0.630, 1: 0.640, 2: 0.635, 3: 0.633}, {0: 0.580, 1: 0.592, 2: 0.588, 3: 0.583}, decision.WORSE),
    ({0: 0.630, 1: 0.640, 2: 0.635, 3: 0.633}, {0: 0.600, 1: 0.670, 2: 0.610, 3: 0.660}, decision.UNRESOLVED),
])
def test_quality_verdict_on_known_seed_samples_with_an_absolute_margin(base, variant, outcome) -> None:
    """Two one-sided tests by interval inclusion: "no change larger than +-0.01" only when the whole 95% interval of
    the paired difference lies inside the margin; worse when it lies below 0; unresolved when it straddles."""
    delta = paired_difference(variant, base)
    d = decision.quality_decision(delta, 0.635, margin=0.01)
    assert d.outcome == outcome
    assert d.margin == 0.01


def test_quality_margin_default_is_relative_and_an_absolute_one_replaces_it() -> None:
    delta = paired_difference({0: 0.801, 1: 0.799, 2: 0.800}, {0: 0.800, 1: 0.800, 2: 0.800})
    assert decision.quality_decision(delta, 0.8).margin == pytest.approx(0.02 * 0.8)
    assert decision.quality_decision(delta, 0.8, margin=0.001).outcome == decision.UNRESOLVED  # +-0.0025 wide
    assert decision.quality_decision(delta, 0.8, margin=0.01).outcome == decision.EQUIVALENT


def test_quality_runs_are_seeded_and_paired_by_seed(tmp_path) -> None:
    """quality_seeds = 3: every variant trains at seed + 0, 1, 2, seed by seed, as repeat 0, 1, 2 (the key the
    summary pairs the baseline and the variant by)."""
    from harness.experiment import load_experiments
    from harness.jobs import plan

    f = tmp_path / "q.toml"
    f.write_text('workload = "tests.toy:WORKLOAD"\nrepeats = 1\nquality_epochs = 1\nquality_seeds = 3\n'
                 'quality_margin = 0.05\nequivalence = false\n[baseline]\nseed = 7\n[variants.b]\nsleep_ms = 1.0\n')
    (exp,) = load_experiments(f)
    assert exp.quality_seeds == 3 and exp.quality_margin == 0.05
    quality = [j for j in plan(exp)[0] if j.phase == "quality"]
    assert [(j.repeat, j.variant, j.config["seed"]) for j in quality] == [
        (0, "baseline", 7), (0, "b", 7), (1, "baseline", 8), (1, "b", 8), (2, "baseline", 9), (2, "b", 9)]
    f.write_text(f.read_text().replace("quality_seeds = 3", "quality_seeds = 0"))
    with pytest.raises(ValueError, match="quality_seeds=0; use 1 or more"):
        load_experiments(f)


def test_quality_only_verdicts_follow_the_quality_decision() -> None:
    """An experiment with no speed runs decides on quality alone: worse rejects, better adopts, no change leaves it
    to the speed experiment, unresolved says what would resolve it."""
    def q(diffs: list[float]) -> decision.Decision:
        return decision.quality_decision(paired_difference(dict(enumerate(diffs)), dict.fromkeys(range(len(diffs)),
                                                                                               0.0)), 0.6, margin=0.01)

    assert decision.quality_only_verdict(q([-0.05, -0.06, -0.055])).word == decision.REJECT
    assert decision.quality_only_verdict(q([0.05, 0.06, 0.055])).word == decision.ADOPT
    same = decision.quality_only_verdict(q([0.001, -0.001, 0.0]))
    assert same.word == decision.UNRESOLVED and "no quality cost" in same.why
    assert decision.quality_only_verdict(q([0.05, -0.06, 0.01])).word == decision.UNRESOLVED
    assert decision.quality_only_verdict(None).word == decision.UNRESOLVED


def test_a_quality_only_report_headlines_each_quality_decision_and_the_per_metric_changes():
    """No speed runs: the headline is each variant's quality decision (a reused variant: the same function), and
    the Quality section leads with every metric's paired change; a metric equal in every run is stated once."""
    from harness.report.quality import metric_changes
    from harness.report.speed import headline

    records = []
    for seed, (a, b, m) in enumerate([(0.80, 0.50, 1.0), (0.82, 0.51, 1.1), (0.79, 0.49, 0.9)]):
        base = dataclasses.replace(quality_record("baseline", final={"accuracy": a, "mae": m, "ceiling": 0.9}),
                                   repeat=seed)
        same = dataclasses.replace(base, variant="same", reused_from="baseline",
                                   curve=tuple({**p, "wall_s": math.nan} for p in base.curve))
        records += [base, same, dataclasses.replace(
            quality_record("worse", final={"accuracy": b, "mae": m + 0.5, "ceiling": 0.9}), repeat=seed)]
    s = summarize(records, "baseline", primary_metric="accuracy", higher_is_better=True)
    text = headline(s)
    assert text.startswith("quality at equal epochs against `baseline` (accuracy 0.8, 3 seeds): ")
    assert "`same` the same function (equivalence passed)" in text and "`worse` worse -0.303 [" in text
    lines = "\n".join(metric_changes(s))
    assert "| Variant | seeds | Δ accuracy | Δ mae |" in lines  # ceiling: one value in every run
    assert "| `worse` | 3 | -0.303 [" in lines and "] worse | +0.5 [+0.5, +0.5] higher |" in lines
    assert "Same in every run (the data's, not a model's): ceiling 0.9." in lines
