"""The light path: a workload from a model factory, datasets and a loss function, in a few lines.

    # mymodels.py
    from trainbench import SimpleWorkload
    WORKLOAD = SimpleWorkload("tagger", model=Tagger, train=make_train, eval=make_eval,
                              loss=lambda out, batch: F.cross_entropy(out.flatten(0, 1), batch[1].flatten(),
                                                                      ignore_index=0),
                              collate=pad_batch, pad_id=0)

    $ trainbench run mymodels:WORKLOAD batch_size=16

Everything else has a default. The batch is whatever `collate` returns (a tensor, a tuple/list whose
last item is the target, or a dict); `forward` defaults to ``model(*batch[:-1])`` for a tuple/list,
``model(batch)`` for a tensor and ``model(**inputs)`` for a dict (every key but `target_key`).
`loss(outputs, batch)` returns a scalar tensor: with ``reduction="mean"`` (the default, as in torch)
it is the mean over the batch's loss elements, with ``"sum"`` their sum; either way gradient
accumulation normalises by the effective batch exactly, because the harness turns a mean back into a
sum with the same element count the mean used. That count is `elements(batch)` when given, else the
target's non-padding positions when `pad_id` is given, else the number of samples. Quality defaults
to the eval loss (lower is better); `metrics(model, batches)` adds named metrics. The full `Workload`
interface (knobs, presets, cost models) stays for workloads that need it.

The workload must live in an importable module (not a script's ``__main__``): every run is a fresh
process that finds it again by its ``module:object`` path.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.workload import BatchCounts, LossResult, Preset, Workload, eval_batches

if TYPE_CHECKING:
    from harness.config import RunConfig

Factory = Callable[..., Any]
"""Called with the `RunConfig` when it takes one argument, with none otherwise."""


def _call(factory: Any, cfg: RunConfig) -> Any:
    if not callable(factory) or isinstance(factory, (nn.Module, torch.utils.data.Dataset)):
        return factory
    try:
        params = [p for p in inspect.signature(factory).parameters.values()
                  if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):  # builtins without a signature
        params = []
    return factory(cfg) if params else factory()


def _tensors(batch: Any) -> list[torch.Tensor]:
    if isinstance(batch, torch.Tensor):
        return [batch]
    if isinstance(batch, Mapping):
        return [v for v in batch.values() if isinstance(v, torch.Tensor)]
    if isinstance(batch, (list, tuple)):
        return [v for v in batch if isinstance(v, torch.Tensor)]
    return []


class SimpleWorkload(Workload):
    """A workload built from callables; see the module docstring."""

    def __init__(self, name: str, *, model: Factory, train: Any, loss: Callable[[Any, Any], torch.Tensor],
                 eval: Any = None, collate: Callable[[list[Any]], Any] | None = None,  # noqa: A002
                 forward: Callable[[nn.Module, Any], Any] | None = None, reduction: str = "mean",
                 elements: Callable[[Any], int] | None = None, pad_id: int | None = None,
                 metrics: Callable[[nn.Module, Any], Mapping[str, float]] | None = None,
                 metric_names: Sequence[str] = (), target_key: str = "target", batch_size: int = 32,
                 bench_steps: int = 20, eval_fraction: float = 0.1, description: str = "") -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"SimpleWorkload name {name!r}: use an identifier such as 'tagger'")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"SimpleWorkload '{name}': reduction={reduction!r}; use 'mean' (the loss is a mean over "
                             "the batch's loss elements) or 'sum'")
        for arg, value in (("model", model), ("loss", loss)):
            if not callable(value) and not (arg == "model" and isinstance(value, nn.Module)):
                raise ValueError(f"SimpleWorkload '{name}': {arg} must be callable, got {type(value).__name__}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"SimpleWorkload '{name}': eval_fraction={eval_fraction}; use a value in (0, 1)")
        self.name = name
        self.description = description or f"{name} (light path: harness.simple.SimpleWorkload)"
        self._model, self._train, self._eval, self._loss = model, train, eval, loss
        self._collate, self._forward, self.reduction = collate, forward, reduction
        self._elements, self.pad_id, self._metrics = elements, pad_id, metrics
        self.target_key, self.eval_fraction = target_key, eval_fraction
        self.presets = {"default": Preset(values={"batch_size": batch_size, "bench_steps": bench_steps},
                                          doc="the batch size and measured steps given to SimpleWorkload")}
        self.default_preset = "default"
        self.primary_metric = "eval_loss"
        self.higher_is_better = False
        self.quality_metrics = ("eval_loss", *metric_names)

    # --- building -------------------------------------------------------------------------------

    def build_model(self, cfg: RunConfig) -> nn.Module:
        model = self._model if isinstance(self._model, nn.Module) else _call(self._model, cfg)
        if not isinstance(model, nn.Module):
            raise TypeError(f"workload '{self.name}': model() returned a {type(model).__name__}; return an nn.Module")
        return model

    def build_datasets(self, cfg: RunConfig) -> tuple[Any, Any]:
        train = _call(self._train, cfg)
        if self._eval is not None:
            return train, _call(self._eval, cfg)
        # no eval split given: hold out the last eval_fraction of train (deterministic)
        n = len(train)
        cut = max(1, int(round(n * (1 - self.eval_fraction))))
        return torch.utils.data.Subset(train, range(cut)), torch.utils.data.Subset(train, range(cut, n))

    def collate(self, cfg: RunConfig) -> Callable[[list[Any]], Any] | None:
        return self._collate

    # --- the step -------------------------------------------------------------------------------

    def forward(self, model: nn.Module, batch: Any, cfg: RunConfig) -> Any:
        if self._forward is not None:
            return self._forward(model, batch)
        if isinstance(batch, Mapping):
            return model(**{k: v for k, v in batch.items() if k != self.target_key})
        if isinstance(batch, (list, tuple)):
            return model(*batch[:-1]) if len(batch) > 1 else model(batch[0])
        return model(batch)

    def _count(self, batch: Any) -> int:
        if self._elements is not None:
            return int(self._elements(batch))
        tensors = _tensors(batch)
        if self.pad_id is not None and tensors:
            target = batch[self.target_key] if isinstance(batch, Mapping) and self.target_key in batch else tensors[-1]
            return int((target != self.pad_id).sum())
        return int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1

    def loss(self, outputs: Any, batch: Any, cfg: RunConfig) -> LossResult:
        value = self._loss(outputs, batch)
        if not isinstance(value, torch.Tensor) or value.dim() != 0:
            shape = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
            raise TypeError(f"workload '{self.name}': loss() returned {shape}; return a scalar tensor "
                            f"(the {self.reduction} over the batch's loss elements)")
        return LossResult(total=value * self._count(batch) if self.reduction == "mean" else value)

    def batch_counts(self, batch: Any, cfg: RunConfig) -> BatchCounts:
        tensors = _tensors(batch)
        samples = int(tensors[0].shape[0]) if tensors and tensors[0].dim() else 1
        real = padded = 0
        tokens = next((t for t in tensors if not t.is_floating_point() and t.dim() >= 2), None)
        if tokens is not None:  # integer (batch, length) inputs: token counts
            padded = int(tokens.numel())
            real = int((tokens != self.pad_id).sum()) if self.pad_id is not None else padded
        return BatchCounts(samples=samples, loss_elements=self._count(batch), real_tokens=real, padded_tokens=padded)

    # --- quality --------------------------------------------------------------------------------

    def evaluate(self, model: nn.Module, dataset: Any, cfg: RunConfig, device: torch.device) -> dict[str, float]:
        total, count = 0.0, 0
        batches = []
        for host in eval_batches(dataset, cfg.batch_size, self._collate):
            batch = self.to_device(host, device)
            total += float(self.loss(self.forward(model, batch, cfg), batch, cfg).total)
            count += self._count(host)
            batches.append(batch)
        out = {"eval_loss": total / max(count, 1)}
        if self._metrics is not None:
            out.update({k: float(v) for k, v in self._metrics(model, batches).items()})
        return out
