"""The one instrument: turns a config's training steps into every measurement a `Record` holds.

Every face measures through this module and none computes a metric of its own: the worker (one run
in a fresh process), the runner's paired mode (several configs interleaved step by step in one
process), the pytest plugin, `trainbench profile` and the scripts in `bench/`.

- `Meter` wraps a built `Trainer`: per-step wall time (CUDA events on a GPU, the host clock on a CPU)
  and CPU time, the phase breakdown (data wait, forward, loss, backward, optimizer), forward calls of
  *training* micro-steps only, FLOPs of one step, throughput, memory peaks over the measured window,
  the resource sampler and the contention evidence; `finish()` returns a `TrainResult`.
- `run(cfg)`: a speed run (warmup + bench_steps) or a quality run (epochs, with evaluations outside
  the timed window).
- `run_group(cfgs)`: the configs' steps interleaved A B, B A, A B ... in this process, one result per
  config, with the order of every round recorded: the step pairs a ratio gate resamples.
- `step_counters(cfg)`: what one optimizer step does, independent of the machine's speed.

Memory peaks have one definition: `peak_rss_gib` is the high-water mark of this process's resident
set (plus its DataLoader workers) over the measured window (the kernel's VmHWM, reset when the window
opens), `cuda_peak_*_gib` the allocator's peaks over the same window.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from harness.config import RunConfig
from harness.data import batches_forever
from harness.peaks import mfu
from harness.probes.compiled import CompileClock
from harness.probes.contention import ContentionProbe, verdict
from harness.probes.counters import (
    GIB,
    FlopCounter,
    ForwardCounter,
    SavedTensors,
    count_flops,
    cuda_peaks_gib,
    peak_rss_self_gib,
    reset_peak_rss,
)
from harness.probes.sampler import ResourceSampler
from harness.probes.state import StateProbe
from harness.probes.timers import PhaseClock, WindowTimer
from harness.rates import rates
from harness.trainer import Trainer, autocast
from harness.workload import BatchCounts


@dataclass
class TrainResult:
    """What one run (or one member of a group) measured; the worker turns it into a `Record`."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    phase_ms: dict[str, float] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    """Wall ms of every measured optimizer step (CUDA events on a GPU)."""
    step_cpu_ms: list[float] = field(default_factory=list)
    """This process's CPU ms of every measured step (host side)."""
    quality: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timeline: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    contention: dict[str, Any] = field(default_factory=dict)
    """The kernel's evidence over the window and the verdict ("" = not contended)."""
    pairing: dict[str, Any] = field(default_factory=dict)
    """Group runs only: {"group": [...names], "member": i, "first": [bool per measured step]}."""
    state: dict[str, Any] = field(default_factory=dict)
    """The machine-state index read before the window opened and after it closed (`harness.probes.state`)."""
    totals: dict[str, Any] = field(default_factory=dict)
    """The window's raw totals (`harness.rates.TOTAL_KEYS`); every rate in `metrics` is `rates(totals)`."""


