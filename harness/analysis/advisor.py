"""The advisor: bottleneck and comparison rules over one run (a Record, a summary row, or a dict of
measurements), each finding carrying the numbers it was decided on and what to try.

Rules: input-bound, launch/host-bound, duplicate forward, padding waste, AMP slower than fp32, it/s
compared across batch sizes, a speedup that cost quality (seed 000), memory near capacity, a faster
batch_size x grad_accum at the same effective batch, torch.compile's break-even (or never); for data-parallel
runs, communication-bound and stragglers. Rules that
compare against the baseline need `baseline=` (the baseline's row); the others read the run alone.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from harness.analysis import decision
from harness.analysis.stats import MIN_REPEATS, RatioEstimate
from harness.knobs import global_batch
from harness.results import PHASE_NAMES, Record

INPUT_BOUND_FRACTION = 0.20
"""Data wait above this share of a step: the loader, not the model, sets the pace."""
LOW_GPU_UTIL_PCT = 50.0
SHORT_STEP_MS = 50.0
KERNEL_LAUNCH_US = 5.0
"""Typical host cost of one CUDA kernel launch; launches x this >= half a step means launch-bound."""
PADDING_RATIO = 1.3
MEMORY_FRACTION = 0.90
MIN_SPEEDUP = 1.05
COMMUNICATION_PCT = 25.0
"""Data-parallel runs: gradient all-reduce time not overlapped with compute above this share of a step."""
SKEW_PCT = 10.0
"""Data-parallel runs: slowest minus fastest rank's compute per step above this share of a step."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One diagnosis: which rule fired, what to do, and the measurements behind it."""

    rule: str
    message: str
    evidence: str


def facts(obj: Record | pd.Series | Mapping[str, Any]) -> dict[str, Any]:
    """A flat {name: value} view of a Record, a summary row or a plain mapping."""
    if isinstance(obj, Record):
        out: dict[str, Any] = dict(obj.metrics)
        out.update({f"phase_ms_{p}": v for p, v in obj.phase_ms.items()})
        out.update(obj.quality)
        out.update(config=dict(obj.config), env=dict(obj.env), variant=obj.variant)
        return out
    if isinstance(obj, pd.Series):
        return {"variant": obj.name, **obj.to_dict()}
    return dict(obj)


def _num(f: Mapping[str, Any], key: str) -> float:
    value = f.get(key)
    try:
        value = float(value)
    except (TypeError, ValueError):
        return math.nan
    return value


def _on_gpu(f: Mapping[str, Any]) -> bool:
    cfg, env = f.get("config") or {}, f.get("env") or {}
    return cfg.get("device") == "cuda" or (cfg.get("device") != "cpu" and bool(env.get("gpu_name"))) \
        or math.isfinite(_num(f, "gpu_util_pct"))


def _input_bound(f: Mapping[str, Any]) -> Finding | None:
    phases = {p: _num(f, f"phase_ms_{p}") for p in PHASE_NAMES}
    total = sum(v for v in phases.values() if math.isfinite(v))
    data = phases["data"]
    if not (total > 0 and math.isfinite(data)) or data / total <= INPUT_BOUND_FRACTION:
        return None
    cfg = f.get("config") or {}
    tips = []
    if not cfg.get("num_workers"):
        tips.append("num_workers=2 or more (loading runs in the training process now)")
    else:
        tips.append(f"more workers than num_workers={cfg['num_workers']} if cores allow")
        if not cfg.get("persistent_workers"):
            tips.append("persistent_workers=true")
        tips.append("a higher prefetch_factor")
    if _on_gpu(f) and not cfg.get("pin_memory"):
        tips.append("pin_memory=true")
    return Finding("input_bound", "input-bound: the step waits for data; try " + ", ".join(tips),
                   f"data wait {data:.2f} ms of a {total:.2f} ms step ({data / total:.0%} > "
                   f"{INPUT_BOUND_FRACTION:.0%})")


