"""Runs an experiment: every (variant, phase, repeat) in a fresh process, interleaved, with a timeout.

Order: equivalence checks first (one short step each), then speed repeats interleaved
A B C A B C so that drift (thermal, background load) hits every variant alike, then one quality
run per variant. Each job's record is appended to `records.jsonl` as soon as it ends, so a killed
sweep keeps what finished and `resume=True` runs only what is missing.

The launch step is a `Launcher`: the default starts ``python -m harness.worker``; a job with ``ddp`` > 1 is
started by torch's launcher instead (`harness.distributed.torchrun_command`), its ranks' results gathered into
one record (`harness.distributed.gather`). On a timeout the whole process tree is killed (torchrun starts each
rank in a session of its own, so killing the launcher's process group alone would leave the ranks running).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness import distributed
from harness.experiment import Experiment, knob_kinds, save_experiment
from harness.knobs import world_of
from harness.results import (
    PRECISION_FILE,
    RECORDS_FILE,
    Record,
    append,
    check_writable_dir,
    collect_env,
    folder_name,
    iter_records,
)


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


class Launcher:
    """Starts each job in a fresh ``python -m harness.worker`` process; kills its process group on timeout.

    Subclasses change how a child starts (`start`) and is awaited (`wait`): `ForkServer` below. A data-parallel
    job (``ddp`` > 1) always starts as a fresh torchrun process (`launch_ranks`).
    """

    def __init__(self, root: Path | None = None) -> None:
        self._procs: dict[int, subprocess.Popen] = {}
        self.root = root
        """Whose code the children import (None: this process's working directory; `harness.against` runs
        a base revision's exported tree)."""

    def command(self, job_file: Path, result_file: Path) -> list[str]:
        """The command line of the child."""
        return [sys.executable, "-m", "harness.worker", str(job_file), str(result_file)]

    def start(self, job_file: Path, result_file: Path, err_file: Path) -> int:
        """Start the child in its own session; returns its pid (= its process group id)."""
        return self._popen(self.command(job_file, result_file), err_file)

    def _popen(self, command: list[str], err_file: Path) -> int:
        with open(err_file, "wb") as err:
            proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True,
                                    env=child_env(self.root), cwd=self.root)
        self._procs[proc.pid] = proc
        return proc.pid

    def wait(self, pid: int, timeout: float | None) -> int:
        """The child's exit code; subprocess.TimeoutExpired when it outlives `timeout`."""
        code = self._procs[pid].wait(timeout=timeout)
        del self._procs[pid]
        return code

    def launch(self, job: Job, workdir: Path) -> Outcome:
        """Run `job` in a fresh process (torchrun for a data-parallel job) and collect what it left."""
        if world_of(job.config) > 1:
            return self.launch_ranks(job, workdir)
        job_file, result_file, err_file = workdir / "job.json", workdir / "result.json", workdir / "stderr.txt"
        job_file.write_text(json.dumps(asdict(job)))
        result_file.unlink(missing_ok=True)
        start = time.perf_counter()
        timed_out = False
        pid = self.start(job_file, result_file, err_file)
        try:
            code: int | None = self.wait(pid, job.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(pid)  # the worker and its DataLoader workers
            code = self.wait(pid, None)
        wall = time.perf_counter() - start
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        tail = err_file.read_text(errors="replace")[-3000:] if err_file.exists() else ""
        return Outcome(result, code, tail, timed_out, wall)

    def launch_ranks(self, job: Job, workdir: Path) -> Outcome:
        """A data-parallel job: torchrun starts its ranks; their results are gathered into one. On a timeout
        every rank first dumps its threads' stacks (SIGUSR1: where it hung goes into the record), then the whole
        tree is killed."""
        world = world_of(job.config)
        job_file, result_file, err_file = workdir / "job.json", workdir / "result.json", workdir / "stderr.txt"
        job_file.write_text(json.dumps(asdict(job)))
        for r in range(world):
            for suffix in (".json", ".stderr"):
                distributed.rank_file(result_file, r, suffix).unlink(missing_ok=True)
        run_id = f"{job.experiment}-{job.variant}-{job.phase}-{job.repeat}-{job.attempt}"
        start = time.perf_counter()
        timed_out = False
        pid = self._popen(distributed.torchrun_command(job.config, [str(job_file), str(result_file)],
                                                       run_id=folder_name(run_id)), err_file)
        try:
            code: int | None = Launcher.wait(self, pid, job.timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            kill_tree(pid, first=signal.SIGUSR1)
            code = Launcher.wait(self, pid, None)
        wall = time.perf_counter() - start
        tail = err_file.read_text(errors="replace")[-3000:] if err_file.exists() else ""
        results, tails = distributed.read_ranks(result_file, world)
        result = distributed.gather(results, tails, timed_out=timed_out, launcher_stderr=tail)
        return Outcome(result, code, tail, timed_out, wall)

    def renew(self) -> None:
        """Start the next round of runs from fresh state (nothing to do for plain processes)."""
        self.renew_start()
        self.renew_finish()

    def renew_start(self) -> None:
        """Begin renewing without waiting for it (`renew` = start + finish; `ByVariant` overlaps several)."""

    def renew_finish(self) -> None:
        """Wait until a renewal begun by `renew_start` is ready."""

    def close(self) -> None:
        """Release resources (nothing for plain processes)."""


class ForkServer(Launcher):
    """Forks each job's fresh process from a server that imported torch and the workload once.

    Saves the seconds of Python + torch start-up per run (see `harness.forkserver`); isolation is the
    same: a new process per (variant, repeat), its own session, killed as a group on timeout.
    """

    def __init__(self, preload: list[str], root: Path | None = None) -> None:
        super().__init__(root)
        self.preload = preload
        self._start_server()

    def _start_server(self) -> None:
        self._spawn()
        self._await_ready()

    def _spawn(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-m", "harness.forkserver", *self.preload],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       env=child_env(self.root), cwd=self.root)
        self._buf = b""

    def _await_ready(self) -> None:
        if self._line(120.0) != "ready":
            raise RuntimeError("fork server did not start")

    def renew_start(self) -> None:
        self.close()
        self._spawn()

    def renew_finish(self) -> None:
        self._await_ready()

    def renew(self) -> None:
        """A new server for the next round (~2 s). Every child inherits its server's state: before runs got
        fixed malloc thresholds (`MALLOC_ENV`) the LM's CPU preset ran at 104-110, 112-114, 114 and 120-122
        samples/s from four servers, each within 2% across its own runs. One server per round puts whatever
        a server still carries between repeats, where the interval sees it, instead of between sweeps."""
        self.close()
        self._start_server()

    def _line(self, timeout: float | None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        fd = self.server.stdout.fileno()
        while b"\n" not in self._buf:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                raise subprocess.TimeoutExpired("fork server", timeout or 0)
            data = os.read(fd, 4096)
            if not data:
                raise RuntimeError("fork server exited")
            self._buf += data
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def start(self, job_file: Path, result_file: Path, err_file: Path) -> int:
        self.server.stdin.write(f"{job_file}\t{result_file}\t{err_file}\n".encode())
        self.server.stdin.flush()
        kind, pid = self._line(60.0).split()
        assert kind == "pid", kind
        return int(pid)

    def wait(self, pid: int, timeout: float | None) -> int:
        kind, child, code = self._line(timeout).split()
        assert kind == "exit" and int(child) == pid, (kind, child, pid)
        return int(code)

    def close(self) -> None:
        self.server.stdin.close()
        self.server.wait(timeout=30)


def kill_tree(pid: int, first: int | None = None, grace_s: float = 1.0) -> None:
    """SIGKILL `pid`, its process group and every descendant with theirs (a launcher's children may sit in sessions
    of their own). With `first`, send that signal to the descendants and wait `grace_s` before (SIGUSR1: dump
    stacks)."""
    import psutil

    try:
        tree = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    if first is not None and len(tree) > 1:
        for proc in tree[1:]:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(first)
        time.sleep(grace_s)
        with contextlib.suppress(psutil.Error):  # descendants started since (DataLoader workers)
            tree += [p for p in tree[0].children(recursive=True) if p not in tree]
    groups = {pid}
    for proc in tree:
        with contextlib.suppress(psutil.Error, OSError):
            groups.add(os.getpgid(proc.pid))
    for group in groups:
        if group != os.getpgid(0):  # never this process's own group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
    for proc in tree:
        with contextlib.suppress(psutil.Error):
            proc.kill()


MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(32 * 1024**2), "MALLOC_TRIM_THRESHOLD_": str(1024**3)}
"""glibc malloc settings of every run (unless the user's environment sets them). By default glibc moves its
mmap threshold as large blocks are freed, so how a process allocates depends on its history: forked from
fork servers with different histories, the LM's CPU preset ran at 104-122 samples/s, each server's runs
within 2%. Fixed at the top of glibc's range (32 MiB; the trim threshold at 1 GiB), the steady state a
long training process reaches, six fresh servers gave 126.6-132.5 samples/s."""


def child_env(root: Path | None = None) -> dict[str, str]:
    """A child's environment: `MALLOC_ENV` unless set, and `root` (default: the working directory) first on
    PYTHONPATH, so the child imports that tree's harness and models."""
    env = {**MALLOC_ENV, **os.environ}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(root or os.getcwd()), env.get("PYTHONPATH", "")]))
    return env


