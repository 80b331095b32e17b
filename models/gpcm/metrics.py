"""Ordinal quality metrics of Deep-GPCM (seed 000's table), computed with torchmetrics on valid positions."""

from __future__ import annotations

import math

import torch

METRIC_NAMES = ("qwk", "categorical_accuracy", "ordinal_accuracy", "mae")
"""Primary first: quadratic weighted kappa, exact-category accuracy, |pred - true| <= 1 rate, mean |pred - true|."""


def ordinal_metrics(preds: torch.Tensor, targets: torch.Tensor, n_cats: int) -> dict[str, float]:
    """The four metrics of argmax predictions against true categories, both 1-D int over valid positions."""
    # imported here: torchmetrics pulls in scipy (~2 s), which speed runs never need
    from torchmetrics.functional import accuracy, cohen_kappa, mean_absolute_error

    if preds.shape != targets.shape or preds.dim() != 1 or preds.numel() == 0:
        raise ValueError(f"preds {tuple(preds.shape)} and targets {tuple(targets.shape)} must be equal, "
                         "non-empty 1-D tensors of categories")
    # The trainer evaluates under the run's autocast; kappa's float arithmetic in bf16 moves QWK in the 4th digit
    # (measured: -0.00158 -> -0.00086 on one pair of random labels), so an AMP variant's metric would differ from
    # the same predictions scored in float32. The metric is the same arithmetic for every variant.
    with torch.autocast(preds.device.type, enabled=False):
        qwk = float(cohen_kappa(preds, targets, task="multiclass", num_classes=n_cats, weights="quadratic"))
    # Kappa is 0/0 when both raters use one category only; no agreement beyond chance is 0.
    qwk = 0.0 if math.isnan(qwk) else qwk
    return {
        "qwk": qwk,
        "categorical_accuracy": float(accuracy(preds, targets, task="multiclass", num_classes=n_cats,
                                               average="micro")),
        # No library names this one: the share of predictions within one category of the truth.
        "ordinal_accuracy": float(((preds - targets).abs() <= 1).double().mean()),
        "mae": float(mean_absolute_error(preds.double(), targets.double())),
    }