class Meter:
    """Measures the steps of one trainer. `step()` runs one; `open()`/`pause()`/`resume()` bound the
    timed window; `finish()` computes the metrics. `sampler=False` when the caller samples itself
    (a group shares one sampler and one machine-state reading)."""

    def __init__(self, trainer: Trainer, *, sampler: bool = True, window_from_steps: bool = False,
                 instrument: bool = True) -> None:
        self.tr = trainer
        device = trainer.device
        self.instrument = instrument
        """False: only the window clock and the sample counts (the reference `bench/measure_overhead.py`
        compares the full instrument against)."""
        sampler = sampler and instrument
        self.clock = PhaseClock(device, enabled=instrument)
        self.window = WindowTimer(device)
        self.window_from_steps = window_from_steps
        """Group runs: the window is the sum of this trainer's own steps (the others' steps interleave)."""
        self.counter = ForwardCounter(trainer.handle) if instrument else None
        if self.counter is not None:
            self.counter.enabled = False  # on only inside a training step: evaluate() is not counted
        self.sampler = ResourceSampler(device.index or 0 if device.type == "cuda" else None,
                                       children=trainer.loader.num_workers > 0) if sampler else None
        self.contention = ContentionProbe(children=trainer.loader.num_workers > 0)
        self.state = StateProbe(trainer.threads, enabled=sampler)
        self.stream = batches_forever(trainer.loader)
        self.compiles = CompileClock() if trainer.cfg.compile else None
        """torch.compile's work: before the first step, after it, when the window opens and closes."""
        self._watched = not instrument
        self.kernels: set[str] = set()
        """The fused-attention kernels SDPA picked in the FLOP-counted step (`AttentionKernels`)."""
        # saved-tensor hooks stay off a compiled model (dynamo would trace or refuse them)
        self.saved = SavedTensors(trainer.model) if instrument and not trainer.cfg.compile else None
        """Activations saved for backward, the largest micro-step over the warmup steps (never in the window)."""
        self.totals = {"samples": 0, "real": 0, "padded": 0}
        self.raw: dict[str, Any] = {}
        """The window's totals, set by `finish` (`harness.rates`)."""
        self.window_s = 0.0
        self.losses: list[torch.Tensor] = []
        self.metrics: dict[str, float | None] = {}
        self.opened = False
        trainer.model.train()

    def step(self, measured: bool, *, flops: bool = False, keep_host: list[Any] | None = None
             ) -> list[BatchCounts]:
        """Run one optimizer step; `measured` steps count toward the window, `flops` counts its FLOPs."""
        if not self.instrument:
            loss, counts = self.tr.train_step(self.stream, self.clock, keep_host)
            self.losses.append(loss)
            if measured:
                self.totals["samples"] += sum(c.samples for c in counts)
            return counts
        self.clock.start_step()
        watch = not self._watched  # the first step also counts every parameter-owning submodule's calls
        if watch:
            self._watched = True
            self.counter.watch()
        self.counter.enabled = measured or watch
        try:
            saved = self.saved if not measured and self.saved is not None else contextlib.nullcontext()
            with saved:  # warmup steps only: the hooks cost time the window must not see
                if flops:
                    with FlopCounter() as counter:
                        loss, counts = self.tr.train_step(self.stream, self.clock, keep_host)
                    self.kernels, n_flops = counter.kernels, counter.flops
                    samples = sum(c.samples for c in counts)
                    self.metrics.update(samples_per_step=samples, flops_per_step=n_flops,
                                        flops_per_sample=n_flops / max(samples, 1))
                else:
                    loss, counts = self.tr.train_step(self.stream, self.clock, keep_host)
        finally:
            self.counter.enabled = False
            if watch:
                self.counter.unwatch()  # back to the fast path; passes = root calls x what this step showed
                if not measured:
                    self.counter.reset()
        self.clock.end_step(keep=measured)
        if self.compiles is not None and "first" not in self.compiles.marks:
            self.compiles.mark("first")
        self.losses.append(loss)
        if measured:
            self.totals["samples"] += sum(c.samples for c in counts)
            self.totals["real"] += sum(c.real_tokens for c in counts)
            self.totals["padded"] += sum(c.padded_tokens for c in counts)
        return counts

    def drain(self) -> None:
        """Wait for the device's queued work (group runs: one trainer's step must end before the next's)."""
        if self.tr.device.type == "cuda":
            torch.cuda.synchronize(self.tr.device)  # sync: the steps of two trainers must not overlap

    def open(self) -> None:
        """Start the measured window: counters reset, memory peaks reset, sampler and clocks on."""
        self.state.before()  # first: its 64 MiB copy must not count in the window's memory peak
        if self.counter is not None:
            self.counter.reset()
        reset_peak_rss()
        if self.tr.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.tr.device)
        if self.compiles is not None:
            self.compiles.mark("open")
        if self.sampler is not None:
            self.sampler.start()
        self.contention.start()
        if not self.window_from_steps:
            self.window.start()
        self.opened = True

    def pause(self) -> None:
        """Stop the window clock (evaluation is not training time)."""
        if not self.window_from_steps:
            self.window_s += self.window.stop()

    def resume(self) -> None:
        """Restart the window clock after a pause."""
        if not self.window_from_steps:
            self.window.start()

    def finish(self) -> TrainResult:
        """Close the window and compute every metric of the record."""
        tr, cfg, m = self.tr, self.tr.cfg, self.metrics
        self.pause()
        if self.sampler is not None:
            self.sampler.stop()
        if self.counter is not None:
            self.counter.remove()
        if not self.instrument:
            n = self.tr.cfg.bench_steps
            self.raw = {"measured_steps": n, "micro_steps": n * cfg.grad_accum, "samples": self.totals["samples"],
                        "window_s": self.window_s}
            full = rates(self.raw)
            return TrainResult(metrics={**{k: full[k] for k in ("measured_steps", "train_wall_s", "samples_per_s")},
                                        "step_ms_mean": self.window_s * 1e3 / n}, totals=dict(self.raw))
        step_ms, phases = self.clock.resolve()
        step_cpu_ms = list(self.clock.step_cpu_ms)
        if self.window_from_steps:
            self.window_s = sum(step_ms) / 1e3
        single = tr.device.type == "cpu" and tr.threads == 1 and tr.loader.num_workers == 0
        demand = tr.threads + tr.loader.num_workers
        evidence = self.contention.stop(step_ms, step_cpu_ms, single_threaded=single, demand_cores=demand).to_dict()
        n, totals = len(step_ms), self.totals
        flops_per_sample = m.get("flops_per_sample")
        self.raw = {"measured_steps": n, "micro_steps": n * cfg.grad_accum, "samples": totals["samples"],
                    "real_tokens": totals["real"], "padded_tokens": totals["padded"], "window_s": self.window_s,
                    "flops": flops_per_sample * totals["samples"] if flops_per_sample else None}
        m.update(rates(self.raw))
        m["step_ms_median"] = statistics.median(step_ms) if step_ms else None
        m["step_ms_mean"] = statistics.fmean(step_ms) if step_ms else None
        m["step_ms_p10"], m["step_ms_p90"] = _pct(step_ms, 10), _pct(step_ms, 90)
        m["step_cpu_ms_median"] = statistics.median(step_cpu_ms) if step_cpu_ms else None
        m["forward_calls_per_step"] = self.counter.passes / (n * cfg.grad_accum) if n else None
        gpu_name = torch.cuda.get_device_name(tr.device) if tr.device.type == "cuda" else None
        achieved = m["achieved_tflops"] * 1e12 if m["achieved_tflops"] else None
        m["mfu"] = mfu(achieved, gpu_name, cfg.values)  # None on a CPU or a GPU without a cited peak
        sampler = self.sampler
        m["peak_rss_gib"] = max(sampler.peak_rss_gib if sampler else 0.0, peak_rss_self_gib())
        m["cuda_peak_allocated_gib"], m["cuda_peak_reserved_gib"] = cuda_peaks_gib(tr.device)
        m["saved_tensors_gib"] = self._saved_gib()
        s = sampler.series if sampler else {}
        m["cpu_util_pct"] = ResourceSampler.mean(s.get("cpu_util_pct", []))
        m["gpu_util_pct"] = ResourceSampler.mean(s.get("gpu_util_pct", []))
        m["gpu_mem_used_gib"] = max(s["gpu_mem_used_gib"]) if s.get("gpu_mem_used_gib") else None
        m["gpu_power_w"] = ResourceSampler.mean(s.get("gpu_power_w", []))
        energy = sampler.energy_j if sampler else None
        m["energy_j_per_sample"] = energy / totals["samples"] if energy is not None and totals["samples"] else None
        m["param_count"] = sum(p.numel() for p in tr.model.parameters())
        m["torch_threads"] = tr.threads
        self._compile_metrics()
        if tr.parallel is not None:  # every rank runs this collective, after its window
            m["world_size"] = tr.parallel.world
            m["allreduce_busbw_gbps"] = tr.parallel.allreduce_busbw_gbps()
        tail = self.losses[-max(1, min(10, len(self.losses))):]
        m["final_loss"] = float(torch.stack(tail).mean()) if tail else None  # sync: once, after the window
        self.state.after()  # last: after every reading of the window (its memory peak included)
        return TrainResult(
            metrics=m, step_ms=step_ms, step_cpu_ms=step_cpu_ms, warnings=list(tr.warnings),
            phase_ms={p: statistics.fmean(v) if v else 0.0 for p, v in phases.items()},
            timeline={k: list(v) for k, v in s.items() if v},
            notes={"nvml": sampler.nvml_status if sampler else "not sampled", "threads": tr.threads_reason,
                   **({"attention_kernels": ", ".join(sorted(self.kernels))} if self.kernels else {})},
            contention={**evidence, "verdict": verdict(evidence)}, state=self.state.to_dict(), totals=dict(self.raw))

    def _saved_gib(self) -> float | None:
        """The activations the warmup steps saved for backward (largest micro-step), GiB; None when not probed."""
        return self.saved.peak_bytes / GIB if self.saved is not None and self.saved.peak_bytes else None

    def _compile_metrics(self) -> None:
        """compile_s: torch.compile's seconds before the window (excluded from it); recompiles: frames compiled
        after the first step; compile_in_window_s: compiling inside the window (warned: it is timed)."""
        clock, m = self.compiles, self.metrics
        if clock is None:
            return
        clock.mark("end")
        clock.marks.setdefault("first", clock.marks["end"])
        clock.marks.setdefault("open", clock.marks["end"])
        m["compile_s"], _ = clock.between("start", "open")
        m["recompiles"] = float(clock.between("first", "end")[1])
        m["compile_in_window_s"], in_window = clock.between("open", "end")
        if in_window:
            self.tr.warnings.append(
                f"torch.compile compiled {in_window} frame(s) inside the measured window "
                f"({m['compile_in_window_s']:.2f} s timed as training): shapes changed after the warmup; "
                "raise bench_warmup_steps or pad to fixed shapes")


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def run(cfg: RunConfig | Trainer, *, instrument: bool = True) -> TrainResult:
    """Build and run one config (or run a prepared `Trainer`): a speed run (epochs=0) or a quality run.

    A speed run runs bench_warmup_steps + bench_steps steps and times the last bench_steps. A quality
    run trains `epochs` epochs, evaluates every `eval_every`, and still times every step after the
    warmup (evaluation excluded), so a quality run is a speed run too. FLOPs are counted on the last
    warmup step: not timed, and past one-time first-step work.
    """
    tr = cfg if isinstance(cfg, Trainer) else Trainer(cfg)
    cfg = tr.cfg
    meter = Meter(tr, instrument=instrument)
    quality = tr.quality_run
    if not instrument and quality:
        raise ValueError("instrument=False measures speed runs only (epochs=0)")
    warmup = min(cfg.bench_warmup_steps, tr.total_steps - 1) if quality else cfg.bench_warmup_steps
    flop_step = max(0, warmup - 1)
    primary = ("ema_" if tr.ema else "") + tr.wl.primary_metric
    sign = 1.0 if tr.wl.higher_is_better else -1.0
    curve: list[dict[str, float]] = []
    epoch_losses: list[torch.Tensor] = []
    best: tuple[float, int, dict[str, float]] | None = None
    stale = 0
    train_s = 0.0
    for step in range(tr.total_steps):
        if step == warmup:
            meter.open()
        meter.step(step >= warmup, flops=step == flop_step and instrument)
        epoch_losses.append(meter.losses[-1])
        if tr.device.type == "cpu" or step % 25 == 0 or step == tr.total_steps - 1:
            tr.check_finite(meter.losses, step)
        end_of_epoch = quality and (step + 1) % tr.steps_per_epoch == 0
        epoch = (step + 1) // tr.steps_per_epoch
        if end_of_epoch and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
            if meter.opened:
                meter.pause()
            train_s = meter.window_s
            metrics = tr.evaluate()
            mean_loss = float(torch.stack(epoch_losses).mean())  # sync: once per eval
            epoch_losses = []
            curve.append({"epoch": epoch, "step": step + 1, "wall_s": train_s, "train_loss": mean_loss, **metrics})
            score = sign * metrics.get(primary, float("nan"))
            if tr.plateau is not None:
                tr.plateau.step(score)
            # A tie goes to the later epoch (more training, same primary metric); only a strict
            # improvement resets the early-stopping patience.
            improved = best is None or score > best[0]
            if best is None or score >= best[0]:
                best = (score, epoch, metrics)
            stale = 0 if improved else stale + 1
            if meter.opened:
                meter.resume()
            if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                break
    if not meter.opened:  # a quality run shorter than the warmup: an empty window
        meter.open()
    result = meter.finish()
    if not instrument:
        return result
    result.curve = curve
    if best is not None:
        result.metrics["best_epoch"] = best[1]
        result.quality = dict(best[2])
    result.metrics["epochs_run"] = len(meter.losses) / tr.steps_per_epoch if quality else None
    return result


