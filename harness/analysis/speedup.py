"""The speedup of one variant over another, from their records: one function for the report, the
summary, TOML gates and the pytest plugin, so the same records always give the same figure.

- Records of a group (the engine's paired mode: both configs' steps interleaved in one process) are
  paired step by step: step ratio = baseline step time / variant step time, scaled by samples per
  step, on the chosen clock. With >= `stats.MIN_REPEATS` such processes the unit is the process (its
  geometric-mean ratio; Student t across processes); with fewer, the step pairs of the process(es)
  are resampled in blocks.
- Separate processes (a sweep's interleaved repeats) are paired by repeat on samples/s (wall clock).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.analysis import stats
from harness.rates import samples_per_step
from harness.results import Record

CLOCKS = ("auto", "wall", "cpu")
UNITS = {"samples": ("samples", "samples_per_s"), "tokens": ("real_tokens", "tokens_per_s")}
"""The unit a speedup counts work in: its total in `Record.window_totals` and its rate metric. Real tokens
where a variant changes what one sample holds (chunk length, padding): samples/s would count a shorter
chunk as more work."""


def pick_clock(clock: str, configs: Sequence[Mapping[str, Any]]) -> str:
    """Resolve ``auto``: CPU time when every config trains on the CPU in its own process, else wall time.

    CPU time leaves out the time other jobs held the cores, so on a shared runner step pairs on it are
    several times steadier (bench/measure_gate_rates.py); it misses work done elsewhere (DataLoader
    worker processes, the GPU, sleeps), so any of those means wall time.
    """
    if clock not in CLOCKS:
        raise ValueError(f"clock: bad value {clock!r}; allowed: {' | '.join(CLOCKS)}")
    if clock != "auto":
        return clock
    local = all(c.get("device") == "cpu" and not c.get("num_workers") for c in configs)
    return "cpu" if local else "wall"


def _resolved(r: Record) -> dict[str, Any]:
    cfg = dict(r.config)
    if cfg.get("device") == "auto":  # what "auto" picked on the machine that ran it
        cfg["device"] = "cuda" if r.env.get("gpu_name") else "cpu"
    return cfg


def _per_step(r: Record, unit: str) -> float:
    if unit == "samples":
        return samples_per_step(r.window_totals)
    total, steps = r.window_totals.get(UNITS[unit][0]), r.window_totals.get("measured_steps")
    return float(total) / float(steps) if total and steps else float("nan")


def _times(r: Record, clock: str) -> np.ndarray:
    return np.asarray(r.step_cpu_ms if clock == "cpu" else r.step_ms, dtype=float)


def step_ratios(base: Record, variant: Record, clock: str, unit: str = "samples") -> np.ndarray:
    """Per measured step of one process: the variant's throughput (in `unit`, `UNITS`) over the baseline's."""
    tb, tv = _times(base, clock), _times(variant, clock)
    n = min(tb.size, tv.size)
    scale = _per_step(variant, unit) / _per_step(base, unit)
    with np.errstate(divide="ignore", invalid="ignore"):
        return tb[:n] / tv[:n] * scale


def _same_process(a: Record, b: Record) -> bool:
    pa, pb = a.pairing, b.pairing
    return bool(pa and pb and pa.get("process") and pa.get("process") == pb.get("process"))


def _ok_by_repeat(records: Sequence[Record]) -> dict[int, Record]:
    out: dict[int, Record] = {}
    for r in records:
        if r.phase == "speed" and r.status == "ok" and (r.repeat not in out or r.attempt > out[r.repeat].attempt):
            out[r.repeat] = r  # a re-run (higher attempt) replaces a contended run
    return out


def throughput_by_repeat(runs: Mapping[int, Record], clock: str, unit: str = "samples") -> dict[int, float]:
    """Work (`unit`: samples or real tokens) per second of each repeat's run: over its wall window, or ("cpu")
    over its steps' CPU time."""
    total, rate = UNITS[unit]
    if clock == "cpu":
        return {k: (r.window_totals.get(total) or 0) / (sum(r.step_cpu_ms) / 1e3)
                for k, r in runs.items() if r.step_cpu_ms and sum(r.step_cpu_ms) > 0}
    return {k: r.metrics.get(rate) for k, r in runs.items()}


def clock_gap(base: Sequence[Record], variant: Sequence[Record]) -> stats.RatioEstimate:
    """Per repeat, the variant's speedup on CPU time over its speedup on wall time: above 1 when the variant's
    extra wall time was not work in its process (a sleep, I/O, a lock, workers). Paired within each repeat, so
    the host's noise, common to both clocks of a run, cancels."""
    b, v = _ok_by_repeat(base), _ok_by_repeat(variant)

    def speedups(clock: str) -> dict[int, float]:
        den = throughput_by_repeat(b, clock)
        return {k: x / den[k] for k, x in throughput_by_repeat(v, clock).items() if x and den.get(k)}

    return stats.paired_ratio(speedups("cpu"), speedups("wall"))