def _launch_bound(f: Mapping[str, Any], launches_per_step: float | None) -> Finding | None:
    if not _on_gpu(f):
        return None
    step = _num(f, "step_ms_median") if math.isfinite(_num(f, "step_ms_median")) else _num(f, "step_ms")
    util = _num(f, "gpu_util_pct")
    launches = launches_per_step if launches_per_step is not None else _num(f, "kernel_launches_per_step")
    evidence = []
    if math.isfinite(util) and math.isfinite(step) and util < LOW_GPU_UTIL_PCT and step < SHORT_STEP_MS:
        evidence.append(f"GPU util {util:.0f}% < {LOW_GPU_UTIL_PCT:.0f}% with {step:.2f} ms steps")
    if math.isfinite(launches) and math.isfinite(step) and launches * KERNEL_LAUNCH_US / 1000 >= 0.5 * step:
        evidence.append(f"{launches:.0f} kernel launches per step x ~{KERNEL_LAUNCH_US:.0f} us = "
                        f"{launches * KERNEL_LAUNCH_US / 1000:.1f} ms of a {step:.2f} ms step")
    if not evidence:
        return None
    return Finding("launch_bound", "launch/host-bound: the GPU idles between small kernels; try a larger "
                   "batch_size, a batched/parallel forward mode, or compile=true (CUDA graphs)", "; ".join(evidence))


def _duplicate_forward(f: Mapping[str, Any]) -> Finding | None:
    calls = _num(f, "forward_calls_per_step")
    if not (math.isfinite(calls) and calls > 1.0 + 1e-9):
        return None
    return Finding("duplicate_forward", "duplicate forward: the model runs more than once per micro-step; compute "
                   "the loss from the outputs you already have (seed 004's 15x bug)",
                   f"forward_calls_per_step = {calls:g} (expected 1)")


def _padding_waste(f: Mapping[str, Any]) -> Finding | None:
    real, padded = _num(f, "real_tokens_per_step"), _num(f, "padded_tokens_per_step")
    if not (math.isfinite(real) and math.isfinite(padded)) or real <= 0:
        real, padded = _num(f, "tokens_per_s"), _num(f, "padded_tokens_per_s")
    if not (math.isfinite(real) and math.isfinite(padded) and real > 0) or padded / real <= PADDING_RATIO:
        return None
    cfg = f.get("config") or {}
    tips = [t for t, on in (("bucket_by_length=true", cfg.get("bucket_by_length")),
                            ("max_length chunking", cfg.get("max_length"))) if not on]
    return Finding("padding_waste", "padding waste: a large share of computed tokens is padding; try "
                   + (" or ".join(tips) or "smaller buckets or shorter chunks"),
                   f"padded/real tokens = {padded / real:.2f} > {PADDING_RATIO}")


def _speed(f: Mapping[str, Any]) -> decision.Decision:
    """The row's speedup over the baseline, decided (`decision.decide`, the speed margin)."""
    est = RatioEstimate(_num(f, "speedup"), _num(f, "speedup_ci_low"), _num(f, "speedup_ci_high"),
                        int(_num(f, "speedup_pairs")) if math.isfinite(_num(f, "speedup_pairs")) else 0,
                        str(f.get("speedup_method") or "t"), int(_num(f, "speedup_need"))
                        if math.isfinite(_num(f, "speedup_need")) else MIN_REPEATS)
    return decision.decide(est, margin=decision.EQUIVALENCE_MARGIN_PCT / 100)


def _speedup_text(f: Mapping[str, Any]) -> str:
    return f"speedup {_speed(f).text()}"


def _amp_slower(f: Mapping[str, Any], base: Mapping[str, Any] | None) -> Finding | None:
    amp = (f.get("config") or {}).get("amp", "off")
    base_amp = ((base or {}).get("config") or {}).get("amp", "off")
    if base is None or amp == "off" or base_amp != "off" or _speed(f).outcome != decision.WORSE:
        return None
    where = "a GPU" if _on_gpu(f) else "a CPU (no native fp16/bf16 matmul units: autocast adds casts)"
    return Finding("amp_slower", f"AMP ({amp}) is slower than fp32 on {where}; keep amp=off here, or use it "
                   "only on GPUs with tensor cores", _speedup_text(f) + " vs the fp32 baseline")


def _it_per_s_across_batch(f: Mapping[str, Any], base: Mapping[str, Any] | None) -> Finding | None:
    if base is None:
        return None
    mine, theirs = _num(f, "samples_per_step"), _num(base, "samples_per_step")
    if not (math.isfinite(mine) and math.isfinite(theirs)) or abs(mine - theirs) < 1e-9:
        return None
    it_ratio = _num(f, "it_per_s") / _num(base, "it_per_s")
    sps_ratio = _num(f, "samples_per_s") / _num(base, "samples_per_s")
    return Finding("it_per_s_across_batch_sizes", "it/s is not comparable across batch sizes: one step holds "
                   "a different number of samples; compare samples/s (seed 003 quoted it/s)",
                   f"samples per step {theirs:g} -> {mine:g}: it/s x{it_ratio:.2f} but samples/s x{sps_ratio:.2f}")


