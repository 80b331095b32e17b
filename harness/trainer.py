"""The instrumented training loop.

One optimizer step = fetch `grad_accum` micro-batches (phase "data"), then for each: forward,
loss, backward; then clip, optimizer step, schedule, EMA (phase "optimizer"). The loss of every
micro-batch is its *sum* divided by the loss-element count of the whole step, so accumulated
gradients equal the gradient of one big batch exactly, whatever the padding.

A speed run (epochs=0) runs bench_warmup_steps + bench_steps steps and times the last bench_steps.
A quality run trains `epochs` epochs, evaluates every `eval_every`, and still times every step
after the warmup (evaluation time excluded), so a quality run is a speed run too.
"""

from __future__ import annotations

import contextlib
import random
import statistics
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.config import RunConfig, resolve_device, runtime_warnings
from harness.data import batches_forever, make_loader
from harness.optim import make_ema, make_optimizer, make_scheduler, update_ema
from harness.probes.counters import ForwardCounter, count_flops, cuda_peaks_gib, peak_rss_self_gib
from harness.probes.sampler import ResourceSampler
from harness.probes.timers import PhaseClock, WindowTimer
from harness.workload import BatchCounts, Workload, upcast


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainResult:
    """What one run measured (turned into a `Record` by the worker)."""

    metrics: dict[str, float | None] = field(default_factory=dict)
    phase_ms: dict[str, float] = field(default_factory=dict)
    step_ms: list[float] = field(default_factory=list)
    quality: dict[str, float] = field(default_factory=dict)
    curve: list[dict[str, float]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    timeline: dict[str, list[float]] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for the config's amp knob (a no-op when amp=off)."""
    if cfg.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def forward_backward(wl: Workload, cfg: RunConfig, handle: nn.Module, micro_batches: Sequence[Any],
                     counts: Sequence[BatchCounts], device: torch.device, clock: PhaseClock | None = None,
                     scaler: Any = None) -> torch.Tensor:
    """Forward, loss and backward over one optimizer step's micro-batches; returns the step loss.

    Shared by the trainer and the equivalence check, so both run exactly the same computation.
    `scaler` is anything with GradScaler's ``scale(loss)`` (the check uses a fixed power of two).
    """
    mark = clock.mark if clock is not None else (lambda phase: None)
    total_elements = sum(c.loss_elements for c in counts)
    if total_elements <= 0:
        raise ValueError("a training step has no loss elements (every target is padding); "
                         "check the data or raise max_length")
    step_loss = torch.zeros((), device=device)
    for batch in micro_batches:
        with autocast(cfg, device):
            outputs = wl.forward(handle, batch, cfg)
        mark("forward")
        first = outputs
        if cfg.duplicate_forward:
            # The seed-004 bug: logits come from the first forward, the loss from a second one.
            with autocast(cfg, device):
                outputs = wl.forward(handle, batch, cfg)
            mark("forward")
        with autocast(cfg, device):
            loss = upcast(wl.loss(outputs, batch, cfg).total) / total_elements
        mark("loss")
        (scaler.scale(loss) if scaler is not None else loss).backward()
        mark("backward")
        step_loss += loss.detach()
        del first
    return step_loss


def _fetch(stream: Iterator[tuple[int, Any]], wl: Workload, cfg: RunConfig, device: torch.device,
           non_blocking: bool) -> tuple[list[Any], list[BatchCounts]]:
    host = [next(stream)[1] for _ in range(cfg.grad_accum)]
    counts = [wl.batch_counts(b, cfg) for b in host]  # from host tensors: no device sync
    return [wl.to_device(b, device, non_blocking) for b in host], counts


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


class Trainer:
    """Builds everything for a config and runs it; `run()` returns a `TrainResult`."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.wl = cfg.get_workload()
        self.device = resolve_device(cfg)
        self.result = TrainResult(warnings=runtime_warnings(cfg, self.device))
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        self.train_ds, self.eval_ds = self.wl.build_datasets(cfg)
        seed_everything(cfg.seed)  # model init must not depend on how much RNG data generation used
        self.model = self.wl.build_model(cfg).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.handle = torch.compile(self.model) if cfg.compile else self.model
        self.loader = make_loader(self.train_ds, cfg, self.wl, self.device)
        steps_per_epoch = len(self.loader) // cfg.grad_accum
        if steps_per_epoch == 0:
            raise ValueError(f"knob 'grad_accum': {cfg.grad_accum} micro-batches of {cfg.batch_size} need "
                             f"{cfg.grad_accum * cfg.batch_size} samples but the train split has "
                             f"{len(self.train_ds)}; lower batch_size or grad_accum")
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.quality_run = cfg.epochs > 0
        self.total_steps = cfg.epochs * steps_per_epoch if self.quality_run else \
            cfg.bench_warmup_steps + cfg.bench_steps
        self.opt = make_optimizer(self.model, cfg)
        self.sched, self.plateau = make_scheduler(self.opt, cfg, self.total_steps)
        self.ema = make_ema(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None

    # ---------------------------------------------------------------------------------------------

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        if cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.sched is not None:
            self.sched.step()
        if self.ema is not None:
            update_ema(self.ema, self.model)

    def _train_step(self, stream: Iterator[tuple[int, Any]], clock: PhaseClock) -> tuple[torch.Tensor, list]:
        non_blocking = self.cfg.pin_memory and self.device.type == "cuda"
        batches, counts = _fetch(stream, self.wl, self.cfg, self.device, non_blocking)
        clock.mark("data")
        loss = forward_backward(self.wl, self.cfg, self.handle, batches, counts, self.device, clock, self.scaler)
        self._optimizer_step()
        clock.mark("optimizer")
        return loss, counts

    def _check_finite(self, losses: list[torch.Tensor], step: int) -> None:
        # Sync point on a GPU (reads the loss on the host): done every step on a CPU, but only every
        # 25 steps and at the end on a GPU so the host can keep queueing work.
        value = float(losses[-1])
        if not np.isfinite(value):
            raise NonFiniteLoss(f"training loss is {value} at optimizer step {step}; lower lr, enable "
                                "clip_grad_norm, or use amp=bf16 instead of fp16")

    def evaluate(self) -> dict[str, float]:
        """Quality of the raw weights (and of the EMA weights, prefixed ``ema_``)."""
        out: dict[str, float] = {}
        for prefix, module in (("", self.model), ("ema_", self.ema.module if self.ema else None)):
            if module is None:
                continue
            module.eval()
            with torch.no_grad(), autocast(self.cfg, self.device):
                metrics = self.wl.evaluate(module, self.eval_ds, self.cfg, self.device)
            module.train()
            out.update({prefix + k: float(v) for k, v in metrics.items()})
        return out

    def stepper(self) -> Callable[[], list[BatchCounts]]:
        """A callable running one optimizer step and returning its batch counts, for external timers
        (pytest-benchmark): the device is drained before it returns, so a host clock around it is valid."""
        stream = batches_forever(self.loader)
        clock = PhaseClock(self.device, enabled=False)
        self.model.train()

        def step() -> list[BatchCounts]:
            clock.start_step()
            _, counts = self._train_step(stream, clock)
            clock.end_step(keep=False)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # sync: the caller reads a host clock after this
            return counts
        return step

    def run(self) -> TrainResult:
        """Train for the config's budget and return the measurements."""
        cfg, res, device = self.cfg, self.result, self.device
        warmup = min(cfg.bench_warmup_steps, self.total_steps - 1) if self.quality_run else cfg.bench_warmup_steps
        clock = PhaseClock(device)
        window = WindowTimer(device)
        counter = ForwardCounter(self.handle)
        sampler = ResourceSampler(device.index or 0 if device.type == "cuda" else None)
        stream = batches_forever(self.loader)
        self.model.train()
        losses: list[torch.Tensor] = []
        epoch_losses: list[torch.Tensor] = []
        totals = {"samples": 0, "real": 0, "padded": 0}
        train_s = 0.0
        best: tuple[float, int, dict[str, float]] | None = None
        stale = 0
        primary = ("ema_" if self.ema else "") + self.wl.primary_metric
        sign = 1.0 if self.wl.higher_is_better else -1.0
        flops = None
        # FLOPs are counted on the last warmup step: not timed, and past one-time first-step work.
        flop_step = max(0, warmup - 1)
        for step in range(self.total_steps):
            if step == warmup:
                counter.calls = 0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                sampler.start()
                window.start()
            measured = step >= warmup
            clock.start_step()
            if step == flop_step:
                (loss, counts), flops = count_flops(lambda: self._train_step(stream, clock))
            else:
                loss, counts = self._train_step(stream, clock)
            clock.end_step(keep=measured)
            losses.append(loss)
            epoch_losses.append(loss)
            if measured:
                totals["samples"] += sum(c.samples for c in counts)
                totals["real"] += sum(c.real_tokens for c in counts)
                totals["padded"] += sum(c.padded_tokens for c in counts)
            if step == flop_step:
                step_samples = sum(c.samples for c in counts)
                res.metrics["samples_per_step"] = step_samples
                res.metrics["flops_per_step"] = flops
                res.metrics["flops_per_sample"] = flops / max(step_samples, 1)
            if device.type == "cpu" or step % 25 == 0 or step == self.total_steps - 1:
                self._check_finite(losses, step)
            end_of_epoch = self.quality_run and (step + 1) % self.steps_per_epoch == 0
            epoch = (step + 1) // self.steps_per_epoch
            if end_of_epoch and (epoch % cfg.eval_every == 0 or epoch == cfg.epochs):
                train_s += window.stop()
                metrics = self.evaluate()
                mean_loss = float(torch.stack(epoch_losses).mean())  # sync: once per eval
                epoch_losses = []
                res.curve.append({"epoch": epoch, "step": step + 1, "wall_s": train_s,
                                  "train_loss": mean_loss, **metrics})
                score = sign * metrics.get(primary, float("nan"))
                if self.plateau is not None:
                    self.plateau.step(score)
                # A tie goes to the later epoch (more training, same primary metric); only a strict
                # improvement resets the early-stopping patience.
                improved = best is None or score > best[0]
                if best is None or score >= best[0]:
                    best = (score, epoch, metrics)
                stale = 0 if improved else stale + 1
                if measured:
                    window.start()
                if cfg.early_stopping_patience and stale >= cfg.early_stopping_patience:
                    break
        train_s += window.stop()
        sampler.stop()
        counter.remove()
        self._finish(clock, sampler, counter, totals, train_s, losses, best, warmup)
        return res

    def _finish(self, clock: PhaseClock, sampler: ResourceSampler, counter: ForwardCounter,
                totals: dict[str, int], train_s: float, losses: list[torch.Tensor],
                best: tuple[float, int, dict[str, float]] | None, warmup: int) -> None:
        cfg, res = self.cfg, self.result
        step_ms, phases = clock.resolve()
        n = len(step_ms)
        m = res.metrics
        m["measured_steps"] = n
        m["train_wall_s"] = train_s
        m["steps_per_s"] = n / train_s if train_s > 0 else None
        m["it_per_s"] = n * cfg.grad_accum / train_s if train_s > 0 else None
        m["samples_per_s"] = totals["samples"] / train_s if train_s > 0 else None
        has_tokens = totals["real"] > 0
        m["tokens_per_s"] = totals["real"] / train_s if has_tokens and train_s > 0 else None
        m["padded_tokens_per_s"] = totals["padded"] / train_s if has_tokens and train_s > 0 else None
        m["real_tokens_per_step"] = totals["real"] / n if has_tokens and n else None
        m["padded_tokens_per_step"] = totals["padded"] / n if has_tokens and n else None
        m["step_ms_median"] = statistics.median(step_ms) if step_ms else None
        m["step_ms_mean"] = statistics.fmean(step_ms) if step_ms else None
        m["step_ms_p10"], m["step_ms_p90"] = _pct(step_ms, 10), _pct(step_ms, 90)
        m["forward_calls_per_step"] = counter.calls / (n * cfg.grad_accum) if n else None
        sps = m["samples_per_s"]
        m["achieved_tflops"] = m["flops_per_sample"] * sps / 1e12 if sps and m.get("flops_per_sample") else None
        from harness.peaks import mfu

        gpu_name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else None
        achieved = m["achieved_tflops"] * 1e12 if m["achieved_tflops"] else None
        m["mfu"] = mfu(achieved, gpu_name, cfg.values)  # None on a CPU or a GPU without a cited peak
        m["peak_rss_gib"] = max(sampler.peak_rss_gib, peak_rss_self_gib())
        m["cuda_peak_allocated_gib"], m["cuda_peak_reserved_gib"] = cuda_peaks_gib(self.device)
        s = sampler.series
        m["cpu_util_pct"] = sampler.mean(s["cpu_util_pct"])
        m["gpu_util_pct"] = sampler.mean(s["gpu_util_pct"])
        m["gpu_mem_used_gib"] = max(s["gpu_mem_used_gib"]) if s["gpu_mem_used_gib"] else None
        m["gpu_power_w"] = sampler.mean(s["gpu_power_w"])
        m["energy_j_per_sample"] = sampler.energy_j / totals["samples"] \
            if sampler.energy_j is not None and totals["samples"] else None
        m["param_count"] = sum(p.numel() for p in self.model.parameters())
        tail = losses[-max(1, min(10, len(losses))):]
        m["final_loss"] = float(torch.stack(tail).mean())
        res.step_ms = step_ms
        res.phase_ms = {p: statistics.fmean(v) if v else 0.0 for p, v in phases.items()}
        res.timeline = {k: list(v) for k, v in s.items() if v}
        res.notes["nvml"] = sampler.nvml_status
        if best is not None:
            m["best_epoch"] = best[1]
            res.quality = dict(best[2])
        m["epochs_run"] = len(losses) / self.steps_per_epoch if self.quality_run else None


def train(cfg: RunConfig) -> TrainResult:
    """Build and run one config."""
    return Trainer(cfg).run()