def estimate(base: Sequence[Record], variant: Sequence[Record], clock: str = "auto",
             unit: str = "samples") -> tuple[stats.RatioEstimate, str]:
    """(speedup of `variant` over `base` in `unit`'s throughput with its interval, the clock it is on)."""
    b, v = _ok_by_repeat(base), _ok_by_repeat(variant)
    repeats = sorted(b.keys() & v.keys())
    pairs = [(b[k], v[k]) for k in repeats]
    if pairs and all(_same_process(x, y) for x, y in pairs):
        clock = pick_clock(clock, [_resolved(r) for pair in pairs for r in pair])
        per_process = [step_ratios(x, y, clock, unit) for x, y in pairs]
        if len(per_process) >= stats.MIN_REPEATS:
            return stats.repeat_ratio([stats.geometric_mean(r) for r in per_process]), clock
        return stats.block_bootstrap_ratio(np.concatenate(per_process)), clock
    clock = "wall" if clock == "auto" else clock
    num, den = throughput_by_repeat(v, clock, unit), throughput_by_repeat(b, clock, unit)
    return stats.paired_ratio(num, den), clock


def work_unit(records: Sequence[Record], baseline: str) -> str:
    """The unit a sweep's speedups count: "tokens" when the runs count real tokens and some variant's real tokens
    per sample differ from the baseline's by more than 1% (a sample is then not the same work), else "samples"."""
    per_sample: dict[str, list[float]] = {}
    for r in records:
        t = r.window_totals
        if r.phase == "speed" and r.status == "ok" and t.get("samples"):
            per_sample.setdefault(r.variant, []).append((t.get("real_tokens") or 0) / t["samples"])
    base = per_sample.get(baseline)
    if not base or not all(x > 0 for xs in per_sample.values() for x in xs):
        return "samples"
    ref = float(np.median(base))
    differs = any(abs(float(np.median(xs)) / ref - 1.0) > 0.01 for xs in per_sample.values())
    return "tokens" if differs else "samples"


def changed_knobs(base: Mapping[str, Any], variant: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Knobs whose values differ: name -> (base's, variant's)."""
    return {k: (base.get(k), variant.get(k)) for k in dict.fromkeys([*base, *variant]) if base.get(k) != variant.get(k)}


@dataclass(frozen=True, slots=True)
class Comparison:
    """A variant against a baseline from their records: the speedup, its interval and the evidence."""

    label: str
    """What is compared, e.g. ``gpcm forward=scan vs forward=sequential``."""
    changed: dict[str, tuple[Any, Any]]
    """Knobs that differ: name -> (baseline's, variant's); empty when only code differs."""
    clock: str
    """The clock the estimate is on: "wall" or "cpu" (the process's CPU time)."""
    estimate: stats.RatioEstimate
    baseline: tuple[Record, ...]
    variant: tuple[Record, ...]

    def median_ms(self, side: str, phase: str = "") -> float:
        """Median ms per step of `side` ("baseline" | "variant") on the estimate's clock; ``phase="data"``:
        that phase's mean ms per step (wall clock)."""
        recs = self.baseline if side == "baseline" else self.variant
        if phase:
            return stats.median([r.phase_ms.get(phase) for r in recs])
        return stats.median([t for r in recs for t in _times(r, self.clock)])

    def extra_info(self) -> dict[str, Any]:
        """The ratio, its interval and the per-side medians, for pytest-benchmark's JSON."""
        e = self.estimate
        return {"speedup": e.ratio, "speedup_ci_low": e.ci_low, "speedup_ci_high": e.ci_high, "pairs": e.n,
                "interval": e.method, "clock": self.clock, "compared": self.label,
                "baseline_step_ms_median": self.median_ms("baseline"),
                "variant_step_ms_median": self.median_ms("variant"),
                "changed": {k: [str(a), str(b)] for k, (a, b) in self.changed.items()}}


def compare(base: Sequence[Record], variant: Sequence[Record], clock: str = "auto", label: str = "") -> Comparison:
    """The `Comparison` of two variants' records."""
    est, used = estimate(base, variant, clock)
    bcfg = dict(base[0].config) if base else {}
    vcfg = dict(variant[0].config) if variant else {}
    changed = changed_knobs(bcfg, vcfg)
    if not label:
        workload = bcfg.get("workload", "?")
        if not changed:
            label = f"{workload} (identical configs)"
        else:
            label = (f"{workload} " + ", ".join(f"{k}={v[1]}" for k, v in changed.items()) + " vs "
                     + ", ".join(f"{k}={v[0]}" for k, v in changed.items()))
    return Comparison(label=label, changed=changed, clock=used, estimate=est, baseline=tuple(base),
                      variant=tuple(variant))
