"""`trainbench fit`: the largest batch_size (or another integer knob) whose run stays within a memory budget.

Each probe is a short speed run of the config at one value, in a fresh process (the runner's launcher),
so one probe's allocations never help or hurt the next. A probe fits when it ends ok and its peak
memory (peak RSS of the window on a CPU, torch's peak reserved memory on a GPU) is within the budget;
an out-of-memory error or a larger peak does not fit. The search grows the value geometrically from the
config's own until a probe does not fit (or the training split is exhausted), then bisects between the
last fit and the first miss; it assumes memory grows with the value. A line fitted through the probes
(peak GiB against the value) says what the next sizes would need.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROBE_STEPS = {"bench_warmup_steps": 1, "bench_steps": 2}
"""A probe's run: one warm-up step (allocator and caches reach their steady size) and two measured steps."""


@dataclass(frozen=True, slots=True)
class Probe:
    value: int
    fits: bool
    peak_gib: float | None
    why: str
    """"ok", "peak above the budget", or the run's status and error (oom, crash)."""


@dataclass(frozen=True, slots=True)
class FitResult:
    knob: str
    answer: int | None
    """The largest value that fits (None: not even the smallest probe did)."""
    budget_gib: float
    memory: str
    """Which peak was compared: "peak RSS" or "CUDA peak reserved"."""
    probes: tuple[Probe, ...]
    slope_gib: float | None
    """GiB per unit of the knob, from a line through the probes that ran (None with fewer than 2)."""
    intercept_gib: float | None
    limit: int
    """The largest value the search could try (the training split's size for batch_size)."""

    def need_gib(self, value: int) -> float | None:
        """The line's peak at `value`."""
        if self.slope_gib is None or self.intercept_gib is None:
            return None
        return self.intercept_gib + self.slope_gib * value


