"""What an experiment runs and what each run leaves: jobs, the plan, and a child's outcome as records.

`plan` lists the jobs of an experiment (equivalence checks, speed repeats in rotated order, quality
runs); a `Launcher` (`harness.launch`) runs each and returns its `Outcome`; `records_from` turns that
outcome, or its absence (a crash, a timeout), into the records the analysis reads. `run_group_here` is
paired mode in this process, producing the same records.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from harness.experiment import Experiment, knob_kinds
from harness.results import Record, collect_env


@dataclass(frozen=True, kw_only=True, slots=True)
class Job:
    """One unit of work for a child process."""

    experiment: str
    variant: str
    phase: str
    repeat: int
    config: dict[str, Any]
    base_config: dict[str, Any] | None = None
    timeout_s: float = 600.0
    group: tuple[dict[str, Any], ...] = ()
    """Paired mode: the configs of every member, interleaved step by step in this one process."""
    group_variants: tuple[str, ...] = ()
    """The members' variant names (`variant` is the first's)."""
    rounds: int = 0
    warmup_rounds: int = 0
    attempt: int = 0

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.variant, self.phase, self.repeat)

    @property
    def keys(self) -> list[tuple[str, str, int]]:
        """The record keys this job produces (one per member of a group)."""
        return [(v, self.phase, self.repeat) for v in self.group_variants] if self.group else [self.key]


def group_job(experiment: str, variants: Mapping[str, Any], *, repeat: int, rounds: int,
              warmup_rounds: int = 3, timeout_s: float = 600.0, attempt: int = 0) -> Job:
    """A job running `variants` (name -> RunConfig) interleaved step by step in one fresh process."""
    names = list(variants)
    configs = tuple(getattr(c, "cfg", c).replace(epochs=0).to_dict() for c in variants.values())
    return Job(experiment=experiment, variant=names[0], phase="speed", repeat=repeat, config=configs[0],
               timeout_s=timeout_s, group=configs, group_variants=tuple(names), rounds=rounds,
               warmup_rounds=warmup_rounds, attempt=attempt)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What came back from a child."""

    result: dict[str, Any] | None
    returncode: int | None
    stderr_tail: str
    timed_out: bool
    wall_s: float


def plan(exp: Experiment) -> tuple[list[Job], list[Record]]:
    """(jobs to launch, records known without launching: equivalence skipped for quality knobs)."""
    base = exp.configs[exp.baseline_name]
    jobs: list[Job] = []
    skipped: list[Record] = []
    env = collect_env() if exp.equivalence else {}
    if exp.equivalence:
        for v in exp.variants[1:]:
            kinds = knob_kinds(exp, v)
            cfg = exp.configs[v]
            if kinds <= {"exact", "approx"}:
                jobs.append(Job(experiment=exp.name, variant=v, phase="equivalence", repeat=0,
                                config=cfg.to_dict(), base_config=base.to_dict(), timeout_s=exp.timeout_s))
            else:
                changed = ", ".join(f"{k}={b}->{w}" for k, (b, w) in exp.changed_knobs(v).items())
                skipped.append(_record(exp.name, Job(experiment=exp.name, variant=v, phase="equivalence", repeat=0,
                                                config=cfg.to_dict()), "ok", env=env, equivalence={
                    "passed": None, "reason": f"not checked: changes training ({changed}); compare quality instead",
                    "compared": []}))
    names = list(exp.variants)
    for r in range(exp.repeats):
        # round r starts at variant r (A B C, B C A, C A B, ...): no variant always runs first
        for v in names[r % len(names):] + names[:r % len(names)]:
            jobs.append(Job(experiment=exp.name, variant=v, phase="speed", repeat=r,
                            config=exp.configs[v].replace(epochs=0).to_dict(), timeout_s=exp.timeout_s))
    if exp.quality_epochs > 0:
        # seed by seed, every variant at each (repeat = the seed's offset): a variant's change pairs with the
        # baseline's at the same seed (init and data order; the data itself comes from data_seed, fixed)
        for offset in range(exp.quality_seeds):
            for v in exp.variants:
                cfg = exp.configs[v]
                jobs.append(Job(experiment=exp.name, variant=v, phase="quality", repeat=offset,
                                config=cfg.replace(epochs=exp.quality_epochs, seed=cfg.seed + offset).to_dict(),
                                timeout_s=exp.timeout_s))
    return jobs, skipped


