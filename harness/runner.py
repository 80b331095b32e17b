"""Runs an experiment: every (variant, phase, repeat) in a fresh process, interleaved, with a timeout.

Order: equivalence checks first (one short step each), then speed repeats interleaved
A B C A B C so that drift (thermal, background load) hits every variant alike, then one quality
run per variant. Each job's record is appended to `records.jsonl` as soon as it ends, so a killed
sweep keeps what finished and `resume=True` runs only what is missing.

The launch step is a `Launcher`: the default starts ``python -m harness.worker``; a distributed
launcher (torchrun for a future ``ddp=N`` knob) only has to build a different command line.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.experiment import Experiment, knob_kinds, save_experiment
from harness.results import RECORDS_FILE, Record, append, collect_env, iter_records


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

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.variant, self.phase, self.repeat)


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

    Subclasses change how a child starts (`start`) and is awaited (`wait`): `ForkServer` below, or
    torchrun for a future ``ddp=N`` knob (override `command`).
    """

    def __init__(self) -> None:
        self._procs: dict[int, subprocess.Popen] = {}

    def command(self, job_file: Path, result_file: Path) -> list[str]:
        """The command line of the child."""
        return [sys.executable, "-m", "harness.worker", str(job_file), str(result_file)]

    def start(self, job_file: Path, result_file: Path, err_file: Path) -> int:
        """Start the child in its own session; returns its pid (= its process group id)."""
        with open(err_file, "wb") as err:
            proc = subprocess.Popen(self.command(job_file, result_file), stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, env=_child_env())
        self._procs[proc.pid] = proc
        return proc.pid

    def wait(self, pid: int, timeout: float | None) -> int:
        """The child's exit code; subprocess.TimeoutExpired when it outlives `timeout`."""
        code = self._procs[pid].wait(timeout=timeout)
        del self._procs[pid]
        return code

    def launch(self, job: Job, workdir: Path) -> Outcome:
        """Run `job` in a fresh process and collect what it left."""
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
            os.killpg(pid, signal.SIGKILL)  # the worker and its DataLoader workers
            code = self.wait(pid, None)
        wall = time.perf_counter() - start
        result = json.loads(result_file.read_text()) if result_file.exists() else None
        tail = err_file.read_text(errors="replace")[-3000:] if err_file.exists() else ""
        return Outcome(result, code, tail, timed_out, wall)

    def close(self) -> None:
        """Release resources (nothing for plain processes)."""


class ForkServer(Launcher):
    """Forks each job's fresh process from a server that imported torch and the workload once.

    Saves the seconds of Python + torch start-up per run (see `harness.forkserver`); isolation is the
    same: a new process per (variant, repeat), its own session, killed as a group on timeout.
    """

    def __init__(self, preload: list[str]) -> None:
        super().__init__()
        self.server = subprocess.Popen([sys.executable, "-m", "harness.forkserver", *preload],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       env=_child_env())
        self._buf = b""
        if self._line(120.0) != "ready":
            raise RuntimeError("fork server did not start")

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


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.getcwd(), env.get("PYTHONPATH", "")]))
    return env


def default_launcher(exp: Experiment) -> Launcher:
    """A fork server preloaded with the experiment's workload; plain processes if it cannot start."""
    module = exp.workload.partition(":")[0] if ":" in exp.workload else f"models.{exp.workload}"
    try:
        return ForkServer([module])
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return Launcher()


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
                skipped.append(_record(exp, Job(experiment=exp.name, variant=v, phase="equivalence", repeat=0,
                                                config=cfg.to_dict()), "ok", env=env, equivalence={
                    "passed": None, "reason": f"not checked: changes training ({changed}); compare quality instead",
                    "compared": []}))
    for r in range(exp.repeats):
        for v in exp.variants:
            jobs.append(Job(experiment=exp.name, variant=v, phase="speed", repeat=r,
                            config=exp.configs[v].replace(epochs=0).to_dict(), timeout_s=exp.timeout_s))
    if exp.quality_epochs > 0:
        for v in exp.variants:
            jobs.append(Job(experiment=exp.name, variant=v, phase="quality", repeat=0,
                            config=exp.configs[v].replace(epochs=exp.quality_epochs).to_dict(),
                            timeout_s=exp.timeout_s))
    return jobs, skipped


def _record(exp: Experiment, job: Job, status: str, **fields: Any) -> Record:
    cfg = job.config
    return Record(experiment=exp.name, variant=job.variant, phase=job.phase, repeat=job.repeat,
                  workload=cfg["workload"], preset=cfg["preset"], seed=cfg["seed"], config=cfg, status=status,
                  **fields)


def record_from(exp: Experiment, job: Job, outcome: Outcome) -> Record:
    """Turn a child's outcome (or its absence) into a record."""
    res = outcome.result
    if outcome.timed_out:
        return _record(exp, job, "timeout", error=f"exceeded timeout_s={job.timeout_s:g} and was killed; "
                       f"raise timeout_s or lower the budget\n{outcome.stderr_tail[-1500:]}",
                       env=collect_env(), wall_s=outcome.wall_s)
    if res is None:
        return _record(exp, job, "crash", error=f"child exited with code {outcome.returncode} and no result "
                       f"(killed by the OS? out of memory?)\n{outcome.stderr_tail}", env=collect_env(),
                       wall_s=outcome.wall_s)
    return _record(exp, job, res["status"], error=res.get("error", ""), env=res.get("env", {}),
                   warnings=tuple(res.get("warnings", ())), metrics=res.get("metrics", {}),
                   phase_ms=res.get("phase_ms", {}), step_ms=tuple(res.get("step_ms", ())),
                   quality=res.get("quality", {}), curve=tuple(res.get("curve", ())),
                   equivalence=res.get("equivalence", {}), timeline=res.get("timeline", {}),
                   wall_s=outcome.wall_s)


def run_experiment(exp: Experiment, out_dir: str | os.PathLike[str], *, resume: bool = False,
                   launcher: Launcher | None = None,
                   progress: Callable[[int, int, Job, Record | None], None] | None = None) -> list[Record]:
    """Run every job not already recorded; returns the records of this call (skipped included)."""
    out = Path(out_dir)
    existing = {r.key for r in iter_records(out)}
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
    todo = [j for j in jobs if j.key not in existing]
    if not todo:
        return done
    launcher = launcher or default_launcher(exp)
    try:
        with tempfile.TemporaryDirectory(prefix="trainbench-") as tmp:
            for i, job in enumerate(todo, 1):
                if progress:
                    progress(i, len(todo), job, None)
                rec = record_from(exp, job, launcher.launch(job, Path(tmp)))
                append(out, rec)
                done.append(rec)
                if progress:
                    progress(i, len(todo), job, rec)
    finally:
        launcher.close()
    return done
