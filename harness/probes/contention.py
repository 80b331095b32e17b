"""Did this run wait for a CPU? Evidence from the kernel over the measured window, and the verdict.

Read at the window's two ends (no thread, nothing per step):

- this process's CPU time and involuntary context switches (``getrusage``: all its threads), plus its
  live children's CPU time (DataLoader workers);
- the busy and steal time of the CPUs this process may run on (``/proc/stat``'s per-CPU lines of its affinity
  set), so the CPU the *other* processes used there during the window is that busy time minus ours;
- the CPU quota of its cgroups and the time they were throttled by it (``cpu.max`` / ``cpu.cfs_quota_us`` and
  ``cpu.stat``);
- the cores this process may run on (``sched_getaffinity``) and the load average.

Per step, the trainer's clock gives wall and CPU time; with one intra-op thread and no worker
processes, a step's wall time beyond its CPU time on a CPU run is time spent waiting for a core.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import psutil

from harness.machine import OVERSUBSCRIBED_MARGIN, cpu_quota, own_cpu_s, proc_stat, usable_cores

WAITED_PCT = 10.0
"""A single-threaded CPU run whose wall time exceeds its CPU time by this much waited for a core."""
PREEMPTED_PER_S = 20.0
"""Involuntary context switches per second that make wall-minus-CPU time a wait for a core (not a sleep)."""
THROTTLED_PCT = 1.0
"""A window throttled by a cgroup CPU quota for more than this share of its length is contended."""


@dataclass(frozen=True, slots=True)
class ContentionEvidence:
    """What the kernel says about CPU contention over one measured window."""

    window_s: float
    usable_cores: int
    own_cpu_cores: float
    """CPU this process (and its worker children) used, in cores (CPU seconds / window seconds)."""
    other_cpu_cores: float
    """CPU every other process on the machine used during the window, in cores."""
    steal_pct: float
    """Share of the machine's time the hypervisor gave to other guests (0 on bare metal)."""
    involuntary_switches_per_s: float
    """Times per second the kernel preempted one of this process's threads to run something else."""
    load_avg_1m: float
    demand_cores: float
    """Cores this run asks for: its torch threads (at most the usable cores) plus its worker processes."""
    waited_pct: float | None
    """Single-threaded CPU runs only: (wall - CPU) / wall over the measured steps, in percent."""
    quota_cores: float | None = None
    """The tightest CPU quota of this process's cgroups, in cores (None: unlimited)."""
    throttled_ms: float = 0.0
    """Milliseconds of the window this process's cgroups spent throttled by their quota."""

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form for the record."""
        return asdict(self)


class ContentionProbe:
    """Reads the kernel's counters at `start()` and `stop()`; `stop()` returns the evidence."""

    def __init__(self, children: bool = False) -> None:
        self._process = psutil.Process(os.getpid())
        self._children = children
        """Count live child processes as this run's (its DataLoader workers): only when it has workers."""
        self._start: tuple[float, ...] | None = None

    def start(self) -> None:
        """Open the window."""
        busy, steal, total = proc_stat()
        cpu, switches = own_cpu_s(self._process, self._children)
        self._throttled0 = cpu_quota()[1]
        self._start = (time.perf_counter(), busy, steal, total, cpu, switches)

    def stop(self, step_wall_ms: Sequence[float] = (), step_cpu_ms: Sequence[float] = (),
             single_threaded: bool = False, demand_cores: float = 1.0) -> ContentionEvidence:
        """Close the window; `single_threaded` says whether wall - CPU per step means waiting."""
        assert self._start is not None, "stop() without start()"
        t0, busy0, steal0, total0, cpu0, switches0 = self._start
        window = max(time.perf_counter() - t0, 1e-9)
        busy, steal, total = proc_stat()
        cpu, switches = own_cpu_s(self._process, self._children)
        quota, throttled = cpu_quota()
        own = (cpu - cpu0) / window
        machine_busy = (busy - busy0) / window if total > total0 else 0.0
        waited = None
        if single_threaded and step_wall_ms and sum(step_wall_ms) > 0:
            waited = max(0.0, (sum(step_wall_ms) - sum(step_cpu_ms)) / sum(step_wall_ms) * 100.0)
        return ContentionEvidence(
            window_s=window, usable_cores=usable_cores(), own_cpu_cores=own,
            other_cpu_cores=max(0.0, machine_busy - own),
            steal_pct=(steal - steal0) / (total - total0) * 100.0 if total > total0 else 0.0,
            involuntary_switches_per_s=(switches - switches0) / window,
            load_avg_1m=os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
            demand_cores=min(float(demand_cores), float(usable_cores())), waited_pct=waited, quota_cores=quota,
            throttled_ms=max(0.0, throttled - self._throttled0) * 1e3)


def verdict(ev: ContentionEvidence | dict[str, Any]) -> str:
    """Empty when the run had the cores to itself; else why it is judged contended, with the figures.

    Wall time beyond CPU time alone is not evidence (a sleep, I/O or a GPU wait look the same); it counts
    when the kernel also preempted the run's threads (involuntary context switches), or when the other
    processes' CPU use left fewer cores than the run asked for.
    """
    e = ev if isinstance(ev, dict) else ev.to_dict()
    reasons = []
    switches = e["involuntary_switches_per_s"]
    if e.get("waited_pct") is not None and e["waited_pct"] > WAITED_PCT and switches > PREEMPTED_PER_S:
        reasons.append(f"its steps waited {e['waited_pct']:.0f}% of their wall time for a core "
                       f"(preempted {switches:.0f} times/s)")
    free = e["usable_cores"] - e.get("demand_cores", e["own_cpu_cores"])
    if e["other_cpu_cores"] > free + OVERSUBSCRIBED_MARGIN:
        reasons.append(f"other processes kept {e['other_cpu_cores']:.2f} cores busy while it needed "
                       f"{e.get('demand_cores', 0):g} of {e['usable_cores']} (it got {e['own_cpu_cores']:.2f})")
    throttled = e.get("throttled_ms") or 0.0
    if throttled > max(1.0, THROTTLED_PCT / 100 * e.get("window_s", 0.0) * 1e3):
        reasons.append(f"a CPU quota of {e.get('quota_cores') or 0:g} cores throttled it for {throttled:.0f} ms of "
                       f"its {e.get('window_s', 0.0):.2f} s window")
    if e["steal_pct"] > 5.0:
        reasons.append(f"{e['steal_pct']:.0f}% of CPU time stolen by the hypervisor")
    return "; ".join(reasons)