def _faster(f: Mapping[str, Any]) -> bool:
    """Decided faster than the baseline (`decision.decide`)."""
    return _speed(f).outcome == decision.BETTER


def _same_effective_batch(f: Mapping[str, Any], base: Mapping[str, Any] | None) -> Finding | None:
    """A batch_size x grad_accum with the baseline's product that is resolved faster: the same gradient, sooner."""
    if base is None or not f.get("changed") or set(f["changed"]) - {"batch_size", "grad_accum"} or not _faster(f):
        return None
    cfg, bcfg = f.get("config") or {}, base.get("config") or {}
    b, a = int(cfg.get("batch_size", 0)), int(cfg.get("grad_accum", 1))
    b0, a0 = int(bcfg.get("batch_size", 0)), int(bcfg.get("grad_accum", 1))
    if global_batch(cfg) != global_batch(bcfg):
        return None
    checked = {"pass": "equivalence checked", "fail": "but the equivalence check FAILED: find out why first"}.get(
        str(f.get("equiv_status", "")), "equivalence not checked")
    fits = " fits and" if b > b0 else ""
    return Finding("faster_at_same_effective_batch",
                   f"of the splits this experiment measured, batch {b} x {a}{fits} is x{_num(f, 'speedup'):.2f} "
                   f"faster than your {b0} x {a0} at the same "
                   f"effective batch {global_batch(cfg)}: the same gradient per optimizer step ({checked}); switch to "
                   f"batch_size={b} grad_accum={a}", _speedup_text(f))


def _compile_break_even(f: Mapping[str, Any], base: Mapping[str, Any] | None) -> Finding | None:
    """torch.compile against an uncompiled baseline: after how many steps compiling pays off, or never."""
    compile_s, steps = _num(f, "compile_s"), _num(f, "break_even_steps")
    if base is None or not math.isfinite(compile_s) or math.isfinite(_num(base, "compile_s")):
        return None
    if not _faster(f):
        if not math.isfinite(_num(f, "speedup_ci_high")):
            return None  # no interval: nothing to claim either way
        return Finding("compile_never_pays_off", f"torch.compile is not measurably faster per step here, so its "
                       f"{compile_s:.1f} s of compiling never pays back; keep compile=false on this device "
                       "(try it where kernels dominate: a GPU, larger batches)", _speedup_text(f))
    if not math.isfinite(steps):
        return None
    return Finding("compile_break_even", f"torch.compile pays off after {math.ceil(steps):,} optimizer steps "
                   f"({compile_s:.1f} s of compiling, {_num(base, 'step_ms') - _num(f, 'step_ms'):.2f} ms saved per "
                   "step); worth it for runs longer than that", _speedup_text(f))


def _quality_loss(f: Mapping[str, Any], primary: str | None, higher_is_better: bool,
                  margin: float | None = None) -> Finding | None:
    from harness.analysis.summary import quality_delta

    if not primary:
        return None
    speed = _speed(f)
    value, delta = _num(f, primary), _num(f, f"{primary}_delta")
    # a speedup without an interval (one run, a plain dict) still raises the question, and says it is unresolved
    faster = speed.outcome == decision.BETTER or (speed.insufficient and speed.estimate.ratio >= MIN_SPEEDUP)
    if not (faster and math.isfinite(value) and math.isfinite(delta)):
        return None
    base_value = value - delta
    quality = decision.quality_decision(quality_delta(f, primary), base_value, higher_is_better=higher_is_better,
                                        margin=margin)
    worse_point = (-delta if higher_is_better else delta) > quality.margin
    if quality.outcome != decision.WORSE and not (quality.insufficient and worse_point):
        return None
    seeds = "" if quality.resolved else "; one seed, so unresolved: replicate the quality runs over 3 or more seeds"
    return Finding("speedup_with_quality_loss", "the speedup came with a quality loss (seed 000's 2.3x that cost "
                   "39 points of accuracy): check that the variant computes the same model, then tune it "
                   f"(lr, warmup) before adopting it{seeds}",
                   f"{_speedup_text(f)}; {primary} {base_value:.4g} -> {value:.4g}: {quality.text()}")


