"""The advisor: every rule fires on a run built to trigger it and stays quiet on one that must not."""

import pytest

from harness.analysis import advise, summarize
from harness.analysis.advisor import advise_summary
from tests.fixtures.synthetic import ENV, base_config, demo_records, speed_record

GPU_ENV = {**ENV, "gpu_name": "NVIDIA H100 80GB HBM3", "gpu_mem_total_gib": 80.0}
BALANCED = {"data": 0.05, "forward": 0.35, "loss": 0.05, "backward": 0.4, "optimizer": 0.1, "other": 0.05}


def rules(findings):
    return {f.rule for f in findings}


def test_clean_run_triggers_nothing():
    assert advise(speed_record("baseline", 0)) == []


def test_input_bound():
    starved = speed_record("v", 0, phase_frac={**BALANCED, "data": 0.5, "forward": 0.1, "backward": 0.1})
    (f,) = advise(starved)
    assert f.rule == "input_bound" and "num_workers=2" in f.message and "> 20%" in f.evidence
    with_workers = speed_record("v", 0, config=base_config(num_workers=2), phase_frac={**BALANCED, "data": 0.3,
                                                                                        "forward": 0.15})
    assert "persistent_workers=true" in advise(with_workers)[0].message
    assert "input_bound" not in rules(advise(speed_record("v", 0, phase_frac={**BALANCED, "data": 0.15})))


def test_launch_bound_on_gpu_only():
    cuda = base_config(device="cuda")
    idle = speed_record("v", 0, config=cuda, env=GPU_ENV, gpu_util_pct=20.0)  # 20 ms steps, 20% util
    assert "launch_bound" in rules(advise(idle))
    busy = speed_record("v", 0, config=cuda, env=GPU_ENV, gpu_util_pct=95.0)
    assert "launch_bound" not in rules(advise(busy))
    # kernel launches: 3000 x 5 us = 15 ms of a 20 ms step
    (f,) = [f for f in advise(busy, kernel_launches_per_step=3000) if f.rule == "launch_bound"]
    assert "3000 kernel launches" in f.evidence
    assert "launch_bound" not in rules(advise(busy, kernel_launches_per_step=100))
    cpu = speed_record("v", 0, gpu_util_pct=None)
    assert "launch_bound" not in rules(advise(cpu, kernel_launches_per_step=3000))


def test_duplicate_forward():
    assert rules(advise(speed_record("v", 0, forward_calls_per_step=2.0))) == {"duplicate_forward"}
    assert advise(speed_record("v", 0, forward_calls_per_step=1.0)) == []


def test_padding_waste():
    (f,) = advise(speed_record("v", 0, real_tokens_per_step=100.0, padded_tokens_per_step=160.0))
    assert f.rule == "padding_waste" and "1.60" in f.evidence and "bucket_by_length" in f.message
    assert advise(speed_record("v", 0, real_tokens_per_step=100.0, padded_tokens_per_step=125.0)) == []
    bucketed = speed_record("v", 0, config=base_config(bucket_by_length=True), real_tokens_per_step=100.0,
                            padded_tokens_per_step=160.0)
    assert "bucket_by_length" not in advise(bucketed)[0].message  # already on: suggest the other remedy


@pytest.fixture(scope="module")
def demo():
    s = summarize(demo_records(), "baseline", primary_metric="accuracy", higher_is_better=True)
    return s, advise_summary(s)


def test_amp_slower_than_fp32(demo):
    s, found = demo
    assert "amp_slower" in rules(found["amp"])
    assert "amp_slower" not in rules(found["batched"])  # faster, and not an amp change
    faster_amp = s.loc["amp"].copy()
    faster_amp["speedup"], faster_amp["speedup_ci_low"], faster_amp["speedup_ci_high"] = 1.4, 1.3, 1.5
    assert "amp_slower" not in rules(advise(faster_amp, baseline=s.loc["baseline"]))


def test_it_per_s_across_batch_sizes(demo):
    _, found = demo
    (f,) = [f for f in found["bs16"] if f.rule == "it_per_s_across_batch_sizes"]
    assert "it/s x0.80 but samples/s x1.60" in f.evidence
    assert all("it_per_s_across_batch_sizes" not in rules(found[v]) for v in ("batched", "amp", "lossy"))