def run_group(cfgs: Sequence[RunConfig | Trainer], *, rounds: int, warmup_rounds: int = 3,
              run_rounds: Callable[[Callable[[], None], int, int], None] | None = None) -> list[TrainResult]:
    """Interleave the configs' optimizer steps in this process and measure each; one result per config.

    Every trainer is built first. Round i runs one step of each, in the order 0 1 .. k on even rounds and
    reversed on odd ones, so no config always goes first and bursts of load hit all of them. The first
    `warmup_rounds` are not measured (the last of them counts FLOPs). `run_rounds(one_round, rounds,
    warmup_rounds)` drives the rounds (default: a plain loop; the pytest plugin passes pytest-benchmark's).
    """
    if rounds < 1:
        raise ValueError(f"rounds: bad value {rounds}; measure at least 1 round")
    trainers = [c if isinstance(c, Trainer) else Trainer(c) for c in cfgs]  # a Trainer: prepared by the caller
    meters = [Meter(t, sampler=i == 0, window_from_steps=True) for i, t in enumerate(trainers)]
    names = [config_label(t.cfg) for t in trainers]
    first: list[list[bool]] = [[] for _ in cfgs]
    done = {"rounds": 0}

    def one_round() -> None:
        i = done["rounds"]
        done["rounds"] += 1
        measured = i >= warmup_rounds
        if i == warmup_rounds:
            for meter in meters:
                meter.open()
        order = list(range(len(meters))) if i % 2 == 0 else list(reversed(range(len(meters))))
        for pos, k in enumerate(order):
            meters[k].step(measured, flops=i == warmup_rounds - 1)
            meters[k].drain()
            if measured:
                first[k].append(pos == 0)
        for k, meter in enumerate(meters):
            if meter.tr.device.type == "cpu":
                trainers[k].check_finite(meter.losses, i)

    (run_rounds or _plain_rounds)(one_round, rounds, warmup_rounds)
    if done["rounds"] <= warmup_rounds:  # the driver ran no measured round (benchmarks disabled)
        for meter in meters:
            meter.open()
    results = []
    process = f"{os.getpid()}-{time.time_ns()}"  # identifies this process's group in the records
    for k, meter in enumerate(meters):
        res = meter.finish()
        res.pairing = {"group": names, "member": k, "first": first[k], "process": process,
                       "shared": [x for x in (SAMPLED_METRICS if k == 0 else ()) + PROCESS_METRICS
                                  if res.metrics.get(x) is not None]}
        results.append(res)
    return results


