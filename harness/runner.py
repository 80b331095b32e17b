"""Runs an experiment: every (variant, phase, repeat) in a fresh process, interleaved, with a timeout.

Order: equivalence checks first (one short step each), then speed repeats interleaved
A B C A B C so that drift (thermal, background load) hits every variant alike, then one quality
run per variant. Each job's record is appended to `records.jsonl` as soon as it ends, so a killed
sweep keeps what finished and `resume=True` runs only what is missing. A contended speed run re-runs
its whole round; repeats are added until every interval is tight enough or the budget is spent.

What runs is `harness.jobs` (the plan, and each outcome as records); how each child starts is
`harness.launch` (fork server, torchrun, killing a tree on timeout).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from harness.experiment import Experiment, knob_kinds, save_experiment
from harness.jobs import Job, plan, records_from
from harness.knobs import world_of
from harness.launch import Launcher, default_launcher
from harness.results import (
    PRECISION_FILE,
    RECORDS_FILE,
    Record,
    append,
    check_writable_dir,
    iter_records,
)


class _Sweep:
    """Runs jobs for `run_experiment`: appends records as they come, re-runs contended speed runs and adds
    repeats until the intervals are tight, both within the experiment's budget."""

    def __init__(self, exp: Experiment, out: Path, launcher: Launcher, workdir: Path, prior: list[Record],
                 progress: Callable[[int, int, Job, Record | None], None] | None,
                 deadline: float | None = None) -> None:
        self.exp, self.out, self.launcher, self.workdir, self.progress = exp, out, launcher, workdir, progress
        self.deadline = deadline
        """`time.monotonic()` after which no re-run or added repeat starts (a sweep-wide time budget)."""
        self.records = list(prior)
        self.done: list[Record] = []
        self.count, self.planned = 0, 0
        self.reruns = sum(r.attempt > 0 for r in prior)
        self.extra_s = 0.0
        """Seconds spent on re-runs and added repeats (bounded by `exp.budget_s`)."""
        self.notes: list[str] = []
        self.renew_s = 0.0
        """Seconds the last renewal took (part of an added round's cost)."""
        self.fresh = True
        """The launcher has run no speed round since it started: the first round needs no renewal."""
        self.preloaded = False

    def _launch(self, job: Job) -> list[Record]:
        self.count += 1
        if self.progress:
            self.progress(self.count, self.planned, job, None)
        recs = records_from(self.exp.name, job, self.launcher.launch(job, self.workdir))
        for rec in recs:
            append(self.out, rec)
            self.records.append(rec)
            self.done.append(rec)
        if self.progress:
            self.progress(self.count, self.planned, job, recs[-1])
        return recs

    def run(self, job: Job) -> None:
        """Run an equivalence or quality job (speed jobs run by rounds: `run_round`); a quality job of a variant
        proven to compute the baseline's function takes the baseline's record of its seed instead (`reused`)."""
        if job.phase == "quality" and (rec := self.reused(job)) is not None:
            self.count += 1
            if self.progress:
                self.progress(self.count, self.planned, job, None)
            append(self.out, rec)
            self.records.append(rec)
            self.done.append(rec)
            if self.progress:
                self.progress(self.count, self.planned, job, rec)
            return
        if job.phase == "quality" and not self.preloaded:
            from harness.registry import get

            self.launcher.import_modules(get(self.exp.workload).eval_imports)
            self.preloaded, self.fresh = True, False  # a later speed round starts from a server without them
        self._launch(job)

    def reused(self, job: Job) -> Record | None:
        """The baseline's quality record of `job`'s seed as `job.variant`'s, when the experiment reuses
        (`quality_reuse`), the variant changes only exact knobs and its equivalence check passed: the same function
        from the same seed trains the same model, so training it again measures nothing new. None otherwise.
        The copy keeps the quality, the curve's epochs and losses, and drops every figure of time (the variant's
        speed is its own: its speed runs measure it)."""
        exp = self.exp
        if not exp.quality_reuse or job.variant == exp.baseline_name or knob_kinds(exp, job.variant) != {"exact"}:
            return None
        checks = [r for r in self.records if r.variant == job.variant and r.phase == "equivalence" and r.status == "ok"]
        base = [r for r in self.records if r.variant == exp.baseline_name and r.phase == "quality"
                and r.repeat == job.repeat and r.status == "ok"]
        if not checks or checks[-1].equivalence.get("passed") is not True or not base:
            return None
        b = base[-1]
        return dataclasses.replace(
            b, variant=job.variant, config=job.config, seed=job.config["seed"], attempt=job.attempt,
            reused_from=exp.baseline_name, wall_s=0.0, warnings=(), phase_ms={}, step_ms=(), step_cpu_ms=(),
            timeline={}, contention={}, state={}, totals={}, pairing={},
            metrics={k: v for k, v in b.metrics.items() if k in ("best_epoch", "epochs_run", "final_loss")},
            curve=tuple({**p, "wall_s": float("nan")} for p in b.curve))

    def run_round(self, jobs: list[Job], extra: bool = False) -> None:
        """Run one round of speed jobs (one repeat, its variants in order) from a renewed launcher. When a run in
        it is contended or interfered, the whole round runs again (attempt + 1), so every pair of the repeat
        stays interleaved in time, while the experiment's re-runs and budget last."""
        while True:
            start = time.perf_counter()
            if not self.fresh:  # each round (and each re-run of one) starts from a fresh fork server; the
                self.launcher.renew()  # first needs none (a server's own state is not changed by its children)
            self.fresh, self.preloaded = False, False
            self.renew_s = time.perf_counter() - start
            disturbed = [f"{job.variant} {why}" for job in jobs if (why := self.disturbed(self._launch(job)))]
            if extra or jobs[0].attempt > 0:
                self.extra_s += time.perf_counter() - start
            if not disturbed:
                return
            why = "re-runs" if self.reruns + len(jobs) > self.exp.max_reruns else \
                "budget" if self.extra_s >= self.exp.budget_s else \
                "sweep's time budget" if self.seconds_left() < self.run_s() * len(jobs) else ""
            if why:
                self.notes.append(f"repeat {jobs[0].repeat}: {', '.join(disturbed)}; its round was not re-run "
                                  f"(the {why} of the experiment is spent)")
                return
            self.reruns += len(jobs)
            self.planned += len(jobs)
            jobs = [dataclasses.replace(job, attempt=job.attempt + 1) for job in jobs]

    def disturbed(self, recs: list[Record]) -> str:
        """"contended" or "interfered" (`harness.analysis.reproducibility`: its state kernels ran slower than this
        session's median so far) when a speed run must be re-run; empty when it stands."""
        from harness.analysis.reproducibility import interference, session_state

        ok = [r for r in recs if r.status == "ok"]
        if any(r.contention.get("verdict") for r in ok):
            return "contended"
        reference = session_state(self.records)
        return "interfered" if any(interference(r, reference) for r in ok) else ""

    def seconds_left(self) -> float:
        """Seconds until the sweep-wide deadline (infinite without one)."""
        return float("inf") if self.deadline is None else self.deadline - time.monotonic()

    def run_s(self) -> float:
        """Mean seconds of this experiment's speed runs so far (what one more is expected to take)."""
        walls = [r.wall_s for r in self.records if r.phase == "speed" and r.status == "ok" and r.wall_s]
        return sum(walls) / len(walls) if walls else 0.0

    def precise_enough(self, variant: str) -> bool:
        """The sequential stopping rule (`stats.precise_enough`) on the variant's speedup so far."""
        from harness.analysis.speedup import estimate
        from harness.analysis.stats import precise_enough

        def speed(v: str) -> list[Record]:
            return [r for r in self.records if r.variant == v and r.phase == "speed"]

        est, _ = estimate(speed(self.exp.baseline_name), speed(variant))
        return precise_enough(est, self.exp.target_half_width_pct)

    def _measurable(self, variant: str) -> bool:
        """More repeats can only tighten an interval whose runs work: a variant (or a baseline) with a
        failed speed run (crash, OOM, NaN, timeout) gets none."""
        failed = {r.variant for r in self.records if r.phase == "speed" and r.status != "ok"}
        return variant not in failed and self.exp.baseline_name not in failed

    def repeats_of(self, variant: str) -> int:
        """Speed repeats of `variant` that ran (a re-run counts once)."""
        return len({r.repeat for r in self.records if r.variant == variant and r.phase == "speed"})

    def adapt(self, first_repeat: int, job_for: Callable[[str, int], Job]) -> None:
        """Add interleaved rounds (the baseline and every unresolved variant, each in a fresh process)
        until each speedup's interval reaches the target half-width from at least `stats.MIN_STOP_REPEATS`
        repeats on (the stopping rule whose coverage bench/simulate_coverage.py measures), the variant has
        `max_repeats` repeats, or the budget is spent.

        Added rounds do not use the engine's paired mode (two configs' steps in one process): measured
        here, paired rounds gave other ratios than separate processes for the same comparison (the LM's
        duplicate forward x0.74-0.75 paired vs x0.85-0.89 alone, in one sweep, measured before runs got
        fixed malloc thresholds, which may have been the cause), so mixing the two in one interval would
        widen it with a bias, not with noise. Paired mode stays the pytest plugin's (both sides of a gate
        are measured the same way there)."""
        exp = self.exp
        if exp.target_half_width_pct <= 0 or len(exp.variants) < 2:
            return
        repeat, capped = first_repeat, []
        target = f"±{exp.target_half_width_pct:g}%"
        while True:
            unresolved = [v for v in exp.variants[1:] if self._measurable(v) and not self.precise_enough(v)]
            capped += [v for v in unresolved if self.repeats_of(v) >= exp.max_repeats and v not in capped]
            unresolved = [v for v in unresolved if v not in capped]
            if not unresolved:
                break
            names = [exp.baseline_name, *unresolved]
            round_s = self.run_s() * len(names) + self.renew_s
            if self.extra_s + round_s > exp.budget_s or round_s > self.seconds_left():
                budget = f"budget_s={exp.budget_s:g}" if self.extra_s + round_s > exp.budget_s else \
                    "the sweep's time budget"
                self.notes.append(f"{budget} spent before the target {target} for: {', '.join(unresolved)}")
                break
            self.planned += len(names)
            self.run_round([job_for(v, repeat) for v in names[repeat % len(names):] + names[:repeat % len(names)]],
                           extra=True)  # rotated, as planned
            repeat += 1
        if capped:
            self.notes.append(f"max_repeats={exp.max_repeats} reached before the target {target} for: "
                              f"{', '.join(capped)}")


