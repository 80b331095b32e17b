"""Deterministic counters: forward calls per micro-step, FLOPs per step, memory peaks."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

GIB = 1024**3


class ForwardCounter:
    """Counts calls of a module's forward through a pre-hook on the module the trainer calls."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = 0
        self.enabled = True
        self._handle = module.register_forward_pre_hook(self._hook)

    def _hook(self, module: nn.Module, args: Any) -> None:
        if self.enabled:
            self.calls += 1

    def remove(self) -> None:
        """Detach the hook."""
        self._handle.remove()


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run `fn` under torch's FLOP counter; returns (fn's result, total FLOPs).

    Counts matmul/conv/attention FLOPs of forward and backward (torch.utils.flop_counter); optimizer
    and elementwise work are not counted, as in the usual 6N-per-token estimates.
    """
    with FlopCounterMode(display=False) as counter:
        out = fn()
    return out, int(counter.get_total_flops())


def peak_rss_self_gib() -> float:
    """This process's peak resident set size since it started (kernel high-water mark).

    On Linux this reads VmHWM of the current address space: ru_maxrss is carried across execve, so
    a worker started by a large parent (a pytest session, a notebook) would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux: ``echo 5 > clear_refs``), so
    `peak_rss_self_gib` measures a window rather than the process's whole life; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cuda_peaks_gib(device: torch.device) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) on a CUDA device since the last reset; (None, None) on CPU."""
    if device.type != "cuda":
        return None, None
    return (torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB)
