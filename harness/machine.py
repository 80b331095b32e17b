"""Facts about the machine a run meets: its cores, CPU quota and load, the threads a run gets, and whether
torch.compile works here.

The instrument (`harness.probes`) reads these at a window's ends; the CLI (`doctor`), the config (ranks per
core), the trainer (threads) and the pytest plugin (compile skips) ask them before anything runs.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

OVERSUBSCRIBED_MARGIN = 0.25
"""Cores: ours + the others' CPU use above the usable cores by this much means someone waited."""


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask; the machine's count where unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def proc_stat(text: str | None = None, cpus: set[int] | None = None) -> tuple[float, float, float]:
    """(busy, steal, total) seconds since boot of the CPUs this process may run on (the per-CPU lines of its
    affinity set: in a cpuset container the machine's other CPUs are someone else's); the machine's total line
    where the per-CPU lines are missing; zeros where /proc is missing."""
    try:
        lines = (Path("/proc/stat").read_text() if text is None else text).splitlines()
    except OSError:
        return 0.0, 0.0, 0.0
    if cpus is None:
        try:
            cpus = set(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            cpus = set()
    rows = [line.split()[1:] for line in lines
            if line.startswith("cpu") and line[3:4].isdigit() and int(line.split()[0][3:]) in cpus]
    if not rows:
        rows = [line.split()[1:] for line in lines[:1] if line.startswith("cpu ")]
    if not rows:
        return 0.0, 0.0, 0.0
    ticks = [sum(float(r[i]) if i < len(r) else 0.0 for r in rows) for i in range(8)]
    hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    user, nice, system, idle, iowait, irq, softirq, steal = ticks
    busy = user + nice + system + irq + softirq  # steal is time *taken from* this VM: not ours, not idle
    return busy / hz, steal / hz, (busy + idle + iowait + steal) / hz


def own_cpu_s(process: psutil.Process, children: bool = True) -> tuple[float, int]:
    """(CPU seconds of this process and its live children, involuntary context switches of this process)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu = usage.ru_utime + usage.ru_stime
    if not children:
        return cpu, usage.ru_nivcsw
    try:
        for child in process.children(recursive=True):
            try:
                t = child.cpu_times()
                cpu += t.user + t.system
            except psutil.Error:
                pass  # a worker exited between listing and reading
    except psutil.Error:
        pass
    return cpu, usage.ru_nivcsw


CGROUP_ROOT = Path("/sys/fs/cgroup")


def _cgroup_cpu_dirs() -> list[Path]:
    """This process's cgroup folders with CPU bandwidth files, innermost first (v2 unified or v1 cpu); [] if none."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    candidates = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # v2: the unified hierarchy (at the root, or under unified/ in hybrid mode)
            candidates += [CGROUP_ROOT / path.lstrip("/"), CGROUP_ROOT / "unified" / path.lstrip("/")]
        elif "cpu" in controllers.split(","):
            candidates += [CGROUP_ROOT / controllers / path.lstrip("/"), CGROUP_ROOT / "cpu" / path.lstrip("/")]
    dirs = []
    for start in candidates:
        d = start
        while True:
            if ((d / "cpu.max").exists() or (d / "cpu.cfs_quota_us").exists()) and d not in dirs:
                dirs.append(d)
            if d == CGROUP_ROOT or CGROUP_ROOT not in d.parents:
                break
            d = d.parent
    return dirs


def cpu_quota() -> tuple[float | None, float]:
    """(the tightest CPU quota over this process's cgroups in cores, None when unlimited; seconds its groups have
    been throttled so far). cgroup v2 ``cpu.max`` / ``cpu.stat throttled_usec``, v1 ``cpu.cfs_quota_us`` /
    ``cpu.cfs_period_us`` / ``cpu.stat throttled_time``; a quota set on a parent group throttles its children and
    counts in the parent's own cpu.stat, so the throttled time is summed over the chain."""
    quota, throttled = None, 0.0
    for d in _cgroup_cpu_dirs():
        try:
            if (d / "cpu.max").exists():
                q, period = (d / "cpu.max").read_text().split()[:2]
                cores = None if q == "max" else float(q) / float(period)
                key, unit = "throttled_usec", 1e-6
            else:
                q_us = float((d / "cpu.cfs_quota_us").read_text())
                cores = None if q_us < 0 else q_us / float((d / "cpu.cfs_period_us").read_text())
                key, unit = "throttled_time", 1e-9
            stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines() if " " in line)
            throttled += float(stat.get(key, 0)) * unit
        except (OSError, ValueError):
            continue
        if cores is not None:
            quota = cores if quota is None else min(quota, cores)
    return quota, throttled


def other_busy_cores(sample_s: float = 0.2) -> float:
    """Cores the other processes on this machine keep busy now (a short /proc/stat sample)."""
    process = psutil.Process(os.getpid())
    busy0, _, total0 = proc_stat()
    cpu0, _ = own_cpu_s(process)
    t0 = time.perf_counter()
    time.sleep(sample_s)
    busy1, _, total1 = proc_stat()
    cpu1, _ = own_cpu_s(process)
    if total1 <= total0:
        return 0.0
    return max(0.0, (busy1 - busy0 - (cpu1 - cpu0)) / (time.perf_counter() - t0))


