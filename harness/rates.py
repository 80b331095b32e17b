"""Every throughput of a measured window, derived from its raw totals: the one place a rate is computed.

A record keeps the window's raw totals (`Record.totals`): optimizer steps, micro-steps, samples, real and padded
tokens, window seconds and FLOPs. The engine, `harness.distributed.gather` (which adds ranks' totals and divides by
the slowest rank's window) and the analysis (which needs samples per step to scale step-time ratios) all call
`rates` or read the totals, so a rate is never rebuilt from another rate.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TOTAL_KEYS = ("measured_steps", "micro_steps", "samples", "real_tokens", "padded_tokens", "window_s", "flops")
"""measured_steps: optimizer steps in the window; micro_steps: forward/backward passes (steps x grad_accum);
real/padded tokens: 0 for workloads without tokens; flops: FLOPs of the window (None when not counted)."""


def rates(totals: Mapping[str, Any]) -> dict[str, float | None]:
    """The record's throughput metrics from its totals (None where a total is missing or the window is empty)."""
    window = totals.get("window_s") or 0.0
    steps = totals.get("measured_steps")
    real, padded = totals.get("real_tokens") or 0, totals.get("padded_tokens") or 0

    def per_s(x: float | None) -> float | None:
        return x / window if x is not None and window > 0 else None

    has_tokens = real > 0
    flops = totals.get("flops")
    return {
        "measured_steps": steps, "train_wall_s": window,
        "steps_per_s": per_s(steps), "it_per_s": per_s(totals.get("micro_steps")),
        "samples_per_s": per_s(totals.get("samples")),
        "tokens_per_s": per_s(real) if has_tokens else None,
        "padded_tokens_per_s": per_s(padded) if has_tokens else None,
        "real_tokens_per_step": real / steps if has_tokens and steps else None,
        "padded_tokens_per_step": padded / steps if has_tokens and steps else None,
        "achieved_tflops": per_s(flops) / 1e12 if flops and window > 0 else None,
    }


def totals_from_metrics(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """The totals of a record written before records kept them (schema < 5): rates times the window, exact up to
    float rounding."""
    window = metrics.get("train_wall_s") or 0.0

    def count(rate: str) -> float | None:
        x = metrics.get(rate)
        return round(x * window) if x is not None and window else None

    tflops = metrics.get("achieved_tflops")
    steps, per_step = metrics.get("measured_steps"), metrics.get("samples_per_step")
    samples = count("samples_per_s")
    if samples is None and steps and per_step:  # no window kept: the counted step's samples, every step
        samples = steps * per_step
    return {"measured_steps": steps, "micro_steps": count("it_per_s"), "samples": samples,
            "real_tokens": count("tokens_per_s") or 0,
            "padded_tokens": count("padded_tokens_per_s") or 0, "window_s": window,
            "flops": tflops * 1e12 * window if tflops and window else None}


def samples_per_step(totals: Mapping[str, Any]) -> float:
    """Samples per optimizer step over the window (NaN without both totals)."""
    samples, steps = totals.get("samples"), totals.get("measured_steps")
    return float(samples) / float(steps) if samples and steps else float("nan")
