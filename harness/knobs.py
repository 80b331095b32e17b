"""Every knob the harness knows: name, type, allowed values, default, one-line doc, and kind.

Kinds say what a change of the knob may do to training, and so what the equivalence check expects:

- ``exact``   must compute the same function (same outputs and gradients from the same weights);
- ``approx``  the same function within a dtype tolerance (amp, compile, tf32, device);
- ``quality`` changes training itself (lr, optimizer, effective batch, model size, data order);
- ``budget``  how long / how the run is measured; never part of an equivalence comparison.

Workloads declare their own knobs with the same `Knob` type; the harness never names them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

KINDS = ("exact", "approx", "quality", "budget")
_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


@dataclass(frozen=True, kw_only=True, slots=True)
class Knob:
    """One tunable setting of a run."""

    name: str
    """Identifier used in TOML files and `key=value` overrides."""
    type: type
    """bool, int, float or str."""
    default: Any
    """Value when neither a preset nor the user sets it."""
    doc: str
    """One line: what the knob does (shown by `trainbench list`)."""
    kind: str
    """exact | approx | quality | budget (see module docstring)."""
    choices: tuple[Any, ...] | None = None
    """Allowed values for a categorical knob."""
    min: float | None = None
    """Inclusive lower bound for numbers."""
    max: float | None = None
    """Inclusive upper bound for numbers."""

    def __post_init__(self) -> None:
        assert self.kind in KINDS, f"knob {self.name}: kind {self.kind!r} not in {KINDS}"
        assert self.type in (bool, int, float, str), f"knob {self.name}: unsupported type"
        # The default itself must be legal: a knob table that contradicts itself is a bug.
        self.parse(self.default)

    def allowed(self) -> str:
        """Human text for the allowed values."""
        if self.choices is not None:
            return " | ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in self.choices)
        if self.type is bool:
            return "true | false"
        if self.type is str:
            return "text"
        lo = "-inf" if self.min is None else _fmt(self.min)
        hi = "inf" if self.max is None else _fmt(self.max)
        return f"{self.type.__name__} in [{lo}, {hi}]"

    def parse(self, raw: Any) -> Any:
        """Convert a TOML value or a command-line string to this knob's type, validating it."""
        value = self._coerce(raw)
        if self.choices is not None and value not in self.choices:
            raise ValueError(self._bad(raw))
        if self.type in (int, float):
            if (self.min is not None and value < self.min) or (self.max is not None and value > self.max):
                raise ValueError(self._bad(raw))
            if self.type is float and not math.isfinite(value):
                raise ValueError(self._bad(raw))
        return value

    def _coerce(self, raw: Any) -> Any:
        if self.type is bool:
            if isinstance(raw, bool):
                return raw
            if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
                return raw.strip().lower() in _TRUE
            raise ValueError(self._bad(raw))
        if self.type is int:
            if isinstance(raw, bool):
                raise ValueError(self._bad(raw))
            if isinstance(raw, int):
                return raw
            if isinstance(raw, float) and raw.is_integer():
                return int(raw)
            if isinstance(raw, str):
                try:
                    return int(raw.strip())
                except ValueError:
                    raise ValueError(self._bad(raw)) from None
            raise ValueError(self._bad(raw))
        if self.type is float:
            if isinstance(raw, bool):
                raise ValueError(self._bad(raw))
            if isinstance(raw, (int, float)):
                return float(raw)
            if isinstance(raw, str):
                try:
                    return float(raw.strip())
                except ValueError:
                    raise ValueError(self._bad(raw)) from None
            raise ValueError(self._bad(raw))
        if not isinstance(raw, str):
            raise ValueError(self._bad(raw))
        return raw.strip()

    def _bad(self, raw: Any) -> str:
        return f"knob '{self.name}': bad value {raw!r}; allowed: {self.allowed()}"


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _k(name: str, type_: type, default: Any, kind: str, doc: str, **kw: Any) -> Knob:
    return Knob(name=name, type=type_, default=default, kind=kind, doc=doc, **kw)