def search(probe: Callable[[int], Probe], start: int, limit: int) -> list[Probe]:
    """Grow from `start` by doubling while it fits (up to `limit`), then bisect; the probes in the order run.
    The answer is the largest fitting value among them; equal to a scan of 1..limit when fitting is monotone."""
    seen: dict[int, Probe] = {}

    def at(v: int) -> Probe:
        if v not in seen:
            seen[v] = probe(v)
        return seen[v]

    v = max(1, min(start, limit))
    if at(v).fits:
        lo, hi = v, None
        while hi is None and lo < limit:
            nxt = min(lo * 2, limit)
            if at(nxt).fits:
                lo = nxt
            else:
                hi = nxt
        if hi is None:
            return list(seen.values())
    else:
        hi, lo = v, None
        while lo is None and hi > 1:
            nxt = max(hi // 2, 1)
            if at(nxt).fits:
                lo = nxt
            else:
                hi = nxt
        if lo is None:
            return list(seen.values())  # nothing fits, not even 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid).fits:
            lo = mid
        else:
            hi = mid
    return list(seen.values())


def answer_of(probes: list[Probe]) -> int | None:
    fitting = [p.value for p in probes if p.fits]
    return max(fitting) if fitting else None


def _line(probes: list[Probe]) -> tuple[float | None, float | None]:
    pts = [(p.value, p.peak_gib) for p in probes if p.peak_gib is not None]
    if len({x for x, _ in pts}) < 2:
        return None, None
    slope, intercept = np.polyfit([x for x, _ in pts], [y for _, y in pts], 1)
    return float(slope), float(intercept)


def run_probe(cfg_knobs: Mapping[str, Any], workload: str, knob: str, value: int, budget_gib: float,
              workdir: Path, launcher: Any, timeout_s: float) -> Probe:
    """One short run at `knob=value` in a fresh process; fits when ok and within the budget."""
    from harness.jobs import Job, records_from
    from harness.registry import resolve

    cfg = resolve(workload, cfg_knobs, {knob: value, **PROBE_STEPS})
    job = Job(experiment="fit", variant=f"{knob}={value}", phase="speed", repeat=0,
              config=cfg.replace(epochs=0).to_dict(), timeout_s=timeout_s)
    (rec,) = records_from("fit", job, launcher.launch(job, workdir))
    cuda = rec.metrics.get("cuda_peak_reserved_gib")
    peak = cuda if cuda is not None else rec.metrics.get("peak_rss_gib")
    if rec.status != "ok":
        last = (rec.error or "").strip().splitlines()[-1:] or [""]
        return Probe(value, False, None, f"{rec.status}: {last[0][:200]}")
    if peak is None:
        return Probe(value, False, None, "no peak memory measured")
    fits = peak <= budget_gib
    return Probe(value, fits, float(peak), "ok" if fits else "peak above the budget")


def fit(workload: str, knobs: Mapping[str, Any], budget_gib: float, *, knob: str = "batch_size",
        timeout_s: float = 600.0, limit: int | None = None) -> FitResult:
    """Search the largest `knob` value within `budget_gib` (see the module docstring), at most `limit`."""
    from harness.config import all_knobs, resolve_device
    from harness.experiment import build
    from harness.launch import default_launcher
    from harness.registry import get, resolve

    cfg = resolve(workload, knobs)
    spec = all_knobs(get(workload)).get(knob)
    if spec is None or spec.type is not int:
        raise ValueError(f"--knob {knob}: fit searches an integer knob of {workload} (e.g. batch_size, max_length)")
    if not budget_gib > 0:
        raise ValueError(f"--memory {budget_gib:g}: give the budget in GiB, a positive number, e.g. --memory 2")
    cap, limit = limit, int(spec.max) if spec.max is not None else 1 << 16
    if knob == "batch_size":
        train, _ = cfg.get_workload().build_datasets(cfg)
        limit = min(limit, len(train) // max(cfg.grad_accum, 1))
    if cap is not None:
        limit = min(limit, cap)
    start = int(getattr(cfg, knob)) or 1
    on_gpu = resolve_device(cfg).type == "cuda"
    exp = build("fit", workload, dict(knobs), {}, equivalence=False)
    launcher = default_launcher(exp)
    try:
        with tempfile.TemporaryDirectory(prefix="trainbench-fit-") as tmp:
            probes = search(lambda v: run_probe(knobs, workload, knob, v, budget_gib, Path(tmp), launcher,
                                                timeout_s), start, limit)
    finally:
        launcher.close()
    slope, intercept = _line(probes)
    return FitResult(knob=knob, answer=answer_of(probes), budget_gib=budget_gib,
                     memory="CUDA peak reserved" if on_gpu else "peak RSS", probes=tuple(probes),
                     slope_gib=slope, intercept_gib=intercept, limit=limit)


def rank_effective_batch(workload: str, knobs: Mapping[str, Any], effective: int, largest: int, out_dir: Path,
                         *, timeout_s: float = 600.0, repeats: int | None = None, progress: Any = None
                         ) -> tuple[Any, list[Any]]:
    """Every batch_size x grad_accum = `effective` with a micro-batch of at most `largest` (what fits), measured
    side by side as one experiment (interleaved fresh processes, repeats to the precision target, each pair
    checked equivalent to the baseline): (the experiment, its records). The baseline is the knobs' own pair
    when its product is `effective`, else the largest micro-batch that fits. `repeats`: exactly that many, none
    added."""
    from harness.experiment import build, effective_batch_variants
    from harness.runner import run_experiment

    baseline, name, variants = effective_batch_variants(effective, knobs, largest, where="--effective-batch")
    exp = build(f"effective-batch-{effective}", workload, baseline, variants, baseline_name=name,
                description=f"every batch_size x grad_accum = {effective} within the memory budget",
                timeout_s=timeout_s, **({"repeats": repeats, "target_half_width_pct": 0.0,
                                         "max_repeats": max(repeats, 10)} if repeats else {"repeats": 3}))
    return exp, run_experiment(exp, out_dir, progress=progress)


def describe(res: FitResult, workload: str) -> str:
    """The answer, the probes in the order run, and what the next sizes would need."""
    lines = []
    if res.answer is None:
        lines.append(f"{workload}: nothing fits in {res.budget_gib:g} GiB ({res.memory}), not even {res.knob}=1; "
                     "raise --memory or shrink the model")
    else:
        cap = " (the largest the training split allows)" if res.answer == res.limit else ""
        lines.append(f"{workload}: largest {res.knob} within {res.budget_gib:g} GiB ({res.memory}): "
                     f"{res.answer}{cap}, after {len(res.probes)} probes")
    lines.append(f"{'probe':>6} {res.knob:>12} {'peak GiB':>9}  verdict")
    for i, p in enumerate(res.probes, 1):
        peak = f"{p.peak_gib:.3f}" if p.peak_gib is not None else "-"
        lines.append(f"{i:>6} {p.value:>12} {peak:>9}  {'fits' if p.fits else 'does not fit'} ({p.why})")
    if res.slope_gib is not None and res.answer is not None:
        nxt = [res.answer + 1, res.answer * 2]
        lines.append(f"memory line: {res.intercept_gib:.3f} GiB + {res.slope_gib * 1024:.2f} MiB per {res.knob}; "
                     + "; ".join(f"{res.knob}={v} would need ~{res.need_gib(v):.3f} GiB" for v in nxt))
    return "\n".join(lines)
