"""The training loop's mechanics: build everything for a config, run one optimizer step, evaluate.

What is measured around these steps, and how, lives in `harness.engine` (the one instrument).

One optimizer step = fetch `grad_accum` micro-batches (phase "data"), then for each: forward,
loss, backward; then clip, optimizer step, schedule, EMA (phase "optimizer"). The loss of every
micro-batch is its *sum* divided by the loss-element count of the whole step, so accumulated
gradients equal the gradient of one big batch exactly, whatever the padding.

"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from harness import distributed
from harness.config import RunConfig, resolve_device, runtime_warnings
from harness.data import effective_workers, make_loader
from harness.distributed import Parallel
from harness.knobs import world_of
from harness.machine import default_threads
from harness.optim import make_ema, make_optimizer, make_scheduler, update_ema
from harness.probes.counters import live_tensor_bytes
from harness.probes.timers import PhaseClock, reading
from harness.workload import BatchCounts, LossResult, Workload, upcast


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def apply_threads(cfg: RunConfig, device: torch.device) -> tuple[int, str]:
    """Set torch's intra-op threads for this run (the `threads` knob, or the never-oversubscribe default, which
    shares the cores among the `ddp` ranks of this machine)."""
    if cfg.threads:
        threads, reason = cfg.threads, f"threads={cfg.threads} (set by the config)"
    else:
        threads, reason = default_threads(device_type=device.type, num_workers=effective_workers(cfg), ranks=cfg.ddp)
    torch.set_num_threads(threads)
    return threads, reason


def autocast(cfg: RunConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context for the config's amp knob (a no-op when amp=off)."""
    if cfg.amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if cfg.amp == "bf16" else torch.float16)


def forward_backward(wl: Workload, cfg: RunConfig, handle: nn.Module, micro_batches: Sequence[Any],
                     counts: Sequence[BatchCounts], device: torch.device, clock: PhaseClock | None = None,
                     scaler: Any = None, parallel: Parallel | None = None) -> torch.Tensor:
    """Forward, loss and backward over one optimizer step's micro-batches; returns the step loss.

    Shared by the trainer and the equivalence check, so both run exactly the same computation.
    `scaler` is anything with GradScaler's ``scale(loss)`` (the check uses a fixed power of two).
    `parallel`: one rank of a data-parallel run: the divisor is the loss-element count of the global step,
    gradients are communicated in the last micro-batch only, and the wait for them is charged to
    ``communication`` (`harness.distributed`). The step loss is then this rank's share of the global one.
    """
    mark = clock.mark if clock is not None else (lambda phase: None)
    total_elements = sum(c.loss_elements for c in counts)
    if parallel is not None:
        total_elements = parallel.global_count(total_elements)
        mark("communication")
    if total_elements <= 0:
        raise ValueError("a training step has no loss elements (every target is padding); "
                         "check the data or raise max_length")
    step_loss = torch.zeros((), device=device)
    for i, batch in enumerate(micro_batches):
        sync = parallel.sync_context(last=i == len(micro_batches) - 1) if parallel else contextlib.nullcontext()
        with sync:
            step_loss += _micro_step(wl, cfg, handle, batch, total_elements, device, mark, scaler)
    if parallel is not None and clock is not None:
        span = parallel.exposed_span()
        if span is not None:
            clock.move("communication", "backward", *span)
    return step_loss


def _micro_step(wl: Workload, cfg: RunConfig, handle: nn.Module, batch: Any, total_elements: int,
                device: torch.device, mark: Any, scaler: Any) -> torch.Tensor:
    """Forward, loss and backward of one micro-batch; its loss (detached)."""
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
        result = wl.loss(outputs, batch, cfg)
        if not isinstance(result, LossResult):
            raise TypeError(f"workload '{wl.name}': loss() returned a {type(result).__name__}; return "
                            "harness.workload.LossResult(total=<sum over the batch's loss elements>)")
        loss = upcast(result.total) / total_elements
    mark("loss")
    (scaler.scale(loss) if scaler is not None else loss).backward()
    mark("backward")
    del first  # the duplicate-forward bug's first outputs lived until here
    return loss.detach()