def default_launcher(exp: Experiment, root: Path | None = None) -> Launcher:
    """A fork server preloaded with the experiment's workload; plain processes if it cannot start."""
    module = exp.workload.partition(":")[0] if ":" in exp.workload else f"models.{exp.workload}"
    try:
        return ForkServer([module], root)
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return Launcher(root)


class ByVariant(Launcher):
    """Each variant's jobs through its own launcher (old code and new code, `harness.against`)."""

    def __init__(self, launchers: Mapping[str, Launcher]) -> None:
        super().__init__()
        self.launchers = dict(launchers)

    def launch(self, job: Job, workdir: Path) -> Outcome:
        return self.launchers[job.variant].launch(job, workdir)

    def renew(self) -> None:
        """Every launcher's renewal at once: old and new code's servers start side by side, between rounds
        (nothing is measured then), so a round waits for the slower of them, not their sum."""
        for launcher in self.launchers.values():
            launcher.renew_start()
        for launcher in self.launchers.values():
            launcher.renew_finish()

    def close(self) -> None:
        for launcher in self.launchers.values():
            launcher.close()


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
        for v in exp.variants:
            jobs.append(Job(experiment=exp.name, variant=v, phase="quality", repeat=0,
                            config=exp.configs[v].replace(epochs=exp.quality_epochs).to_dict(),
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
        """Run an equivalence or quality job (speed jobs run by rounds: `run_round`)."""
        self._launch(job)

    def run_round(self, jobs: list[Job], extra: bool = False) -> None:
        """Run one round of speed jobs (one repeat, its variants in order) from a renewed launcher. When a run in
        it is contended or interfered, the whole round runs again (attempt + 1), so every pair of the repeat
        stays interleaved in time, while the experiment's re-runs and budget last."""
        while True:
            start = time.perf_counter()
            self.launcher.renew()  # each round (and each re-run of one) starts from a fresh fork server
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
