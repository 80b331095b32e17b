"""The training function itself, pinned: per workload, what its tiny preset computes at a fixed seed.

A reference (`bench/references/WORKLOAD.json`) holds the training loss after each of `STEPS` optimizer
steps, the quality metrics after them, and one step's counters (FLOPs, forward passes per micro-step,
parameters), measured with one torch thread (a fixed summation order). `check` measures them again and
lists every figure that moved beyond the dtype's tolerance; `trainbench reference --update` rewrites
the files and prints what changed. It catches what a comparison of two settings of the same code
cannot: a change that moves every setting alike (gradients accumulated across steps, a changed
initialisation or optimizer, extra compute in the model), at the cost of one explicit refresh
whenever the training function is meant to change.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.analysis.stats import RatioEstimate

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
    losses = tr.run_steps(steps)
    quality = tr.evaluate()
    counters = step_counters(cfg)
    wl = cfg.get_workload()
    per_token = wl.flops_per_token(cfg)
    tokens = counters.padded_tokens_per_step or counters.real_tokens_per_step
    dtype = "float64" if next(tr.model.parameters()).dtype == torch.float64 else "float32"
    return {
        "workload": workload, "knobs": dict(KNOBS), "steps": steps, "dtype": dtype,
        "losses": losses, "quality": {k: float(v) for k, v in sorted(quality.items())},
        **{k: getattr(counters, k) for k in COUNTERS},
        "analytic_flops_per_step": float(per_token * tokens) if per_token and tokens else None,
        "measured_with": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                          "python": platform.python_version()},
    }


def _close(a: float | None, b: float | None, tol: float) -> bool:
    """`b` equivalent to the stored `a` within the relative tolerance (`decision.exact`); two missing figures agree."""
    from harness.analysis import decision

    if a is None and b is None:
        return True
    return decision.exact(b, a, tol).outcome == decision.EQUIVALENT


def differences(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """Each figure that moved beyond tolerance, as a line that says what, from what, to what."""
    tol = TOLERANCE.get(str(stored.get("dtype")), TOLERANCE["float32"])
    out = []
    for i, (a, b) in enumerate(zip(stored.get("losses", []), now["losses"], strict=False)):
        if not _close(a, b, tol):
            out.append(f"training loss after step {i + 1}: {a:.7g} -> {b:.7g} (relative {abs(b - a) / abs(a):.1e} "
                       f"> {tol:.0e})")
            break  # the first step that moved is the finding; the later ones follow from it
    for k in sorted(set(stored.get("quality", {})) | set(now["quality"])):
        a, b = stored.get("quality", {}).get(k), now["quality"].get(k)
        if a is None or b is None or not _close(a, b, tol):
            out.append(f"quality {k} after {now['steps']} steps: {a} -> {b}")
    for k in COUNTERS:
        if stored.get(k) != now[k]:
            out.append(f"{k}: {stored.get(k)} -> {now[k]}")
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