SAMPLED_METRICS = ("energy_j_per_sample", "cpu_util_pct", "gpu_util_pct", "gpu_power_w", "gpu_mem_used_gib")
"""A group's one sampler (member 0's) sees the whole process: every member's work is in these."""
PROCESS_METRICS = ("peak_rss_gib", "cuda_peak_allocated_gib", "cuda_peak_reserved_gib")
"""Peaks of the process, which every member of a group shares."""


def _plain_rounds(one_round: Callable[[], None], rounds: int, warmup_rounds: int) -> None:
    for _ in range(warmup_rounds + rounds):
        one_round()


def config_label(cfg: RunConfig) -> str:
    """``workload preset=P knob=value ...`` with the knobs that differ from the preset's values."""
    from harness.registry import resolve

    changed = resolve(cfg.workload, {"preset": cfg.preset}).diff(cfg)
    return " ".join([cfg.workload, f"preset={cfg.preset}", *(f"{k}={v}" for k, (_, v) in changed.items())])


@dataclass(frozen=True, slots=True)
class StepCounters:
    """What one optimizer step does, independent of the machine's speed."""

    label: str
    """The config, e.g. ``lm preset=tiny duplicate_forward=True`` (knobs that differ from the preset)."""
    forward_calls_per_step: float
    """Forward passes per micro-step (1 for a correct loop): root-module calls, or more when a parameter-owning
    submodule ran outside the root's forward (`harness.probes.counters.ForwardCounter`)."""
    flops_per_step: int
    """FLOPs of one optimizer step as the trainer runs it (torch's FLOP counter: matmul/conv/attention)."""
    reference_flops_per_step: int
    """FLOPs of exactly one forward + loss + backward per micro-batch of the same step, outside the trainer."""
    param_count: int
    samples_per_step: int
    real_tokens_per_step: int
    padded_tokens_per_step: int

    def to_dict(self) -> dict[str, Any]:
        """Plain form."""
        return asdict(self)


