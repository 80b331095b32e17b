"""Old against new: the working tree's code measured against a base revision's, interleaved.

`trainbench compare --against REF` and `pytest bench --trainbench-against REF` both come here. The base
revision (default: the merge base of HEAD with the main branch) is exported from git into a temporary
directory; each workload's config then runs as a two-variant experiment through the runner, exactly as
a sweep runs: "old" in processes whose imports come from the exported tree, "new" from the working
tree, fresh processes alternating old/new round by round, contended runs re-run, repeats added until
the interval is tight. The verdict is on wall time (what training costs; it also sees sleeps, I/O and
waiting) and names where the time went per phase; the CPU-time ratio says whether the change is work
or waiting.

Nothing here knows a model: configs come from the registry, records from the runner.
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CODE_PATHS = ("harness", "models", "trainbench", "examples", "pyproject.toml")
"""What counts as the code under test: a change elsewhere (docs, tests, reports) changes no measurement."""
MAIN_BRANCHES = ("main", "origin/main", "master", "origin/master")
MIN_CHANGE_PCT = 3.0
"""The equivalence margin of old against new (`decision.EQUIVALENCE_MARGIN_PCT`): a slowdown whose interval lies
wholly inside ±3% is "equivalent", not a failure; smaller changes are within what this machine resolves between
fresh processes (bench/measure_against_rates.py)."""
PHASE_CAUSES = {
    "data": "data loading (DataLoader fetch / collate)",
    "forward": "the forward pass",
    "loss": "the loss",
    "backward": "the backward pass",
    "optimizer": "the optimizer step",
    "communication": "communication",
}


def _git(root: Path, *args: str) -> str:
    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ValueError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"git {args[0]} failed")
    return proc.stdout.strip()


def repo_root(path: str | Path = ".") -> Path:
    """The git work tree holding `path`; ValueError when there is none."""
    try:
        return Path(_git(Path(path), "rev-parse", "--show-toplevel"))
    except (ValueError, OSError) as e:
        raise ValueError(f"--against needs a git work tree (here: {Path(path).resolve()}): {e}; "
                         "run it from a clone of the project") from None


@dataclass(frozen=True, slots=True)
class Base:
    """The revision the working tree is measured against."""

    ref: str
    """As given (or how it was found: "merge base of HEAD and main")."""
    sha: str
    changed: tuple[str, ...]
    """Code files (`CODE_PATHS`) that differ between it and the working tree, untracked ones included."""

    @property
    def short(self) -> str:
        return self.sha[:10]

    def touches(self, workload: str) -> bool:
        """Whether the changed code can change `workload`: everything except another workload's package under
        `models/` (the built-in workloads import the harness and the shared modules at the top of `models/`,
        never each other's package)."""
        def other_package(f: str) -> bool:
            parts = f.split("/")
            return parts[0] == "models" and len(parts) > 2 and parts[1] != workload

        return any(not other_package(f) for f in self.changed)


def resolve_base(ref: str | None = None, root: str | Path = ".") -> Base:
    """`ref` (any git revision; None or "auto": the merge base of HEAD with the main branch, or HEAD where there
    is none) and the code files the working tree changes against it. ValueError (one line) for a revision git
    does not know."""
    top = repo_root(root)
    if ref in (None, "", "auto"):
        for branch in MAIN_BRANCHES:
            with contextlib.suppress(ValueError):
                sha = _git(top, "merge-base", "HEAD", branch)
                label = f"merge base of HEAD and {branch}"
                break
        else:  # a clone without a main branch: the uncommitted changes are what can be measured
            sha, label = _git(top, "rev-parse", "HEAD"), "HEAD (no main branch here: " + ", ".join(MAIN_BRANCHES) + ")"
    else:
        try:
            sha = _git(top, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except ValueError:
            raise ValueError(f"--against {ref}: not a revision of this repository; give a branch, tag or "
                             "commit (git rev-parse cannot resolve it)") from None
        label = ref
    diff = _git(top, "diff", "--name-only", sha, "--", *CODE_PATHS).splitlines()
    untracked = _git(top, "ls-files", "--others", "--exclude-standard", "--", *CODE_PATHS).splitlines()
    return Base(ref=label, sha=sha, changed=tuple(sorted({*diff, *untracked} - {""})))


@contextlib.contextmanager
def exported(base: Base, root: str | Path = ".") -> Iterator[Path]:
    """The base revision's files in a temporary directory (`git archive`: no worktree is registered, so
    nothing is left behind in the repository if the process dies)."""
    top = repo_root(root)
    with tempfile.TemporaryDirectory(prefix=f"trainbench-base-{base.short}-") as tmp:
        archive = subprocess.Popen(["git", "-C", str(top), "archive", "--format=tar", base.sha],
                                   stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", tmp], stdin=archive.stdout, capture_output=True)
        archive.stdout.close()
        if archive.wait() != 0 or untar.returncode != 0:
            raise ValueError(f"--against: could not export {base.short} (git archive | tar: "
                             f"{untar.stderr.decode(errors='replace').strip() or 'failed'})")
        yield Path(tmp)


def check_imports_from(root: Path) -> None:
    """A process started as the runner starts the base's children imports `harness` and `models` from
    `root`, not from the working tree or an installed copy (else old == new and the gate sees nothing)."""
    from harness.launch import child_env

    code = "import harness, models; print(harness.__file__); print(models.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=child_env(root), capture_output=True,
                          text=True, timeout=120)
    paths = [Path(p).resolve() for p in proc.stdout.split()]
    if proc.returncode != 0 or len(paths) != 2 or not all(root.resolve() in p.parents for p in paths):
        raise RuntimeError(f"the base revision's processes do not import its own code (got {proc.stdout.split()} "
                           f"{proc.stderr.strip()[-300:]}); the comparison would measure one tree twice")


@dataclass(frozen=True, slots=True)
class AgainstResult:
    """One workload's config, old against new, on both clocks, with the verdict."""

    workload: str
    label: str
    base: Base
    wall: Any
    """`harness.analysis.speedup.Comparison` of new over old on wall time."""
    cpu: Any
    """The same on this process's CPU time (None when a run had none)."""
    phase_delta_ms: dict[str, float]
    """Per phase: new's mean ms per step minus old's (medians over repeats)."""
    passed: bool
    message: str
    out_dir: Path | None = None


def phase_deltas(wall: Any) -> dict[str, float]:
    """Per phase, new's ms per step minus old's (`Comparison.median_ms`: medians over repeats)."""
    names = dict.fromkeys(p for r in [*wall.baseline, *wall.variant] for p in r.phase_ms)
    return {p: wall.median_ms("variant", p) - wall.median_ms("baseline", p) for p in names}


def where_time_went(deltas: Mapping[str, float], step_delta_ms: float) -> str:
    """The phases that grew most, with the likeliest cause first."""
    grown = sorted(((d, p) for p, d in deltas.items() if d > 0), reverse=True)
    if not grown or step_delta_ms <= 0:
        return "no phase grew"
    parts = [f"{p} {d:+.2f} ms" for d, p in grown[:3]]
    top = grown[0][1]
    return (f"per step {step_delta_ms:+.2f} ms, of which " + ", ".join(parts)
            + f": the time went to {PHASE_CAUSES.get(top, top)}")


def verdict(label: str, base: Base, wall: Any, cpu: Any, deltas: Mapping[str, float],
            min_change_pct: float = MIN_CHANGE_PCT) -> tuple[bool, str]:
    """(passed, message) from `decision.decide` on new over old (wall clock) with an equivalence margin of
    ±`min_change_pct`: fails when new is *slower* (the interval wholly below 1 and not within the margin) or the
    comparison has no interval; the message leads with what changed and by how much."""
    from harness.analysis import decision
    from harness.analysis.speedup import clock_gap

    d = decision.decide(wall.estimate, margin=min_change_pct / 100)
    head = f"old against new: {label}: new against {base.short} ({base.ref}), wall clock: {d.text()}"
    cpu_text = f"; CPU clock {decision.decide(cpu.estimate, margin=min_change_pct / 100).text()}" \
        if cpu is not None and cpu.estimate.has_interval else ""
    if not wall.estimate.has_interval:
        return False, f"{head}{cpu_text}: cannot decide ({wall.estimate.method}); see the records for failed runs"
    if d.outcome != decision.WORSE:
        return True, f"{head}{cpu_text}"
    e = wall.estimate
    step_delta = wall.median_ms("variant") - wall.median_ms("baseline")
    why = where_time_went(deltas, step_delta)
    waiting = ""
    if cpu is not None and decision.decide(clock_gap(wall.baseline, wall.variant)).side == decision.ABOVE:
        waiting = ("; the CPU-time ratio is closer to 1 than the wall-time one: much of the new time is waiting "
                   "(a sleep, I/O, a lock, DataLoader workers), not work in this process")
    return False, (f"{head}{cpu_text}: SLOWER by {100 * (1 - e.ratio):.1f}% (margin ±{min_change_pct:g}%); "
                   f"{why}{waiting}; changed code: {', '.join(base.changed[:6]) or 'none'}")


def mde_note(workload: str, records: list[Any]) -> str:
    """What this gate's "no regression" is worth on this runner (`trainbench doctor --mde`), or how to find out."""
    from harness.history import mde_for

    env = next((r.env for r in records if r.env), {})
    e = mde_for(workload, env)
    if e is None:
        return f" (smallest detectable slowdown here: unmeasured; run `trainbench doctor --mde {workload}`)"
    finest = max((e.get("slowdown_pct") or {}).items(), key=lambda kv: int(kv[0]), default=None)
    if finest is None:
        return ""
    return (f" (this runner detects slowdowns of {finest[1]:.1f}% or more at {finest[0]} repeats: `doctor --mde` of "
            f"{str(e.get('time'))[:10]})")


WINDOW_S = 0.5
"""The measured window each run aims at when the knobs do not set bench_steps: a tiny preset's few steps
(milliseconds) measure one scheduler hiccup, not the code."""


def sized_window(workload: str, knobs: Mapping[str, Any], window_s: float = WINDOW_S) -> dict[str, Any]:
    """`knobs` plus a bench_steps giving a window of about `window_s` (from a short run of the new code in this
    process), unless the knobs set bench_steps; old and new then run the same number of steps."""
    from harness.engine import run
    from harness.registry import resolve

    if "bench_steps" in knobs:
        return dict(knobs)
    cfg = resolve(workload, knobs)
    step_ms = float(run(cfg.replace(epochs=0, bench_steps=max(cfg.bench_steps, 5))).metrics["step_ms_median"])
    return {**knobs, "bench_steps": max(cfg.bench_steps, min(2000, math.ceil(window_s * 1e3 / step_ms)))}


def against(workload: str, knobs: Mapping[str, Any], base: Base, base_root: Path, out_dir: Path, *,
            repeats: int = 3, max_repeats: int = 10, target_half_width_pct: float = 2.0,
            budget_s: float = 120.0, min_change_pct: float = MIN_CHANGE_PCT,
            new_root: Path | None = None) -> AgainstResult:
    """Run `workload` with `knobs` as old (from `base_root`) against new (`new_root`, default this working
    tree) and decide."""
    from harness.analysis.speedup import compare
    from harness.experiment import build
    from harness.launch import ByVariant, default_launcher
    from harness.registry import resolve
    from harness.results import load_records
    from harness.runner import run_experiment

    knobs = sized_window(workload, knobs)
    same = {"seed": resolve(workload, knobs).seed}  # "new" sets one knob to the value both have: an A/A pair
    exp = build(f"against-{workload}", workload, dict(knobs), {"new": same}, baseline_name="old", repeats=repeats,
                equivalence=False, allow_same=True, target_half_width_pct=target_half_width_pct,
                max_repeats=max_repeats, budget_s=budget_s)
    launcher = ByVariant({"old": default_launcher(exp, root=base_root), "new": default_launcher(exp, root=new_root)})
    try:
        run_experiment(exp, out_dir, launcher=launcher)
    finally:
        launcher.close()
    records = [r for r in load_records(out_dir) if r.phase == "speed"]
    old = [r for r in records if r.variant == "old" and r.status == "ok"]
    new = [r for r in records if r.variant == "new" and r.status == "ok"]
    label = " ".join([workload, *(f"{k}={v}" for k, v in knobs.items())])
    failed = [r for r in records if r.status != "ok"]
    if failed:
        r = failed[0]
        side = "base" if r.variant == "old" else "working tree"
        last = (r.error or "").strip().splitlines()[-1:] or ["(no error text)"]
        return AgainstResult(workload, label, base, None, None, {}, False,
                             f"old against new: {label}: a run of the {side} failed ({r.status}): {last[0]}", out_dir)
    wall = compare(old, new, clock="wall", label=label)
    cpu = compare(old, new, clock="cpu", label=label) if all(r.step_cpu_ms for r in old + new) else None
    deltas = phase_deltas(wall)
    passed, message = verdict(label, base, wall, cpu, deltas, min_change_pct)
    message += mde_note(workload, old + new)
    return AgainstResult(workload, label, base, wall, cpu, deltas, passed, message, out_dir)
