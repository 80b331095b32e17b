"""The training function itself, pinned: per workload, what its tiny preset computes at a fixed seed.

A reference (`bench/references/WORKLOAD.json`) holds the training loss after each of `STEPS` optimizer
steps, the quality metrics after them, and one step's counters (FLOPs, forward passes per micro-step,
parameters), measured with one torch thread (a fixed summation order). `check` measures them again and
lists every figure that moved beyond the dtype's tolerance; `trainbench reference --update` rewrites
the files and prints what changed. It catches what a comparison of two settings of the same code
cannot: a change that moves every setting alike (gradients accumulated across steps, a changed
initialisation or optimizer, extra compute in the model), at the cost of one explicit refresh
whenever the training function is meant to change.

Beside the baseline it pins the knob paths a default config never takes (`variant_knobs`): the harness's own
training paths (schedules with warmup, EMA, clipping, accumulation, bf16, AdamW) and the training knobs of every
bundled experiment's variants, each with its losses and per-step counters (`Trainer.trace`: learning rate,
gradient norm before and after clipping, loss scale, parameter and EMA checksums), so a schedule, clipping,
EMA or optimizer-step-order change moves a stored number on the path it breaks.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.analysis.stats import RatioEstimate
from harness.knobs import GENERIC_BY_NAME

STEPS = 10
KNOBS = {"preset": "tiny", "threads": 1}
"""The reference config of every workload: its tiny preset, one thread (the summation order is fixed)."""
TOLERANCE = {"float32": 2e-5, "float64": 1e-10}
"""Relative tolerance per dtype on losses and metrics. float32: runs on this machine repeat exactly; the
margin is for other CPUs' kernels (a different summation order moves a loss by ~1e-7 per step). Moving
`zero_grad` out of the optimizer step moved the LM's loss after 3 steps by 2.1e-4, ten times this."""
COUNTERS = ("flops_per_step", "forward_calls_per_step", "param_count")
ANALYTIC_MARGIN = 1.0
"""Measured FLOPs per step over the workload's own analytic model (`flops_per_token`) must lie within x2 either
way (`decision.decide` with this margin: 0.5-2): a doubled forward or a lost backward leaves it; finer changes are
the stored count's job."""
ANALYTIC_BAND = (1 / (1 + ANALYTIC_MARGIN), 1 + ANALYTIC_MARGIN)


TRACE = ("lr", "grad_norm", "grad_norm_clipped", "loss_scale", "param_sum", "ema_sum", "live_bytes")
"""Per-step counters (`harness.trainer.Trainer.trace`), compared like losses."""
TRAINING_PATHS: dict[str, dict[str, Any]] = {
    "cosine_warmup": {"scheduler": "cosine", "lr_warmup_steps": 3},
    "onecycle": {"scheduler": "onecycle", "lr_warmup_steps": 3},
    "plateau_warmup": {"scheduler": "plateau", "lr_warmup_steps": 3},
    "ema": {"ema": 0.9},
    "clip": {"clip_grad_norm": 0.01},
    "accum2": {"grad_accum": 2},
    "adamw": {"optimizer": "adamw", "weight_decay": 0.1},
    "sgd": {"optimizer": "sgd", "lr": 0.05},
    "amp_bf16": {"amp": "bf16"},
}
"""The harness's training paths, pinned on every workload whatever the experiments use (a clip of 0.01 acts on every
step; warmups end inside the 10 steps)."""
SPAN = {"bench_warmup_steps": 1, "bench_steps": STEPS - 1}
"""Every variant's schedule spans the reference's steps (a scheduler's length is the run's planned steps)."""
_TRAINING_KINDS = ("quality", "approx")
LEAK_BYTES_PER_STEP = 1024
"""Live tensor bytes growing this much faster per step than stored is named a leak (the count is exact; batches
of varying length move it by bytes, a kept tensor by its size every step); any other change is the per-step
`live_bytes` line's."""


