"""A toy workload with known loads, for testing the instrument itself.

Linear regression y = Xw on fixed random data, plus test-only knobs that plant a known cost or a
failure: a sleep of known length inside forward (its true duration recorded for comparison), a
held allocation of known size, an exception, a NaN loss, a hang, and a scripted metric sequence.
Used through the path ``tests.toy:WORKLOAD``; never shipped as a workload under models/.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from harness.knobs import Knob
from harness.workload import BatchCounts, LossResult, Preset, Workload

TRUE_SLEEPS_S: list[float] = []  # ground truth recorded by the sleeping forward (in-process tests)
_HELD: list[np.ndarray] = []  # allocations kept alive until the process exits
_EVAL_CALLS = {"n": 0}


class ToyModel(nn.Module):
    """A linear layer with optional planted behaviour."""

    def __init__(self, dim: int, sleep_ms: float, alloc_mib: int, fail: str, fault_rank: int = -1) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, 1)
        if fault_rank >= 0 and int(os.environ.get("RANK", 0)) != fault_rank:  # a data-parallel run: one rank only
            sleep_ms, fail = 0.0, "none"
        self.sleep_ms, self.alloc_mib, self.fail = sleep_ms, alloc_mib, fail
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.sleep_ms:
            start = time.perf_counter()
            time.sleep(self.sleep_ms / 1e3)
            TRUE_SLEEPS_S.append(time.perf_counter() - start)
        if self.alloc_mib and not _HELD:
            _HELD.append(np.ones(self.alloc_mib * 1024**2 // 8))  # touched: every page resident
        if self.fail == "raise" and self.calls > 2:
            raise RuntimeError("planted failure in forward")
        if self.fail == "hang":
            time.sleep(3600)
        if self.fail == "kill" and self.calls > 2:
            os.kill(os.getpid(), signal.SIGKILL)
        out = self.linear(x).squeeze(-1)  # (B,)
        if self.fail == "nan" and self.calls > 2:
            out = out * float("nan")
        return out


class ToyWorkload(Workload):
    """Linear regression with planted loads."""

    name = "toy"
    description = "test-only linear regression with planted sleeps, allocations and failures"
    knobs = (
        Knob(name="dim", type=int, default=8, kind="quality", doc="input features", min=1),
        Knob(name="n_samples", type=int, default=256, kind="quality", doc="training samples", min=1),
        Knob(name="sleep_ms", type=float, default=0.0, kind="exact", doc="sleep inside forward", min=0.0),
        Knob(name="alloc_mib", type=int, default=0, kind="exact", doc="allocate and hold this much once", min=0),
        Knob(name="fail", type=str, default="none", kind="exact", doc="planted failure",
             choices=("none", "raise", "nan", "hang", "kill")),
        Knob(name="fault_rank", type=int, default=-1, kind="exact", min=-1,
             doc="data-parallel runs: only this rank sleeps or fails (-1: every rank)"),
        Knob(name="init_shift", type=float, default=0.0, kind="exact", doc="planted change of initialisation"),
        Knob(name="mib_per_sample", type=int, default=0, kind="exact", min=0,
             doc="a transient allocation of this many MiB per sample in every forward (grows with the batch)"),
        Knob(name="metric_script", type=str, default="", kind="budget",
             doc="comma-separated primary-metric values returned by successive evaluations"),
    )
    presets = {"tiny": Preset(values=dict(batch_size=16, bench_warmup_steps=1, bench_steps=5), doc="tests")}
    default_preset = "tiny"
    primary_metric = "score"
    quality_metrics = ("score", "mse")

    def build_model(self, cfg: Any) -> nn.Module:
        model = ToyModel(cfg.dim, cfg.sleep_ms, cfg.alloc_mib, cfg.fail, cfg.fault_rank)
        with torch.no_grad():
            model.linear.weight.add_(cfg.init_shift)
        return model

    def build_datasets(self, cfg: Any):
        g = torch.Generator().manual_seed(1234)
        x = torch.randn(cfg.n_samples + 64, cfg.dim, generator=g)
        y = x @ torch.linspace(-1, 1, cfg.dim) + 0.1 * torch.randn(len(x), generator=g)
        data = torch.utils.data.TensorDataset(x, y)
        return torch.utils.data.Subset(data, range(cfg.n_samples)), \
            torch.utils.data.Subset(data, range(cfg.n_samples, len(x)))

    def forward(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        if cfg.mib_per_sample:  # touched, so every page is resident at the peak; freed after the forward
            buf = torch.ones(len(batch[0]) * cfg.mib_per_sample * 1024**2 // 4)
            del buf
        return model(batch[0])

    def loss(self, outputs: torch.Tensor, batch: Any, cfg: Any) -> LossResult:
        total = ((outputs - batch[1]) ** 2).sum()
        return LossResult(total=total, parts={"mse": total.detach()})

    def batch_counts(self, batch: Any, cfg: Any) -> BatchCounts:
        return BatchCounts(samples=len(batch[1]), loss_elements=len(batch[1]))

    def evaluate(self, model: nn.Module, dataset: Any, cfg: Any, device: torch.device) -> dict[str, float]:
        x = torch.stack([dataset[i][0] for i in range(len(dataset))]).to(device)
        y = torch.stack([dataset[i][1] for i in range(len(dataset))]).to(device)
        mse = float(((model.linear(x).squeeze(-1) - y) ** 2).mean())
        if cfg.metric_script:
            script = [float(v) for v in cfg.metric_script.split(",")]
            # Raw and EMA weights are evaluated in turn; the script is indexed per evaluation round.
            score = script[min(_EVAL_CALLS["n"], len(script) - 1)]
            _EVAL_CALLS["n"] += 1
        else:
            score = -mse
        return {"score": score, "mse": mse}


WORKLOAD = ToyWorkload()