def test_speedup_with_quality_loss(demo):
    s, found = demo
    (f,) = [f for f in found["lossy"] if f.rule == "speedup_with_quality_loss"]
    assert "accuracy 0.69 -> 0.3" in f.evidence
    assert "speedup_with_quality_loss" not in rules(found["batched"])  # same accuracy, faster
    # a lower-is-better primary metric: mae rose 0.53 -> 1.08, also a loss
    assert "speedup_with_quality_loss" in rules(advise(s.loc["lossy"], primary_metric="mae",
                                                       higher_is_better=False))


def test_memory_near_capacity():
    cuda = base_config(device="cuda")
    full = speed_record("v", 0, config=cuda, env=GPU_ENV, gpu_util_pct=95.0, cuda_peak_reserved_gib=76.0)
    (f,) = advise(full)
    assert f.rule == "memory_near_capacity" and "76.00 GiB of 80.00 GiB" in f.evidence
    assert "grad_checkpointing" in f.message
    roomy = speed_record("v", 0, config=cuda, env=GPU_ENV, gpu_util_pct=95.0, cuda_peak_reserved_gib=40.0)
    assert advise(roomy) == []
    # host RAM on a CPU run, capacity given by the caller
    assert rules(advise(speed_record("v", 0, peak_rss_gib=7.5), capacity_gib=8.0)) == {"memory_near_capacity"}
    assert advise(speed_record("v", 0, peak_rss_gib=1.5), capacity_gib=8.0) == []


def test_accepts_plain_mapping():
    found = advise({"forward_calls_per_step": 3, "config": {}, "env": {}})
    assert rules(found) == {"duplicate_forward"}


def _row(batch: int, accum: int, **kw):
    return {"config": {"batch_size": batch, "grad_accum": accum}, "env": {}, "variant": f"{batch}x{accum}", **kw}


def test_faster_at_the_same_effective_batch():
    base = _row(16, 4, step_ms=100.0)
    fast = _row(64, 1, changed={"batch_size": (16, 64), "grad_accum": (4, 1)}, speedup=1.3, speedup_ci_low=1.2,
                speedup_ci_high=1.4, equiv_status="pass")
    (f,) = advise(fast, baseline=base)
    assert f.rule == "faster_at_same_effective_batch"
    assert ("of the splits this experiment measured, batch 64 x 1 fits and is x1.30 faster than your 16 x 4 at the "
            "same effective batch 64") in f.message
    assert "equivalence checked" in f.message
    unresolved = {**fast, "speedup_ci_low": 0.98}
    assert "faster_at_same_effective_batch" not in rules(advise(unresolved, baseline=base))
    other_product = {**fast, "config": {"batch_size": 32, "grad_accum": 1}}  # effective 32, not 64
    assert "faster_at_same_effective_batch" not in rules(advise(other_product, baseline=base))
    plus_amp = {**fast, "changed": {**fast["changed"], "amp": ("off", "bf16")}}  # not only the batch split
    assert "faster_at_same_effective_batch" not in rules(advise(plus_amp, baseline=base))


def test_compile_break_even_or_never():
    base = {"config": {}, "env": {}, "variant": "baseline", "step_ms": 100.0}
    pays = {"config": {"compile": True}, "env": {}, "variant": "compiled", "compile_s": 30.0, "step_ms": 70.0,
            "break_even_steps": 1000.0, "speedup": 1.43, "speedup_ci_low": 1.4, "speedup_ci_high": 1.46}
    (f,) = advise(pays, baseline=base)
    assert f.rule == "compile_break_even" and "pays off after 1,000 optimizer steps" in f.message
    assert "30.00 ms saved per step" in f.message
    never = {**pays, "step_ms": 110.0, "break_even_steps": float("inf"), "speedup": 0.91, "speedup_ci_low": 0.88,
             "speedup_ci_high": 0.94}
    (g,) = advise(never, baseline=base)
    assert g.rule == "compile_never_pays_off" and "never pays back" in g.message
    # an interval that includes 1: no per-step saving resolved, so no break-even either
    assert [f.rule for f in advise({**pays, "speedup_ci_low": 0.99}, baseline=base)] == ["compile_never_pays_off"]
    no_interval = {**pays, "speedup_ci_low": float("nan"), "speedup_ci_high": float("nan")}
    assert advise(no_interval, baseline=base) == []  # no interval: nothing to claim either way