def variant_knobs(workload: str) -> dict[str, dict[str, Any]]:
    """Name -> knobs of each path pinned beside the baseline: `TRAINING_PATHS`, then the generic training knobs (kind
    quality or approx) each bundled experiment's variant sets in its own section, warmups cut to 3 steps to end
    inside the reference; one name per distinct knob set (the first), none equal to the baseline's."""
    from harness.experiment import load_experiments

    out: dict[str, dict[str, Any]] = {}
    seen: set[str] = {json.dumps({}, sort_keys=True)}

    def add(name: str, knobs: Mapping[str, Any]) -> None:
        key = json.dumps(dict(knobs), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            out[name] = dict(knobs)

    for name, knobs in TRAINING_PATHS.items():
        add(name, knobs)
    root = reference_dir().parent / "experiments"
    for path in sorted(root.rglob("*.toml")):
        try:
            exps = load_experiments(path)
        except (ValueError, OSError):
            continue  # a broken experiment file is the experiment tests' finding, not the reference's
        for exp in exps:
            if exp.workload != workload:
                continue
            for v in exp.variants[1:]:
                own = exp.overrides.get(v, {})
                knobs = {k: (min(int(x), 3) if k == "lr_warmup_steps" else x) for k, x in own.items()
                         if k in GENERIC_BY_NAME and GENERIC_BY_NAME[k].kind in _TRAINING_KINDS}
                if knobs:
                    add(f"{exp.name}.{v}", knobs)
    return out


def per_step(trace: Sequence[Mapping[str, float]]) -> dict[str, list[float | None]]:
    """A traced run's counters (`Trainer.trace`) as one series per counter of `TRACE` that it recorded."""
    return {k: [t.get(k) for t in trace] for k in TRACE if any(k in t for t in trace)}


def _traced(workload: str, knobs: Mapping[str, Any], steps: int) -> dict[str, Any]:
    """Losses and per-step counters of `steps` steps at the reference config with `knobs`; {"skipped": why} when
    the tiny preset cannot run them (a batch larger than its data)."""
    from harness.registry import resolve
    from harness.trainer import Trainer

    try:
        tr = Trainer(resolve(workload, {**KNOBS, **SPAN, **knobs}))
    except ValueError as exc:
        return {"knobs": dict(knobs), "skipped": str(exc).splitlines()[0]}
    losses = tr.run_steps(steps, trace=True)
    return {"knobs": dict(knobs), "losses": losses, "per_step": per_step(tr.trace or [])}


def reference_dir() -> Path:
    """`bench/references/` of the tree this module belongs to."""
    return Path(__file__).resolve().parent.parent / "bench" / "references"


def measure(workload: str, steps: int = STEPS) -> dict[str, Any]:
    """The workload's reference figures, measured now."""
    import torch

    from harness.engine import step_counters
    from harness.registry import resolve
    from harness.trainer import Trainer

    cfg = resolve(workload, KNOBS)
    tr = Trainer(cfg)
    losses = tr.run_steps(steps, trace=True, memory=True)  # the baseline's memory: a leak is a slope over its steps
    quality = tr.evaluate()
    counters = step_counters(cfg)
    wl = cfg.get_workload()
    per_token = wl.flops_per_token(cfg)
    tokens = counters.padded_tokens_per_step or counters.real_tokens_per_step
    dtype = "float64" if next(tr.model.parameters()).dtype == torch.float64 else "float32"
    return {
        "workload": workload, "knobs": dict(KNOBS), "steps": steps, "dtype": dtype,
        "losses": losses, "quality": {k: float(v) for k, v in sorted(quality.items())},
        "per_step": per_step(tr.trace or []),
        **{k: getattr(counters, k) for k in COUNTERS},
        "analytic_flops_per_step": float(per_token * tokens) if per_token and tokens else None,
        "measured_with": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
        "variants": {name: _traced(workload, knobs, steps) for name, knobs in variant_knobs(workload).items()},
    }


def _close(a: float | None, b: float | None, tol: float) -> bool:
    """`b` equivalent to the stored `a` within the relative tolerance (`decision.exact`); two missing figures agree."""
    from harness.analysis import decision

    if a is None or b is None:
        return a is None and b is None
    return decision.exact(b, a, tol).outcome == decision.EQUIVALENT


def differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Each figure that moved beyond tolerance, as a line that says what, from what, to what."""
    tol = TOLERANCE.get(str(stored.get("dtype")), TOLERANCE["float32"])
    out = _trajectory(stored, now, tol)
    for k in sorted(set(stored.get("quality", {})) | set(now["quality"])):
        a, b = stored.get("quality", {}).get(k), now["quality"].get(k)
        if a is None or b is None or not _close(a, b, tol):
            out.append(f"quality {k} after {now['steps']} steps: {a} -> {b}")
    for k in COUNTERS:
        if stored.get(k) != now[k]:
            out.append(f"{k}: {stored.get(k)} -> {now[k]}")
    old_variants, new_variants = stored.get("variants", {}), now.get("variants", {})
    for name in sorted(set(old_variants) | set(new_variants)):
        a, b = old_variants.get(name), new_variants.get(name)
        knobs = ", ".join(f"{k}={v}" for k, v in (b or a or {}).get("knobs", {}).items())
        if a is None or b is None:
            out.append(f"variant {name} ({knobs}): {'new' if a is None else 'no longer measured'}")
        elif a.get("skipped") or b.get("skipped"):
            if a.get("skipped") != b.get("skipped"):
                out.append(f"variant {name} ({knobs}): skipped {a.get('skipped')!r} -> {b.get('skipped')!r}")
        else:
            out += [f"variant {name} ({knobs}): {line}" for line in _trajectory(a, b, tol)]
    return out


def growth_per_step(values: Sequence[float]) -> float:
    """Least-squares slope of a per-step series, leaving out the first two steps (one-time state appears there)."""
    import numpy as np

    ys = np.asarray(values[2:], dtype=float)
    if ys.size < 2:
        return 0.0
    return float(np.polyfit(np.arange(ys.size, dtype=float), ys, 1)[0])


def _trajectory(stored: Mapping[str, Any], now: Mapping[str, Any], tol: float) -> list[str]:
    """The first step whose loss moved, and per counter of `TRACE` the first step where it moved (or where it
    appeared or vanished): later steps follow from the first."""
    out = []
    for i, (a, b) in enumerate(zip(stored.get("losses", []), now["losses"], strict=False)):
        if not _close(a, b, tol):
            out.append(f"training loss after step {i + 1}: {a:.7g} -> {b:.7g} (relative {abs(b - a) / abs(a):.1e} "
                       f"> {tol:.0e})")
            break  # the first step that moved is the finding; the later ones follow from it
    old, new = stored.get("per_step", {}), now.get("per_step", {})
    if old.get("live_bytes") and new.get("live_bytes"):
        was, now_slope = growth_per_step(old["live_bytes"]), growth_per_step(new["live_bytes"])
        if now_slope - was >= LEAK_BYTES_PER_STEP:
            out.append(f"live tensor memory grows {now_slope / 1024:+.1f} KiB per step over {len(new['live_bytes'])} "
                       f"steps (stored: {was / 1024:+.1f} KiB per step): a tensor kept every step")
    for k in [c for c in TRACE if c in old or c in new]:
        a_steps, b_steps = old.get(k) or [None] * len(new.get(k, [])), new.get(k) or [None] * len(old.get(k, []))
        for i, (a, b) in enumerate(zip(a_steps, b_steps, strict=False)):
            if not _close(a, b, tol):
                out.append(f"{k} at step {i + 1}: {a if a is None else f'{a:.7g}'} -> "
                           f"{b if b is None else f'{b:.7g}'}")
                break
    return out


def analytic_problem(now: Mapping[str, Any]) -> str:
    """'' or why the measured FLOPs disagree with the workload's analytic model beyond `ANALYTIC_BAND`."""
    analytic = now.get("analytic_flops_per_step")
    if not analytic:
        return ""
    from harness.analysis import decision

    ratio = now["flops_per_step"] / analytic
    low, high = ANALYTIC_BAND
    measured = RatioEstimate(ratio, ratio, ratio, 1, "exact", 1)
    if decision.decide(measured, margin=ANALYTIC_MARGIN).side == decision.INSIDE:
        return ""
    return (f"flops_per_step {now['flops_per_step']:,} is x{ratio:.2f} the workload's analytic model "
            f"({analytic:,.0f}; allowed x{low:g}-x{high:g}): the step does work its cost model does not predict")


def path_of(workload: str, directory: Path | None = None) -> Path:
    return (directory or reference_dir()) / f"{workload}.json"


def check(workload: str, directory: Path | None = None) -> tuple[bool, str]:
    """(passed, message) of the workload's reference against a fresh measurement."""
    path = path_of(workload, directory)
    if not path.exists():
        return False, (f"reference {path} is missing; create it with `trainbench reference --update {workload}` "
                       "and commit it")
    try:
        stored = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        return False, (f"reference {path} is unreadable ({e}); regenerate it with "
                       f"`trainbench reference --update {workload}`")
    now = measure(workload, int(stored.get("steps", STEPS)))
    problems = differences(stored, now)
    if (why := analytic_problem(now)):
        problems.append(why)
    if problems:
        return False, (f"training function changed: {workload} preset=tiny (1 thread): " + "; ".join(problems)
                       + f". If intended, run `trainbench reference --update {workload}` and commit {path.name}")
    return True, f"reference {workload}: {now['steps']} step losses, quality and counters as stored"


def update(workloads: Sequence[str], directory: Path | None = None) -> list[str]:
    """Measure and write each workload's reference; returns one line per workload saying what changed."""
    lines = []
    for wl in workloads:
        path = path_of(wl, directory)
        now = measure(wl)
        old = json.loads(path.read_text()) if path.exists() else None
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(now, indent=1) + "\n")
        if old is None:
            lines.append(f"{wl}: created {path}")
        else:
            changed = differences(old, now)
            lines.append(f"{wl}: " + ("; ".join(changed) if changed else "unchanged") + f" ({path})")
    return lines