def preflight(exp: Experiment) -> None:
    """Refuse (ValueError / TypeError, before anything is written) what can be known before a run starts: a
    batch larger than the training split; a workload whose loss() returns the wrong type (checked on one
    batch for workloads from outside the project: the built-in ones are held to it by their tests).
    Missing data files are refused earlier, by the workload's `validate` when the config is resolved."""
    from harness import registry
    from harness.config import all_knobs
    from harness.trainer import check_contract

    sizes: dict[str, int] = {}
    for name, cfg in exp.configs.items():
        # exact/approx/budget knobs and the micro-batching cannot change the training split: one build per rest
        kinds = {k: knob.kind for k, knob in all_knobs(cfg.get_workload()).items()}
        data = {k: v for k, v in cfg.to_dict().items()
                if kinds.get(k) == "quality" and k not in ("batch_size", "grad_accum")}
        key = json.dumps(data, sort_keys=True, default=str)
        if key not in sizes:
            train, _ = cfg.get_workload().build_datasets(cfg)  # generated once, then read from the cache
            if not sizes and cfg.workload not in registry.builtin() and len(train):
                check_contract(cfg, train)  # the first config only: one small model build
            sizes[key] = len(train)
        ranks = world_of(cfg.values)
        if cfg.batch_size * ranks > sizes[key]:
            per_rank = f" x {ranks} ranks" if ranks > 1 else ""
            raise ValueError(f"variant '{name}': batch_size={cfg.batch_size}{per_rank} exceeds the {sizes[key]:,} "
                             f"training samples of {cfg.workload} preset={cfg.preset}; use batch_size <= "
                             f"{sizes[key] // ranks}")


