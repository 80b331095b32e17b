"""How a job's fresh process starts: launchers, the fork server, the child's environment, and killing a tree.

The default `Launcher` starts ``python -m harness.worker``; `ForkServer` forks each child from a server that
imported torch and the workload once (renewed between rounds); a job with ``ddp`` > 1 is started by torch's
launcher instead (`harness.distributed.torchrun_command`), its ranks' results gathered into one record
(`harness.distributed.gather`). On a timeout the whole process tree is killed (torchrun starts each rank in a
session of its own, so killing the launcher's process group alone would leave the ranks running).
`ByVariant` sends each variant to its own launcher (old code against new, `harness.against`).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from harness import distributed
from harness.jobs import Job, Outcome
from harness.knobs import world_of
from harness.results import folder_name

if TYPE_CHECKING:
    from harness.experiment import Experiment


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

    def import_modules(self, modules: Sequence[str]) -> None:
        """Make `modules` importable without cost in the children to come (nothing to do for plain processes,
        which import what they need)."""

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

    def __init__(self, preload: list[str], root: Path | None = None, wait: bool = True) -> None:
        """`wait=False`: return while the server still imports (a sweep starts the next experiment's server while it
        writes a report); the first job waits for it."""
        super().__init__(root)
        self.preload = preload
        self._spawn()
        self._starting = True
        if wait:
            self.ready()

    def ready(self) -> None:
        """Wait until the server has imported what it preloads (at once when it has); RuntimeError if it cannot."""
        if self._starting:
            self._await_ready()
            self._starting = False

    def _spawn(self) -> None:
        self.server = subprocess.Popen([sys.executable, "-m", "harness.forkserver", *self.preload],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       env=child_env(self.root), cwd=self.root)
        self._buf = b""

    def _await_ready(self) -> None:
        if self._line(120.0) != "ready":
            raise RuntimeError("fork server did not start")

    def import_modules(self, modules: Sequence[str]) -> None:
        """The server imports `modules` (a workload's `eval_imports`) once, so that each quality run's child has
        them already; a renewal starts a server without them again."""
        if modules:
            self.ready()
            self.server.stdin.write(f"import\t{','.join(modules)}\n".encode())
            self.server.stdin.flush()
            self._await_ready()

    def renew_start(self) -> None:
        """A new server for the next round (~2 s; `renew_finish` waits for it). Every child inherits its server's
        state: before runs got fixed malloc thresholds (`MALLOC_ENV`) the LM's CPU preset ran at 104-110,
        112-114, 114 and 120-122 samples/s from four servers, each within 2% across its own runs. One server per
        round puts whatever a server still carries between repeats, where the interval sees it, instead of
        between sweeps."""
        self.close()
        self._spawn()

    def renew_finish(self) -> None:
        self._starting = True
        self.ready()

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
        self.ready()
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


def default_launcher(exp: Experiment, root: Path | None = None, wait: bool = True) -> Launcher:
    """A fork server preloaded with the experiment's workload; plain processes if it cannot start. `wait=False`:
    the server imports in the background (`usable` then waits for it)."""
    module = exp.workload.rpartition(":")[0] if ":" in exp.workload else f"models.{exp.workload}"
    try:  # a script (``file.py:object``) is not preloaded: each child imports it as its own module
        return ForkServer([] if module.endswith(".py") else [module], root, wait=wait)
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return Launcher(root)


def usable(launcher: Launcher) -> Launcher:
    """`launcher` once it is ready (a fork server started with ``wait=False``), else plain processes."""
    try:
        if isinstance(launcher, ForkServer):
            launcher.ready()
        return launcher
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            launcher.close()
        return Launcher(launcher.root)


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

    def import_modules(self, modules: Sequence[str]) -> None:
        for launcher in self.launchers.values():
            launcher.import_modules(modules)

    def close(self) -> None:
        for launcher in self.launchers.values():
            launcher.close()
