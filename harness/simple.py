"""The light path: a workload from a model factory, datasets and a loss function, in a few lines.

    # mymodels.py
    from trainbench import SimpleWorkload
    WORKLOAD = SimpleWorkload("tagger", model=lambda cfg: Tagger(dim=cfg.width), train=make_train,
                              loss=lambda out, batch: F.cross_entropy(out.flatten(0, 1), batch[1].flatten(),
                                                                      ignore_index=-100),
                              collate=pad_batch, pad_id=0, ignore_index=-100, knobs={"width": 32})

    $ trainbench run mymodels:WORKLOAD width=32,64 batch_size=16

Everything else has a default.

- **Factories get the run's config, always.** `model`, `train` and `eval` are called as ``factory(cfg)``
  with the resolved `RunConfig` (``cfg.seed``, ``cfg.batch_size``, your own ``cfg.width``); nothing is
  guessed from a signature. A ready `nn.Module` (copied per run) or dataset is used as it is.
- **Your own knobs.** ``knobs={"width": 32, "cell": "gru"}`` declares knobs typed by their defaults
  (int, float, str, bool; kind ``quality``: they change what is trained); a `harness.knobs.Knob` gives
  choices, bounds, a doc line or another kind. They are set, swept (``width=32,64``), validated,
  recorded and reported like the generic knobs, and `trainbench list mymodels:WORKLOAD` shows them.
- **Optimizer and schedule.** ``optimizer(model, cfg)`` returns a `torch.optim.Optimizer` and
  ``scheduler(optimizer, cfg, total_steps)`` an `LRScheduler` stepped once per optimizer step. Given,
  they replace the generic `optimizer`/`weight_decay` and `scheduler`/`lr_warmup_steps` knobs, which
  then refuse a value rather than silently stop acting; `lr` stays a knob your factory must read.
- **The batch** is whatever `collate` returns (a tensor, a tuple/list whose last item is the target,
  or a dict); `forward` defaults to ``model(*batch[:-1])`` for a tuple/list, ``model(batch)`` for a
  tensor and ``model(**inputs)`` for a dict (every key but `target_key`).
- **The loss** ``loss(outputs, batch)`` returns a scalar tensor: with ``reduction="mean"`` (torch's
  default) the mean over the batch's loss elements, with ``"sum"`` their sum; either way gradient
  accumulation normalises by the effective batch exactly, because the harness turns a mean back into
  a sum with the same element count the mean used. That count is `elements(batch)` when given, else
  the target's positions that are not `ignore_index` (default: `pad_id`), else the number of samples.
  `pad_id` marks padding in the integer inputs (real against padded tokens).
- **Quality** defaults to the eval loss (lower is better); `metrics(model, batches)` adds named metrics.

Every run is a fresh process that finds the workload again: by its ``module:object`` path, or, for a
workload defined in a script that calls ``trainbench.run(WORKLOAD)`` under ``if __name__ ==
"__main__":``, by the script's file (see `harness.api.workload_path`). A notebook's workload has no
file to import: move it into a module. The full `Workload` interface (presets, cost models, equivalence
of forward modes) stays for workloads that need it.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from harness.knobs import GENERIC_BY_NAME, Knob
from harness.workload import BatchCounts, LossResult, Preset, Workload, eval_batches

if TYPE_CHECKING:
    from harness.config import RunConfig

Factory = Callable[["RunConfig"], Any]
"""Called with the run's `RunConfig`, always (``cfg.seed``, ``cfg.batch_size``, the workload's own knobs)."""

REPLACED_BY = {"optimizer": ("optimizer", "weight_decay"), "scheduler": ("scheduler", "lr_warmup_steps")}
"""Generic knobs a light-path factory replaces: they refuse a value instead of silently not acting."""


def _call(factory: Any, cfg: RunConfig, what: str, workload: str) -> Any:
    """`factory(cfg)`, or a ready object as it is (an `nn.Module` copied, so runs in one process never share
    trained weights); a factory that cannot take the config gets a one-line error with the fix."""
    if isinstance(factory, nn.Module):
        return copy.deepcopy(factory)
    if not callable(factory) or isinstance(factory, torch.utils.data.Dataset):
        return factory
    try:
        inspect.signature(factory).bind(cfg)
    except TypeError:
        raise TypeError(f"workload '{workload}': {what} is called as {what}(cfg) with the run's config but "
                        f"{getattr(factory, '__name__', factory)!s} cannot take one argument; write "
                        f"{what}=lambda cfg: ... (cfg.seed, cfg.batch_size and your knobs are there)") from None
    except ValueError:  # builtins without a signature: call it and let it speak
        pass
    return factory(cfg)


def _knobs(knobs: Mapping[str, Any] | Sequence[Knob], workload: str) -> tuple[Knob, ...]:
    """The workload's own knobs: `Knob`s as given, plain defaults typed by their value (kind ``quality``)."""
    items = knobs.items() if isinstance(knobs, Mapping) else ((k.name if isinstance(k, Knob) else k, k)
                                                               for k in knobs)
    out = []
    for name, value in items:
        if isinstance(value, Knob):
            if value.name != name:
                raise ValueError(f"SimpleWorkload '{workload}': knobs key {name!r} holds Knob {value.name!r}; "
                                 "use the same name for both")
            out.append(value)
            continue
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"SimpleWorkload '{workload}': knob name {name!r}; use an identifier such as 'width'")
        if type(value) not in (bool, int, float, str):
            raise ValueError(f"SimpleWorkload '{workload}': knob '{name}' default {value!r} is a "
                             f"{type(value).__name__}; give a bool, int, float or str default, or a harness.knobs.Knob")
        out.append(Knob(name=name, type=type(value), default=value, kind="quality",
                        doc=f"{workload}'s own knob (default {value!r})"))
    clash = sorted({k.name for k in out} & set(GENERIC_BY_NAME))
    if clash:
        raise ValueError(f"SimpleWorkload '{workload}': knob(s) {', '.join(clash)} already exist for every workload; "
                         f"read cfg.{clash[0]} instead of declaring it, or rename yours")
    return tuple(out)


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

    def __init__(self, name: str, *, model: Factory | nn.Module, train: Any, loss: Callable[[Any, Any], torch.Tensor],
                 eval: Any = None, collate: Callable[[list[Any]], Any] | None = None,  # noqa: A002
                 forward: Callable[[nn.Module, Any], Any] | None = None, reduction: str = "mean",
                 elements: Callable[[Any], int] | None = None, pad_id: int | None = None,
                 ignore_index: int | None = None, knobs: Mapping[str, Any] | Sequence[Knob] = (),
                 optimizer: Callable[[nn.Module, RunConfig], torch.optim.Optimizer] | None = None,
                 scheduler: Callable[[torch.optim.Optimizer, RunConfig, int], Any] | None = None,
                 metrics: Callable[[nn.Module, Any], Mapping[str, float]] | None = None,
                 metric_names: Sequence[str] = (), target_key: str = "target", batch_size: int = 32,
                 bench_steps: int = 20, eval_fraction: float = 0.1, description: str = "") -> None:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"SimpleWorkload name {name!r}: use an identifier such as 'tagger'")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"SimpleWorkload '{name}': reduction={reduction!r}; use 'mean' (the loss is a mean over "
                             "the batch's loss elements) or 'sum'")
        for arg, value in (("model", model), ("loss", loss), ("optimizer", optimizer), ("scheduler", scheduler)):
            if value is None and arg in REPLACED_BY:
                continue
            if not callable(value) and not (arg == "model" and isinstance(value, nn.Module)):
                raise ValueError(f"SimpleWorkload '{name}': {arg} must be callable, got {type(value).__name__}")
        if not 0.0 < eval_fraction < 1.0:
            raise ValueError(f"SimpleWorkload '{name}': eval_fraction={eval_fraction}; use a value in (0, 1)")
        self.name = name
        self.description = description or f"{name} (light path: harness.simple.SimpleWorkload)"
        self.knobs = _knobs(knobs, name)
        self._model, self._train, self._eval, self._loss = model, train, eval, loss
        self._optimizer, self._scheduler = optimizer, scheduler
        self._collate, self._forward, self.reduction = collate, forward, reduction
        self._elements, self.pad_id, self._metrics = elements, pad_id, metrics
        self.ignore_index = pad_id if ignore_index is None else ignore_index
        self.target_key, self.eval_fraction = target_key, eval_fraction
        self.presets = {"default": Preset(values={"batch_size": batch_size, "bench_steps": bench_steps},
                                          doc="the batch size and measured steps given to SimpleWorkload")}
        self.default_preset = "default"
        self.primary_metric = "eval_loss"
        self.higher_is_better = False
        self.quality_metrics = ("eval_loss", *metric_names)

    # --- building -------------------------------------------------------------------------------

    def validate(self, cfg: RunConfig) -> None:
        for factory, names in REPLACED_BY.items():
            if getattr(self, f"_{factory}") is None:
                continue
            for knob in names:
                if cfg.values[knob] != GENERIC_BY_NAME[knob].default:
                    raise ValueError(f"knob '{knob}' does not act on workload '{self.name}': its own {factory}= "
                                     f"factory replaces it; remove '{knob}={cfg.values[knob]}' (set it in the factory)")

    def build_model(self, cfg: RunConfig) -> nn.Module:
        model = _call(self._model, cfg, "model", self.name)
        if not isinstance(model, nn.Module):
            raise TypeError(f"workload '{self.name}': model(cfg) returned a {type(model).__name__}; "
                            "return an nn.Module")
        return model

    def build_datasets(self, cfg: RunConfig) -> tuple[Any, Any]:
        train = _call(self._train, cfg, "train", self.name)
        if self._eval is not None:
            return train, _call(self._eval, cfg, "eval", self.name)
        # no eval split given: hold out the last eval_fraction of train (deterministic)
        n = len(train)
        cut = max(1, int(round(n * (1 - self.eval_fraction))))
        return torch.utils.data.Subset(train, range(cut)), torch.utils.data.Subset(train, range(cut, n))

    def build_optimizer(self, model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer | None:
        if self._optimizer is None:
            return None
        opt = self._optimizer(model, cfg)
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"workload '{self.name}': optimizer(model, cfg) returned a {type(opt).__name__}; "
                            "return a torch.optim.Optimizer")
        lrs = sorted({g["lr"] for g in opt.param_groups})
        if cfg.lr != GENERIC_BY_NAME["lr"].default and cfg.lr not in lrs:
            raise ValueError(f"knob 'lr'={cfg.lr:g} does not reach workload '{self.name}''s optimizer (its lr: "
                             f"{', '.join(f'{x:g}' for x in lrs)}); pass lr=cfg.lr in its optimizer factory")
        return opt

    def build_scheduler(self, optimizer: torch.optim.Optimizer, cfg: RunConfig, total_steps: int) -> Any:
        if self._scheduler is None:
            return None
        sched = self._scheduler(optimizer, cfg, total_steps)
        if not callable(getattr(sched, "step", None)):
            raise TypeError(f"workload '{self.name}': scheduler(optimizer, cfg, total_steps) returned a "
                            f"{type(sched).__name__}; return a torch.optim.lr_scheduler.LRScheduler")
        return sched

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
        if self.ignore_index is not None and tensors:
            target = batch[self.target_key] if isinstance(batch, Mapping) and self.target_key in batch else tensors[-1]
            return int((target != self.ignore_index).sum())
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