def compiled(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """The module the step calls: `model` itself, or torch.compile(model) in the config's mode. Compiling is lazy
    (at the first call); the engine's `CompileClock` measures it."""
    if not cfg.compile:
        return model
    return torch.compile(model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)


def _fetch(stream: Iterator[tuple[int, Any]], wl: Workload, cfg: RunConfig, device: torch.device,
           non_blocking: bool) -> tuple[list[Any], list[Any], list[BatchCounts]]:
    host = [next(stream)[1] for _ in range(cfg.grad_accum)]
    counts = [wl.batch_counts(b, cfg) for b in host]  # from host tensors: no device sync
    return host, [wl.to_device(b, device, non_blocking) for b in host], counts


def check_contract(cfg: RunConfig, train_ds: Any) -> None:
    """One batch of 1-2 training samples through the workload's collate, forward and loss on the CPU, without
    gradients: TypeError (one line, naming the method and the fix) when `loss` does not return a
    `LossResult` holding a scalar tensor, before any run starts."""
    wl = cfg.get_workload()
    cpu = cfg.replace(device="cpu", amp="off", compile=False)
    seed_everything(cfg.seed)
    model = wl.build_model(cpu)
    collate = wl.collate(cpu) or torch.utils.data.default_collate
    batch = collate([train_ds[i] for i in range(min(2, cfg.batch_size, len(train_ds)))])
    with torch.no_grad():
        result = wl.loss(wl.forward(model, batch, cpu), batch, cpu)
    if not isinstance(result, LossResult):
        raise TypeError(f"workload '{wl.name}': loss() returned a {type(result).__name__}; return "
                        "harness.workload.LossResult(total=<sum over the batch's loss elements>)")
    if not isinstance(result.total, torch.Tensor) or result.total.numel() != 1:
        got = type(result.total).__name__
        if isinstance(result.total, torch.Tensor):
            got += f" of shape {tuple(result.total.shape)}"
        raise TypeError(f"workload '{wl.name}': loss() returned LossResult(total=<{got}>); total must be a scalar "
                        "tensor: the sum over the batch's loss elements")


def _grad_norm(model: nn.Module) -> float:
    """The L2 norm of every gradient together, in float64 (0 without gradients)."""
    norms = [p.grad.detach().double().norm() for p in model.parameters() if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0


def _param_sum(model: nn.Module) -> float:
    """The sum of every parameter, in float64: a checksum of the weights after a step."""
    return float(sum(p.detach().double().sum() for p in model.parameters()))


class Trainer:
    """Builds everything for a config; `train_step` runs one optimizer step, `evaluate` measures quality."""

    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.wl = cfg.get_workload()
        self.device = distributed.rank_device(resolve_device(cfg))
        self.warnings = runtime_warnings(cfg, self.device)
        self.threads, self.threads_reason = apply_threads(cfg, self.device)
        seed_everything(cfg.seed)
        self.train_ds, self.eval_ds = self.wl.build_datasets(cfg)
        seed_everything(cfg.seed)  # model init must not depend on how much RNG data generation used
        self.model = self.wl.build_model(cfg).to(self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.parallel: Parallel | None = None
        """One rank of a data-parallel run (`harness.distributed`); None in a single process."""
        rank, world = 0, 1
        if world_of(cfg.values) > 1:
            self.parallel = Parallel(self.model, cfg, self.device, partial(reading, self.device.type == "cuda"))
            rank, world = self.parallel.rank, self.parallel.world
        handle = self.parallel.handle if self.parallel else self.model
        self.handle = compiled(handle, cfg)
        self.loader = make_loader(self.train_ds, cfg, self.wl, self.device, rank=rank, world=world)
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
        self.opt = self.wl.build_optimizer(self.model, cfg) or make_optimizer(self.model, cfg)
        own = self.wl.build_scheduler(self.opt, cfg, self.total_steps)
        self.sched, self.plateau = (own, None) if own is not None else make_scheduler(self.opt, cfg, self.total_steps)
        self.ema = make_ema(self.model, cfg)
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.amp == "fp16" else None
        self.trace: list[dict[str, float]] | None = None
        """Per optimizer step, when a list (`run_steps(trace=True)`): the learning rate it used, the gradient norm
        before and after clipping, the loss scale (fp16), and after it the sum of the parameters and of the EMA
        weights: deterministic counters that a schedule, clipping, EMA or step-order change moves even where the
        loss moves less than its tolerance. Off (None) in measured runs: each costs a sync."""
        self.trace_memory = False
        """With the trace: each step's live tensor bytes after it, less those after the first step
        (`probes.counters.live_tensor_bytes`; ~0.15 s a count)."""
        self._live_at_start = 0

    # ---------------------------------------------------------------------------------------------

    def _optimizer_step(self) -> None:
        cfg = self.cfg
        traced = self.trace is not None
        if self.scaler is not None:
            self.scaler.unscale_(self.opt)
        before = _grad_norm(self.model) if traced else None  # before clipping (a sync: traced runs only)
        if cfg.clip_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad_norm)
        if traced:
            self.trace.append({"lr": float(self.opt.param_groups[0]["lr"]), "grad_norm": before,  # type: ignore
                               "grad_norm_clipped": _grad_norm(self.model),
                               **({"loss_scale": float(self.scaler.get_scale())} if self.scaler else {})})
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
        if traced:
            self.trace[-1]["param_sum"] = _param_sum(self.model)  # type: ignore[index]
            if self.ema is not None:
                self.trace[-1]["ema_sum"] = _param_sum(self.ema.module)  # type: ignore[index]
            if self.trace_memory:
                # from the count after the first step: what the process held before (other runs' leftovers) and
                # what a first step creates once per process (optimizer state, caches another run may have made
                # already) are not growth, so the figure is the same in any process
                live = live_tensor_bytes()
                if len(self.trace) == 1:  # type: ignore[arg-type]
                    self._live_at_start = live
                self.trace[-1]["live_bytes"] = float(live - self._live_at_start)  # type: ignore[index]

    def train_step(self, stream: Iterator[tuple[int, Any]], clock: PhaseClock,
                   keep_host: list[Any] | None = None) -> tuple[torch.Tensor, list[BatchCounts]]:
        """One optimizer step (fetch, forward, loss, backward, optimizer) with its phases marked on `clock`;
        returns the step loss (on the device, not synced) and the micro-batches' counts.
        `keep_host` collects the host batches (for a reference FLOP count on the same data)."""
        non_blocking = self.cfg.pin_memory and self.device.type == "cuda"
        host, batches, counts = _fetch(stream, self.wl, self.cfg, self.device, non_blocking)
        if keep_host is not None:
            keep_host.extend(host)
        clock.mark("data")
        loss = forward_backward(self.wl, self.cfg, self.handle, batches, counts, self.device, clock, self.scaler,
                                self.parallel)
        self._optimizer_step()
        clock.mark("optimizer")
        return loss, counts

    def run_steps(self, steps: int, trace: bool = False, memory: bool = False) -> list[float]:
        """`steps` optimizer steps from the loader's start, untimed; each step's loss (a sync point: read on the
        host every step). The multi-step equivalence check and the stored references train through this; with
        `trace`, `self.trace` holds each step's counters (with `memory`, its live tensor bytes too)."""
        from harness.data import batches_forever
        from harness.probes.timers import PhaseClock

        if trace:
            self.trace, self.trace_memory = [], memory
        clock = PhaseClock(self.device, enabled=False)
        stream = batches_forever(self.loader)
        return [float(self.train_step(stream, clock)[0]) for _ in range(steps)]

    def check_finite(self, losses: list[torch.Tensor], step: int) -> None:
        """Raise NonFiniteLoss when the last step's loss is NaN or infinite."""
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