def _record(experiment: str, job: Job, status: str, member: int = 0, **fields: Any) -> Record:
    cfg = job.group[member] if job.group else job.config
    variant = job.group_variants[member] if job.group else job.variant
    return Record(experiment=experiment, variant=variant, phase=job.phase, repeat=job.repeat,
                  workload=cfg["workload"], preset=cfg["preset"], seed=cfg["seed"], config=cfg, status=status,
                  attempt=job.attempt, **fields)


def _result_fields(res: Mapping[str, Any]) -> dict[str, Any]:
    pairing = dict(res.get("pairing") or {})
    return dict(warnings=tuple(res.get("warnings", ())), metrics=res.get("metrics", {}),
                phase_ms=res.get("phase_ms", {}), step_ms=tuple(res.get("step_ms", ())),
                step_cpu_ms=tuple(res.get("step_cpu_ms", ())), quality=res.get("quality", {}),
                curve=tuple(res.get("curve", ())), equivalence=res.get("equivalence", {}),
                timeline=res.get("timeline", {}), contention=res.get("contention", {}), pairing=pairing,
                ranks=tuple(res.get("ranks", ())), state=res.get("state") or {}, totals=res.get("totals") or {})


def records_from(experiment: str, job: Job, outcome: Outcome) -> list[Record]:
    """Turn a child's outcome (or its absence) into its records: one, or one per member of a group."""
    res = outcome.result
    members = range(len(job.group)) if job.group else range(1)
    if outcome.timed_out:
        detail = res["error"] if res and res.get("ranks") else outcome.stderr_tail[-1500:]
        error = (f"exceeded timeout_s={job.timeout_s:g} and was killed; raise timeout_s or lower the budget\n"
                 f"{detail}")
        ranks = tuple(res.get("ranks", ())) if res else ()
        return [_record(experiment, job, "timeout", m, error=error, env=collect_env(), wall_s=outcome.wall_s,
                        ranks=ranks) for m in members]
    if res is None:
        error = (f"child exited with code {outcome.returncode} and no result (killed by the OS? out of memory?)\n"
                 f"{outcome.stderr_tail}")
        return [_record(experiment, job, "crash", m, error=error, env=collect_env(), wall_s=outcome.wall_s)
                for m in members]
    if job.group and res["status"] == "ok":
        out = []
        for m, fields in enumerate(res["members"]):
            fields = _result_fields(fields)
            fields["pairing"] = {**fields["pairing"], "variants": list(job.group_variants)}
            out.append(_record(experiment, job, "ok", m, env=res.get("env", {}), wall_s=outcome.wall_s, **fields))
        return out
    return [_record(experiment, job, res["status"], m, error=res.get("error", ""), env=res.get("env") or collect_env(),
                    wall_s=outcome.wall_s, **_result_fields(res)) for m in members]


def record_from(exp: Experiment, job: Job, outcome: Outcome) -> Record:
    """The record of a single-config job (see `records_from` for groups)."""
    return records_from(exp.name, job, outcome)[0]


def run_group_here(experiment: str, variants: Mapping[str, Any], *, rounds: int, warmup_rounds: int = 3,
                   run_rounds: Callable[[Callable[[], None], int, int], None] | None = None,
                   repeat: int = 0) -> list[Record]:
    """Paired mode in *this* process (the pytest plugin: its planted regressions and pytest-benchmark's
    round driver live here): the same records a group job's fresh process would produce. A value of
    `variants` is a RunConfig or a prepared `Trainer`."""
    import warnings

    from harness import engine
    from harness.worker import result_fields

    job = group_job(experiment, variants, repeat=repeat, rounds=rounds, warmup_rounds=warmup_rounds)
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = engine.run_group(list(variants.values()), rounds=rounds, warmup_rounds=warmup_rounds,
                                   run_rounds=run_rounds)
    members = [result_fields(r, caught) for r in results]
    outcome = Outcome({"status": "ok", "env": collect_env(), "members": members}, 0, "", False,
                      time.perf_counter() - start)
    return records_from(experiment, job, outcome)
