"""The machine's state at a run: three fixed reference kernels timed on the run's own threads.

A sweep's intervals describe one session. Between sessions the host under a VM moves (shared caches, memory
bandwidth, clocks, neighbours), and it moves kernels of different kinds differently, so a speedup between a
latency-bound and a throughput-bound variant moves with it. The index separates what the variants depend on:

- ``compute``: a 256 x 256 float32 matmul (arithmetic units and the clock; ~0.5 ms on one core);
- ``memory``: a copy of a 32 MiB tensor into another (64 MiB touched, past the last-level cache of the
  machines this runs on: memory bandwidth, which a neighbour streaming memory takes a share of);
- ``latency``: 100 dependent elementwise ops on a 16-element tensor (per-op dispatch overhead: the
  interpreter, the allocator, branch predictors; what a loop of small ops such as one-sequence-at-a-time pays).

Each kernel is warmed once and timed in `BLOCKS` blocks of a few calls; its figure is the median block's ms per
call. Session medians on one core of this project's machine over 7 sessions (docs/reproducibility): compute
0.395-0.429 ms, memory 3.46-3.82 ms, latency 0.78-1.06 ms; beside a process streaming memory on the other core
the memory kernel rose by 30-40% (tests/test_reproducibility.py).
The engine measures the index before the window opens and after it closes (`Meter`), so a run carries the
state of the machine on either side of its measured steps; what that costs is recorded (``cost_s``).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

KERNELS = ("compute", "memory", "latency")
"""The reference kernels, in the order they run."""
OPS_PER_BLOCK = {"compute": 3, "memory": 1, "latency": 2}
"""Kernel calls per timed block: ~1-4 ms of CPU each on this project's machine."""
BLOCKS = 3
"""Timed blocks per kernel; the figure is the median block's ms per call (one hiccup moves one block)."""
MEMORY_MIB = 32
LATENCY_OPS = 100


def _kernels() -> dict[str, Callable[[], Any]]:
    import torch

    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, generator=gen)
    src = torch.ones(MEMORY_MIB * 1024 * 1024 // 4)
    dst = torch.empty_like(src)
    small = torch.ones(16)

    def latency() -> Any:
        x = small
        for _ in range(LATENCY_OPS):
            x = x * 1.0001 + 0.5
        return x

    return {"compute": lambda: a @ a, "memory": lambda: dst.copy_(src), "latency": latency}


def measure(threads: int | None = None, blocks: int = BLOCKS, scale: int = 1) -> dict[str, float]:
    """Median-block ms per call of each reference kernel, on the CPU, with `threads` intra-op threads (default: as
    set now), `scale` times `OPS_PER_BLOCK` calls per block. Host-side work only: on a GPU run this describes the
    host that launches the kernels.

    A CPU quota shows in a block only when the block outlasts the scheduler's enforcement (a tick: 4 ms at
    HZ=250): the sweep's ~1-4 ms blocks catch some of a quota's throttling, ``scale=4`` all of it; the contention
    probe reads the quota's own throttle counters (`harness.probes.contention`), which is the direct evidence.
    """
    import torch

    saved = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        out = {}
        for name, fn in _kernels().items():
            fn()  # warm: first-touch page faults, the kernel's code and the thread pool
            per_call = []
            calls = OPS_PER_BLOCK[name] * scale
            for _ in range(blocks):
                t0 = time.perf_counter()
                for _ in range(calls):
                    fn()
                per_call.append((time.perf_counter() - t0) * 1e3 / calls)
            out[name] = statistics.median(per_call)
        return out
    finally:
        torch.set_num_threads(saved)


class StateProbe:
    """Measures the index at the two ends of a window: `before()` when it opens, `after()` when it closes."""

    def __init__(self, threads: int, enabled: bool = True) -> None:
        self.threads = threads
        self.enabled = enabled
        self.readings: dict[str, dict[str, float]] = {}
        self.cost_s = 0.0

    def _read(self, when: str) -> None:
        if not self.enabled:
            return
        t0 = time.perf_counter()
        self.readings[when] = measure(self.threads)
        self.cost_s += time.perf_counter() - t0

    def before(self) -> None:
        """Read the state before the window opens (not timed as training)."""
        self._read("before")

    def after(self) -> None:
        """Read the state after the window closes."""
        self._read("after")

    def to_dict(self) -> dict[str, Any]:
        """``{"before": {kernel: ms}, "after": {...}, "threads": n, "cost_s": s}``; empty when disabled."""
        if not self.readings:
            return {}
        return {**self.readings, "threads": self.threads, "cost_s": self.cost_s}