def _memory_near_capacity(f: Mapping[str, Any], capacity_gib: float | None) -> Finding | None:
    env = f.get("env") or {}
    gpu_peak = max(_num(f, "cuda_peak_reserved_gib"), _num(f, "cuda_peak_allocated_gib"))
    if math.isfinite(gpu_peak) and gpu_peak > 0:
        peak, cap, what = gpu_peak, capacity_gib or _num(env, "gpu_mem_total_gib"), "GPU memory"
    else:
        peak, cap, what = _num(f, "peak_rss_gib"), capacity_gib or _num(env, "ram_total_gib"), "host RAM"
    if not (math.isfinite(peak) and cap and math.isfinite(cap)) or peak / cap <= MEMORY_FRACTION:
        return None
    return Finding("memory_near_capacity", f"{what} is nearly full: one larger batch or sequence will OOM; try "
                   "grad_checkpointing=true, or a smaller batch_size with grad_accum to keep the effective batch",
                   f"peak {peak:.2f} GiB of {cap:.2f} GiB ({peak / cap:.0%} > {MEMORY_FRACTION:.0%})")


def _communication_bound(f: Mapping[str, Any]) -> Finding | None:
    share = _num(f, "communication_pct")
    if not (math.isfinite(share) and share > COMMUNICATION_PCT):
        return None
    ranks = _num(f, "world_size")
    bw = _num(f, "allreduce_busbw_gbps")
    return Finding("communication_bound", "communication-bound: the ranks wait for the gradient all-reduce after "
                   "their compute is done; give each rank more compute per gradient byte (a larger batch_size per "
                   "rank, or grad_accum: one all-reduce per optimizer step), or a faster interconnect (NCCL over "
                   "NVLink/InfiniBand instead of gloo over TCP)",
                   f"communication {share:.0f}% of a step > {COMMUNICATION_PCT:.0f}%"
                   + (f" with {ranks:g} ranks" if math.isfinite(ranks) else "")
                   + (f"; all-reduce bus bandwidth {bw:.2f} GB/s" if math.isfinite(bw) else ""))


def _stragglers(f: Mapping[str, Any]) -> Finding | None:
    skew, skew_ms = _num(f, "rank_skew_pct"), _num(f, "rank_skew_ms")
    if not (math.isfinite(skew) and skew > SKEW_PCT):
        return None
    return Finding("stragglers", "stragglers: one rank computes longer per step and every other rank waits for it "
                   "in the all-reduce; even out the ranks' work (equal real tokens per rank: bucketing or packing), "
                   "give each rank its own cores (threads=0 shares them) and its own data workers",
                   f"rank skew {skew_ms:.1f} ms per step = {skew:.0f}% of a step > {SKEW_PCT:.0f}%")


def advise(record_or_summary_row: Record | pd.Series | Mapping[str, Any], *,
           baseline: Record | pd.Series | Mapping[str, Any] | None = None, primary_metric: str | None = None,
           higher_is_better: bool = True, capacity_gib: float | None = None,
           kernel_launches_per_step: float | None = None, quality_margin: float | None = None) -> list[Finding]:
    """Every rule's finding for one run; comparison rules need the baseline's row/record."""
    f = facts(record_or_summary_row)
    base = None if baseline is None else facts(baseline)
    if base is not None and base.get("variant") == f.get("variant"):
        base = None  # the baseline is not compared with itself
    found = [
        _input_bound(f), _launch_bound(f, kernel_launches_per_step), _duplicate_forward(f), _padding_waste(f),
        _amp_slower(f, base), _it_per_s_across_batch(f, base),
        _quality_loss(f, primary_metric, higher_is_better, quality_margin),
        _memory_near_capacity(f, capacity_gib), _same_effective_batch(f, base), _compile_break_even(f, base),
        _communication_bound(f), _stragglers(f),
    ]
    return [x for x in found if x is not None]


def advise_summary(summary: pd.DataFrame) -> dict[str, list[Finding]]:
    """Findings per variant of a `summarize` DataFrame (context from its attrs). Of the batch splits faster at
    the same effective batch only the fastest is advised (the report ranks them all)."""
    from harness.analysis.summary import same_effective_batch

    baseline = summary.attrs.get("baseline", summary.index[0])
    base_row = summary.loc[baseline]
    found = {v: advise(row, baseline=base_row, primary_metric=summary.attrs.get("primary_metric"),
                       higher_is_better=summary.attrs.get("higher_is_better", True),
                       quality_margin=summary.attrs.get("quality_margin"))
             for v, row in summary.iterrows()}
    fastest = (same_effective_batch(summary) or [None])[0]
    return {v: [f for f in fs if f.rule != "faster_at_same_effective_batch" or v == fastest]
            for v, fs in found.items()}
