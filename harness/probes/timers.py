"""Step and phase timing: host clock on a CPU, CUDA events on a GPU.

A `PhaseClock` marks phase boundaries inside an optimizer step: ``mark("forward")`` closes the
segment that started at the previous mark and charges it to "forward". On a CPU the marks read
`time.perf_counter`. Every step also reads this process's CPU time (`time.process_time`) at its two
ends: a step whose wall time exceeds its CPU time with nothing to wait for waited for a core. On a
GPU the marks record CUDA events, which the GPU timestamps when it reaches them, so queued work is
never timed with a host clock; the events are resolved once, after the measured window, with a
single synchronize (no per-step sync that would stall the pipeline).
"""

from __future__ import annotations

import time
from collections import defaultdict

import torch

from harness.results import PHASE_NAMES


def reading(cuda: bool) -> object:
    """A clock reading: a host time on a CPU, a recorded CUDA event on a GPU (timestamped when the GPU reaches it)."""
    if cuda:
        event = torch.cuda.Event(enable_timing=True)
        event.record()  # asynchronous: timestamped when the GPU reaches it
        return event
    return time.perf_counter()


class PhaseClock:
    """Per-step wall time and per-phase breakdown for a sequence of optimizer steps."""

    def __init__(self, device: torch.device, enabled: bool = True) -> None:
        self.cuda = device.type == "cuda"
        self.enabled = enabled
        self._steps: list[list[tuple[str, object]]] = []  # per step: [(phase, mark), ...]
        self._moves: list[list[tuple[str, str, object, object]]] = []  # per step: spans moved between phases
        self._moved: list[tuple[str, str, object, object]] = []
        self._current: list[tuple[str, object]] | None = None
        self._cpu_start = 0.0
        self.step_cpu_ms: list[float] = []
        """This process's CPU time per kept step (all its threads), host-side."""

    def now(self) -> object:
        """A reading of this clock (`reading`)."""
        return reading(self.cuda)

    def start_step(self) -> None:
        """Open a step; everything until `end_step` belongs to it."""
        self._cpu_start = time.process_time()
        self._current = [("start", self.now())]
        self._moved: list[tuple[str, str, object, object]] = []

    def mark(self, phase: str) -> None:
        """Charge the time since the previous mark to `phase`."""
        if self.enabled and self._current is not None:
            assert phase in PHASE_NAMES, phase
            self._current.append((phase, self.now()))

    def move(self, phase: str, out_of: str, start: object, end: object) -> None:
        """Charge the span [start, end] (readings of `now`, inside a segment already charged to `out_of`) to
        `phase` instead: e.g. the part of backward that waited for communication."""
        if self.enabled and self._current is not None:
            assert phase in PHASE_NAMES and out_of in PHASE_NAMES, (phase, out_of)
            self._moved.append((phase, out_of, start, end))

    def end_step(self, keep: bool = True) -> None:
        """Close the step (the remainder since the last mark is "other"); drop it if not `keep`."""
        assert self._current is not None, "end_step without start_step"
        self._current.append(("other", self.now()))
        if keep:
            self._steps.append(self._current)
            self._moves.append(self._moved)
            self.step_cpu_ms.append((time.process_time() - self._cpu_start) * 1e3)
        self._current = None

    def resolve(self) -> tuple[list[float], dict[str, list[float]]]:
        """(step_ms per kept step, {phase: ms per kept step}). Synchronizes once on a GPU."""
        if self.cuda and self._steps:
            # The only sync of the window: wait for the last recorded event before reading times.
            self._steps[-1][-1][1].synchronize()
        step_ms: list[float] = []
        phases: dict[str, list[float]] = {p: [] for p in PHASE_NAMES}
        for marks, moves in zip(self._steps, self._moves, strict=True):
            per_phase: dict[str, float] = defaultdict(float)
            for (_, prev), (phase, cur) in zip(marks, marks[1:], strict=False):
                per_phase[phase] += self._elapsed_ms(prev, cur)
            for phase, out_of, start, end in moves:
                span = min(max(0.0, self._elapsed_ms(start, end)), per_phase[out_of])
                per_phase[out_of] -= span
                per_phase[phase] += span
            step_ms.append(self._elapsed_ms(marks[0][1], marks[-1][1]))
            for p in PHASE_NAMES:
                phases[p].append(per_phase.get(p, 0.0))
        return step_ms, phases

    def _elapsed_ms(self, a: object, b: object) -> float:
        if self.cuda:
            return float(a.elapsed_time(b))  # type: ignore[attr-defined]
        return (b - a) * 1e3  # type: ignore[operator]


class WindowTimer:
    """Wall time of a whole measured window, with the device drained at both ends."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.start_s = 0.0
        self.elapsed_s = 0.0
        self.running = False

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # sync: window boundary, queued work must finish first

    def start(self) -> None:
        """Begin the window after all earlier work has finished."""
        self._sync()
        self.start_s = time.perf_counter()
        self.running = True

    def stop(self) -> float:
        """End the window once all queued work has finished; returns seconds (0 if not running)."""
        if not self.running:
            return 0.0
        self._sync()
        self.elapsed_s = time.perf_counter() - self.start_s
        self.running = False
        return self.elapsed_s
