"""What torch.compile did in this process: seconds spent compiling and how many frames it compiled.

torch.compile is lazy: nothing is compiled until the compiled module first runs (the forward graph at the
first forward, the backward graph at the first backward), and a call whose shapes or types break a
guard compiles again (a recompilation). Dynamo keeps process-wide totals of both; `CompileClock`
reads them at points the engine chooses (before the first step, when the measured window opens, when
it closes), so a record says how much compiling happened before the window (`compile_s`: paid once,
never in the throughput) and whether any happened inside it (it should not: the window would then time
the compiler, and the engine warns).

`harness.machine.compile_unavailable()` tells a machine that cannot compile at all (no C++ compiler for
inductor, a Python torch.compile does not support) from a model that fails to compile: the first is a
skipped run with the reason, the second a crash worth reading.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class CompileTotals:
    """Dynamo's process-wide totals at one moment."""

    seconds: float
    """Wall seconds inside torch.compile's frame compilation (tracing, AOT autograd, inductor codegen)."""
    frames: int
    """Frames compiled (each first compilation and each recompilation of a frame counts once)."""


def totals() -> CompileTotals:
    """The totals now (zero when dynamo was never used in this process)."""
    try:
        from torch._dynamo.utils import calculate_time_spent, counters
    except ImportError:  # a torch without dynamo: nothing was compiled
        return CompileTotals(0.0, 0)
    spent = calculate_time_spent()
    # The frame's compilation includes AOT autograd's backward graph (compiled with the forward's).
    seconds = spent.get("entire_frame_compile", spent.get("total_wall_time", 0.0))
    return CompileTotals(float(seconds), int(counters["frames"]["total"]))


class CompileClock:
    """Compile work between marks: `mark(name)` reads the totals; `between(a, b)` is what happened in between."""

    def __init__(self) -> None:
        self.marks: dict[str, CompileTotals] = {"start": totals()}

    def mark(self, name: str) -> None:
        self.marks[name] = totals()

    def between(self, a: str, b: str) -> tuple[float, int]:
        """(seconds, frames compiled) from mark `a` to mark `b`."""
        x, y = self.marks[a], self.marks[b]
        return max(0.0, y.seconds - x.seconds), y.frames - x.frames