GENERIC_KNOBS: tuple[Knob, ...] = (
    # what is run
    _k("preset", str, "", "quality", "workload size preset (see `trainbench list`); empty = workload default"),
    _k("device", str, "auto", "approx", "where to train: auto picks cuda when present",
       choices=("auto", "cpu", "cuda")),
    _k("seed", int, 0, "quality", "seed for weights, data order and dropout", min=0),
    _k("threads", int, 0, "exact", "torch intra-op CPU threads (0 = auto: half the usable cores less DataLoader "
       "workers, no more than other processes leave free; never oversubscribes)",
       min=0, max=1024),
    # data parallelism (`harness.distributed`): N ranks launched by torchrun, each on a 1/N slice of the global batch
    _k("ddp", int, 1, "exact", "data-parallel processes on this machine, launched by torchrun (1 = no launcher); "
       "exact at equal global batch: ddp x batch_size x grad_accum", min=1, max=1024),
    _k("parallelism", str, "ddp", "exact", "how ranks share the model when ddp > 1: ddp (replicas, gradient "
       "all-reduce) or fsdp (torch.distributed.fsdp.fully_shard: sharded, reduce-scatter; CUDA only here)",
       choices=("ddp", "fsdp")),
    _k("nnodes", int, 1, "exact", "machines in a multi-node run (each runs ddp ranks; needs rdzv_endpoint)",
       min=1, max=4096),
    _k("rdzv_endpoint", str, "", "budget", "host:port of the c10d rendezvous for nnodes > 1 (empty: one node, "
       "standalone rendezvous on a free port)"),
    # batch and data pipeline
    _k("batch_size", int, 32, "quality", "samples per micro-batch (effective batch = batch_size x grad_accum)", min=1),
    _k("grad_accum", int, 1, "quality", "micro-batches accumulated per optimizer step", min=1),
    _k("num_workers", int, 0, "exact", "DataLoader worker processes (0 = load in the training process)", min=0, max=64),
    _k("pin_memory", bool, False, "exact", "page-locked host batches for faster host-to-GPU copies (GPU only)"),
    _k("persistent_workers", bool, False, "exact", "keep DataLoader workers alive across epochs"),
    _k("prefetch_factor", int, 2, "exact", "batches each worker loads ahead", min=1, max=64),
    _k("max_length", int, 0, "quality", "split sequences into chunks of at most this many tokens (0 = no chunking)",
       min=0),
    _k("bucket_by_length", bool, False, "quality", "group samples of similar length into a batch to cut padding"),
    # the step
    _k("amp", str, "off", "approx", "autocast dtype: bf16, or fp16 with a GradScaler", choices=("off", "bf16", "fp16")),
    _k("tf32", bool, False, "approx", "allow TF32 matmuls on Ampere+ GPUs"),
    _k("compile", bool, False, "approx",
       "torch.compile the model (compile time is recorded apart, outside the window)"),
    _k("compile_mode", str, "default", "approx", "torch.compile mode (with compile=true)",
       choices=("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")),
    _k("grad_checkpointing", bool, False, "exact", "recompute activations in backward to save memory"),
    _k("duplicate_forward", bool, False, "exact",
       "reproduce the seed-004 bug: the loss comes from a second forward of the same batch"),
    # optimisation
    _k("optimizer", str, "adam", "quality", "optimizer", choices=("adam", "adamw", "sgd")),
    _k("lr", float, 1e-3, "quality", "peak learning rate", min=1e-12, max=10.0),
    _k("weight_decay", float, 0.0, "quality", "weight decay", min=0.0, max=1.0),
    _k("scheduler", str, "none", "quality", "learning-rate schedule after warmup",
       choices=("none", "cosine", "onecycle", "plateau")),
    _k("lr_warmup_steps", int, 0, "quality", "linear warmup steps (onecycle: its rising phase)", min=0),
    _k("clip_grad_norm", float, 0.0, "quality", "clip the global gradient norm to this (0 = off)", min=0.0),
    _k("ema", float, 0.0, "quality", "EMA decay of the weights (0 = off); EMA weights are evaluated too",
       min=0.0, max=0.99999),
    _k("early_stopping_patience", int, 0, "quality", "stop after this many evals without improvement (0 = off)",
       min=0),
    # budgets
    _k("bench_warmup_steps", int, 3, "budget", "optimizer steps run first and excluded from timing", min=1),
    _k("bench_steps", int, 20, "budget", "optimizer steps measured (speed run)", min=1),
    _k("epochs", int, 0, "budget", "train this many epochs for quality (0 = speed run only)", min=0),
    _k("eval_every", int, 1, "budget", "evaluate every N epochs during a quality run", min=1),
    _k("max_steps_per_epoch", int, 0, "budget", "cap optimizer steps per epoch (0 = the whole train split)", min=0),
)

GENERIC_BY_NAME: dict[str, Knob] = {k.name: k for k in GENERIC_KNOBS}

# Generic knobs whose effect lives inside the workload (data pipeline or model); a workload lists
# the ones it implements in `Workload.supports`, and setting any other one is an error.
NEEDS_WORKLOAD_SUPPORT = frozenset({"max_length", "bucket_by_length", "grad_checkpointing"})


def world_of(config: Mapping[str, Any]) -> int:
    """Ranks of a run: ddp per node x nodes (1 for a config without those knobs)."""
    return int(config.get("ddp", 1) or 1) * int(config.get("nnodes", 1) or 1)


def global_batch(config: Mapping[str, Any]) -> int:
    """Samples of one optimizer step over every rank: batch_size x grad_accum x ranks. Configs with the same
    global batch compute the same gradient (the trainer divides each micro-batch's summed loss by the whole step's
    element count), whatever the split."""
    return int(config.get("batch_size", 0)) * int(config.get("grad_accum", 1)) * world_of(config)