def run_experiment(exp: Experiment, out_dir: str | os.PathLike[str], *, resume: bool = False,
                   launcher: Launcher | None = None,
                   progress: Callable[[int, int, Job, Record | None], None] | None = None,
                   deadline: float | None = None) -> list[Record]:
    """Run every job not already recorded; returns the records of this call (skipped included).

    Equivalence checks, then the planned speed rounds (A B C, B C A, C A B, ...), a round with a contended or
    interfered run run again whole within the budget; then the quality runs; then added rounds for variants whose
    speedup interval is still wider than the target (or rests on fewer than `stats.MIN_STOP_REPEATS` repeats),
    within the experiment's budget and before `deadline`
    (`time.monotonic()`; a sweep-wide budget) when given. What was re-run or left unresolved, and why, goes to
    `precision.json` beside the records.
    """
    out = check_writable_dir(out_dir)
    preflight(exp)
    prior = list(iter_records(out))
    existing = {r.key for r in prior}
    if existing and not resume:
        raise ValueError(f"'{out}' already holds records ({RECORDS_FILE}); pass --resume to finish it or "
                         "choose another --out")
    jobs, skipped = plan(exp)
    out.mkdir(parents=True, exist_ok=True)
    save_experiment(exp, out)  # experiment.json and workload.json: the directory describes itself
    done: list[Record] = []
    for rec in skipped:
        if rec.key not in existing:
            append(out, rec)
            done.append(rec)
    todo = [j for j in jobs if not set(j.keys) <= existing]
    launcher = launcher or default_launcher(exp)

    def job_for(variant: str, repeat: int) -> Job:
        return Job(experiment=exp.name, variant=variant, phase="speed", repeat=repeat,
                   config=exp.configs[variant].replace(epochs=0).to_dict(), timeout_s=exp.timeout_s)

    try:
        with tempfile.TemporaryDirectory(prefix="trainbench-") as tmp:
            sweep = _Sweep(exp, out, launcher, Path(tmp), prior + done, progress, deadline)
            sweep.planned = len(todo)
            for _, group in itertools.groupby(todo, key=lambda j: (j.phase, j.repeat) if j.phase == "speed" else id(j)):
                jobs_ = list(group)
                if jobs_[0].phase == "speed":
                    sweep.run_round(jobs_)
                else:
                    sweep.run(jobs_[0])
            if exp.repeats > 0:
                sweep.adapt(max([exp.repeats, *(r.repeat + 1 for r in sweep.records if r.phase == "speed")]),
                            job_for)
            done += sweep.done
            if any(r.phase == "speed" for r in sweep.records):
                from harness.history import snapshot

                try:  # sessions.json beside the records; this session into the history
                    snapshot(out, exp.baseline_name)
                except OSError as exc:  # an unwritable history never costs the sweep its records
                    sweep.notes.append(f"session history not written ({exc}); set TRAINBENCH_HISTORY to a "
                                       "writable file")
            if sweep.notes or sweep.reruns or sweep.extra_s:
                (out / PRECISION_FILE).write_text(json.dumps(
                    {"reruns": sweep.reruns, "extra_s": sweep.extra_s, "notes": sweep.notes,
                     **exp.precision}, indent=2))
    finally:
        launcher.close()
    return done