def _plain_forward_backward_flops(tr: Trainer, host_batches: list[Any]) -> int:
    # The reference the trainer's step is held to: one forward and one backward per micro-batch.
    batches = [tr.wl.to_device(b, tr.device) for b in host_batches]

    def forward_backward() -> None:
        for batch in batches:
            with autocast(tr.cfg, tr.device):
                loss = tr.wl.loss(tr.wl.forward(tr.handle, batch, tr.cfg), batch, tr.cfg).total.float()
            loss.backward()

    _, flops = count_flops(forward_backward)
    tr.opt.zero_grad(set_to_none=True)  # leave the trainer as its step left it
    return flops


def step_counters(cfg: RunConfig, label: str = "") -> StepCounters:
    """Counters of the second optimizer step of a fresh trainer (its batches fixed by the seed), checked
    against a plain forward + backward on the same batches. The first step is not counted: work done
    once (a lazily built index, a cache) is not per-step work."""
    tr = Trainer(cfg)
    meter = Meter(tr, sampler=False)
    meter.step(False)
    meter.open()
    host: list[Any] = []
    counts = meter.step(True, flops=True, keep_host=host)
    calls = meter.counter.passes
    meter.counter.remove()
    return StepCounters(
        label=label or config_label(cfg), forward_calls_per_step=calls / cfg.grad_accum,
        flops_per_step=int(meter.metrics["flops_per_step"]),
        reference_flops_per_step=_plain_forward_backward_flops(tr, host),
        param_count=sum(p.numel() for p in tr.model.parameters()),
        samples_per_step=sum(c.samples for c in counts),
        real_tokens_per_step=sum(c.real_tokens for c in counts),
        padded_tokens_per_step=sum(c.padded_tokens for c in counts))
