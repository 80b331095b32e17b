"""The workload interface: what only a workload can know. The harness does everything else.

A workload is a class deriving from `Workload`. It declares its own knobs and presets, builds the
model and the datasets from a `RunConfig`, runs the forward pass, computes the loss as a *sum* over
its loss elements (so gradient accumulation can normalise by the effective batch exactly), counts
what a batch holds, and evaluates quality. `models/<name>/__init__.py` exposes an instance as
``WORKLOAD``; a user's own model is found through a ``module:object`` path.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from harness.knobs import Knob

if TYPE_CHECKING:
    from harness.config import RunConfig


@dataclass(frozen=True, slots=True)
class BatchCounts:
    """What one (host-side) batch holds; computed before the copy to the device, so no GPU sync."""

    samples: int
    """Sequences / students / puzzles / pages in the batch."""
    loss_elements: int
    """How many terms the loss sum has (tokens, valid positions, samples): the normaliser."""
    real_tokens: int = 0
    """Non-padding tokens (0 for workloads without tokens)."""
    padded_tokens: int = 0
    """Token positions actually computed, padding included."""


@dataclass(frozen=True, slots=True)
class LossResult:
    """A loss as a sum over `BatchCounts.loss_elements`, plus named parts for logging."""

    total: torch.Tensor
    """Scalar: sum of per-element losses (the trainer divides by the step's element count)."""
    parts: Mapping[str, torch.Tensor] = field(default_factory=dict)
    """Scalar sums of loss components (e.g. ``ce``, ``constraint``), same normaliser as ``total``."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Preset:
    """A named size: knob values (workload or generic) applied before the user's overrides."""

    values: Mapping[str, Any]
    doc: str
    device_hint: str = "cpu"
    """'cpu' when it runs in seconds-to-minutes on a CPU, 'cuda' for the source notes' sizes."""


class Workload(ABC):
    """Base class of every workload. Subclasses set the class attributes and the abstract methods."""

    name: ClassVar[str]
    description: ClassVar[str]
    knobs: ClassVar[tuple[Knob, ...]] = ()
    """Workload-specific knobs (e.g. ``forward``); names must not clash with generic knobs."""
    presets: ClassVar[Mapping[str, Preset]]
    default_preset: ClassVar[str]
    supports: ClassVar[frozenset[str]] = frozenset()
    """Generic knobs from `harness.knobs.NEEDS_WORKLOAD_SUPPORT` this workload implements."""
    primary_metric: ClassVar[str]
    higher_is_better: ClassVar[bool] = True
    quality_metrics: ClassVar[tuple[str, ...]] = ()
    """Names `evaluate` returns, primary first; used by reports and gate validation."""
    eval_imports: ClassVar[tuple[str, ...]] = ()
    """Modules `evaluate` imports lazily (slow to import, never needed by a speed run): a fork server imports
    them once before an experiment's quality runs instead of every quality run importing them again."""

    # --- building -------------------------------------------------------------------------------

    @abstractmethod
    def build_model(self, cfg: RunConfig) -> nn.Module:
        """A freshly initialised model (the harness seeds the RNG before calling)."""

    @abstractmethod
    def build_datasets(self, cfg: RunConfig) -> tuple[torch.utils.data.Dataset, torch.utils.data.Dataset]:
        """(train, eval) datasets, generated deterministically from the config and cached on disk."""

    def collate(self, cfg: RunConfig) -> Callable[[list[Any]], Any] | None:
        """A picklable collate function (None = torch's default)."""
        return None

    def sample_lengths(self, dataset: torch.utils.data.Dataset, cfg: RunConfig) -> Sequence[int] | None:
        """Per-sample lengths, for `bucket_by_length` (None if lengths do not vary)."""
        return None

    def validate(self, cfg: RunConfig) -> None:
        """Raise ValueError for combinations of knobs this workload cannot run."""
        return None

    def build_optimizer(self, model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer | None:
        """The workload's own optimizer, or None for the one the generic knobs describe (`harness.optim`)."""
        return None

    def build_scheduler(self, optimizer: torch.optim.Optimizer, cfg: RunConfig,
                        total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
        """The workload's own learning-rate schedule, stepped once per optimizer step after `total_steps`
        are planned; None for the one the generic knobs describe."""
        return None

    # --- the step -------------------------------------------------------------------------------

    @abstractmethod
    def forward(self, model: nn.Module, batch: Any, cfg: RunConfig) -> Any:
        """Call the model once on a device batch; returns whatever `loss` consumes."""

    @abstractmethod
    def loss(self, outputs: Any, batch: Any, cfg: RunConfig) -> LossResult:
        """Sum of per-element losses for this batch."""

    @abstractmethod
    def batch_counts(self, batch: Any, cfg: RunConfig) -> BatchCounts:
        """Counts for a host-side collated batch."""

    def to_device(self, batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
        """Move every tensor in a (nested) batch to the device."""
        return move_to(batch, device, non_blocking)

    def compare_outputs(self, outputs: Any, batch: Any) -> list[torch.Tensor]:
        """Tensors of `forward`'s output that an equivalence check compares, in a form every forward
        mode shares (default: all floating-point tensors)."""
        return [t for t in flatten_tensors(outputs) if t.is_floating_point()]

    # --- quality --------------------------------------------------------------------------------

    @abstractmethod
    def evaluate(self, model: nn.Module, dataset: torch.utils.data.Dataset, cfg: RunConfig,
                 device: torch.device) -> dict[str, float]:
        """Quality metrics on the eval split (model already in eval mode, grads off)."""

    # --- optional analytic cost -----------------------------------------------------------------

    def flops_per_token(self, cfg: RunConfig) -> float | None:
        """Analytic training FLOPs per token (e.g. 6N + 12·L·H·Q·T), if the workload has a model."""
        return None

    def cost_components(self, cfg: RunConfig) -> dict[str, float]:
        """Named size components (e.g. embedding params, layers) for the predicted-cost table."""
        return {}

    def parameter_count(self, cfg: RunConfig) -> int:
        """Parameters of the model, counted on the meta device (no allocation)."""
        with torch.device("meta"):
            model = self.build_model(cfg)
        return sum(p.numel() for p in model.parameters())


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor in a nested batch (dicts, lists, tuples, namedtuples)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, dict):
        return {k: map_tensors(v, fn) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        mapped = [map_tensors(v, fn) for v in batch]
        return type(batch)(*mapped) if hasattr(batch, "_fields") else type(batch)(mapped)
    return batch


def move_to(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Move every tensor in a nested batch to the device."""
    return map_tensors(batch, lambda t: t.to(device, non_blocking=non_blocking))


def flatten_tensors(obj: Any) -> Iterator[torch.Tensor]:
    """Every tensor in a nested output, in a stable order."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for key in sorted(obj):
            yield from flatten_tensors(obj[key])
    elif isinstance(obj, (list, tuple)):
        for item in obj:
            yield from flatten_tensors(item)


def eval_batches(dataset: torch.utils.data.Dataset, batch_size: int,
                 collate: Callable[[list[Any]], Any] | None) -> Iterator[Any]:
    """Deterministic, unshuffled batches of an eval split (no worker processes)."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=collate, drop_last=False)
    yield from loader


def cache_dir() -> Path:
    """Where generated datasets are cached: $TRAINBENCH_CACHE, else ~/.cache/trainbench."""
    return Path(os.environ.get("TRAINBENCH_CACHE", Path.home() / ".cache" / "trainbench"))


def cached(kind: str, params: Mapping[str, Any], build: Callable[[], Any]) -> Any:
    """Return `build()`'s result, cached on disk under a key made of `kind` and every parameter.

    The key hashes the parameters (and a version the caller bumps when the generator changes), so
    a cache never serves data generated under other settings. Writes are atomic (temp + rename), so
    two processes generating the same data at once cannot leave a torn file.
    """
    key = hashlib.sha256(json.dumps({"kind": kind, **params}, sort_keys=True, default=str).encode()).hexdigest()
    path = cache_dir() / f"{kind}-{key[:16]}.pt"
    if path.exists():
        try:
            return torch.load(path, weights_only=False)
        except Exception:  # a corrupt cache file is regenerated, never trusted
            path.unlink(missing_ok=True)
    data = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


def upcast(t: torch.Tensor) -> torch.Tensor:
    """Half-precision tensors to float32 for a loss; float32/float64 unchanged (float64 checks stay exact)."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
