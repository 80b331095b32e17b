"""Optimizer, learning-rate schedule (with linear warmup) and EMA from the config's knobs."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from harness.config import RunConfig


def make_optimizer(model: nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD (momentum 0.9) with the config's lr and weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: RunConfig,
                   total_steps: int) -> tuple[LRScheduler | None, ReduceLROnPlateau | None]:
    """(per-step scheduler, per-eval plateau scheduler). Warmup is linear over lr_warmup_steps."""
    warmup = cfg.lr_warmup_steps
    total = max(total_steps, 1)
    if cfg.scheduler == "onecycle":
        pct = min(max(warmup / total, 1.0 / total), 0.9) if warmup else 0.3
        return OneCycleLR(opt, max_lr=cfg.lr, total_steps=total, pct_start=pct), None

    def warm(step: int) -> float:
        return min(1.0, (step + 1) / warmup) if warmup else 1.0

    if cfg.scheduler == "cosine":
        def factor(step: int) -> float:
            if step < warmup:
                return warm(step)
            progress = (step - warmup) / max(total - warmup, 1)
            return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return LambdaLR(opt, factor), None
    per_step = LambdaLR(opt, warm) if warmup else None
    if cfg.scheduler == "plateau":
        return per_step, ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=1)
    return per_step, None


def make_ema(model: nn.Module, cfg: RunConfig) -> AveragedModel | None:
    """An exponential moving average of the parameters, or None when ema=0 (see `update_ema`)."""
    if cfg.ema <= 0:
        return None
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=False)


def update_ema(ema: AveragedModel, model: nn.Module) -> None:
    """Average the parameters; copy buffers as they are (averaging integer buffers would truncate
    them, and running statistics are already averages)."""
    ema.update_parameters(model)
    with torch.no_grad():
        for mine, theirs in zip(ema.module.buffers(), model.buffers(), strict=True):
            mine.copy_(theirs)