def default_threads(*, device_type: str, num_workers: int = 0, ranks: int = 1,
                    other_busy: float | None = None) -> tuple[int, str]:
    """torch intra-op threads for a run whose `threads` knob is 0 (auto), and why.

    Half of the cores this process may use once DataLoader workers have theirs, shared among the
    ranks on this machine, never more than the cores the other processes leave free, at least one.
    Half, not all: torch's threads spin while they wait for work, so a pool as large as the machine
    turns any other process into stalls of tens of milliseconds (one thread per core made a tiny LM
    step 3 ms or 220 ms at random beside one busy process; one thread held it at 1.9 ms).
    """
    cores = usable_cores()
    share = max(1, (cores - num_workers) // 2 // max(1, ranks))
    reason = (f"half of the {cores} usable cores" + (f" less {num_workers} DataLoader workers" if num_workers else "")
              + (f", shared by {ranks} ranks" if ranks > 1 else ""))
    if device_type == "cpu" and share > 1:
        other = other_busy_cores() if other_busy is None else other_busy
        free = max(1, int(cores - num_workers - round(other)) // max(1, ranks))
        if free < share:
            share, reason = free, f"{reason}, cut to what {other:.1f} busy cores of other processes leave"
    return share, f"threads=0 (auto): {share} = {reason}; set threads=N to override"


@dataclass(frozen=True, slots=True)
class MachineCheck:
    """The machine before a sweep: who else is busy, and whether torch's threads scale here."""

    usable_cores: int
    other_busy_cores: float
    load_avg_1m: float
    busy_processes: tuple[str, ...]
    """``name (pid): NN% CPU`` of other processes above 20% of a core during the sample."""
    matmul_ms_1_thread: float
    matmul_ms_all_threads: float
    """The same fixed matmul with one intra-op thread per usable core (torch's default)."""
    auto_threads: int
    auto_reason: str

    @property
    def quiet(self) -> bool:
        """No other process kept a quarter of a core busy."""
        return self.other_busy_cores < OVERSUBSCRIBED_MARGIN

    def advice(self) -> list[str]:
        """What trainbench will do on this machine, one line each."""
        lines = [f"threads: {self.auto_reason}"]
        if self.quiet:
            lines.append("no other process is busy: runs of this session compare with each other; across sessions "
                         "the host itself may have moved (the machine state above against the best, and each "
                         "report's Reproducibility section)")
        else:
            lines.append(f"other processes keep {self.other_busy_cores:.1f} of {self.usable_cores} cores busy: "
                         "speed runs whose steps wait for a core are marked contended and re-run (within each "
                         "experiment's max_reruns and budget_s); stop them for the steadiest figures")
        if self.matmul_ms_all_threads > 1.5 * self.matmul_ms_1_thread:
            lines.append(f"torch's default of {self.usable_cores} threads runs a fixed matmul "
                         f"{self.matmul_ms_all_threads / self.matmul_ms_1_thread:.1f}x slower than 1 thread here: "
                         "its threads spin against other work (keep threads=0 (auto) or set threads=1)")
        return lines


def _matmul_ms(threads: int, size: int = 256, reps: int = 20) -> float:
    """Median ms of a fixed (size x size) float32 matmul with `threads` intra-op threads."""
    import statistics

    import torch

    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a = torch.randn(size, size, generator=torch.Generator().manual_seed(0))
        a @ a  # warm the pool and the kernels
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            a @ a
            times.append((time.perf_counter() - t0) * 1e3)
        return statistics.median(times)
    finally:
        torch.set_num_threads(saved)


def check_machine(sample_s: float = 0.5) -> MachineCheck:
    """Measure the machine now: other processes' CPU use (and which), load, 1 vs all-core matmul speed."""
    me = os.getpid()
    procs = []
    for proc in psutil.process_iter(["pid", "name"]):
        try:
            if proc.pid != me:
                proc.cpu_percent(None)
                procs.append(proc)
        except psutil.Error:
            pass
    other = other_busy_cores(sample_s)
    busy = []
    for proc in procs:
        try:
            pct = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if pct > 20.0:
            try:
                what = " ".join(proc.cmdline())[:70] or proc.info["name"]
            except psutil.Error:
                what = proc.info["name"]
            busy.append((pct, f"pid {proc.pid}, {pct:.0f}% CPU: {what}"))
    cores = usable_cores()
    threads, reason = default_threads(device_type="cpu", other_busy=other)
    return MachineCheck(usable_cores=cores, other_busy_cores=other,
                        load_avg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
                        busy_processes=tuple(text for _, text in sorted(busy, reverse=True)[:5]),
                        matmul_ms_1_thread=_matmul_ms(1), matmul_ms_all_threads=_matmul_ms(cores),
                        auto_threads=threads, auto_reason=reason)


def unavailable_for(configs: Iterable[Any]) -> str | None:
    """Why the first of `configs` that compiles cannot run here (`compile_unavailable` in its mode); None when
    none compiles or compiling works."""
    mode = next((c.compile_mode for c in configs if c.compile), None)
    return compile_unavailable(mode) if mode is not None else None


def compile_unavailable(mode: str = "default") -> str | None:
    """None when torch.compile works here; else why not, in one line. Compiles a two-op function with a
    gradient once (a cache hit after the first run on a machine)."""
    import torch

    def f(x: torch.Tensor) -> torch.Tensor:
        return (x.sin() * 2).sum()

    try:
        fn = torch.compile(f, mode=None if mode == "default" else mode)
        x = torch.ones(3, requires_grad=True)
        fn(x).backward()
    except Exception as exc:  # any failure here is the machine's, not the model's
        first = (str(exc).strip().splitlines() or [""])[0]
        return f"torch.compile is unavailable here ({type(exc).__name__}: {first[:200]})"
    finally:
        try:
            torch._dynamo.reset()  # the probe's frame must not count as the model's compilation
        except Exception:
            pass
    return None
