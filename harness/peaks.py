"""Peak dense FLOP/s of known accelerators, with sources, and MFU against them.

Kept apart from `harness.analysis` so the trainer can report MFU without importing pandas.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# Dense (no structured sparsity) peak TFLOP/s by precision. Order matters: first substring match wins.
PEAK_TFLOPS: tuple[tuple[str, Mapping[str, float], str], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
     "NVIDIA H100 Tensor Core GPU datasheet (PCIe; sparsity figures halved)"),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0},
     "NVIDIA H100 Tensor Core GPU datasheet (NVL; sparsity figures halved)"),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
     "NVIDIA H100 Tensor Core GPU datasheet (SXM; sparsity figures halved)"),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
     "NVIDIA H200 Tensor Core GPU datasheet (SXM; sparsity figures halved)"),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
     "NVIDIA A100 Tensor Core GPU datasheet (dense)"),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
     "NVIDIA L40S datasheet (sparsity figures halved)"),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
     "NVIDIA L4 Tensor Core GPU datasheet (sparsity figures halved)"),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
     "NVIDIA A10 Tensor Core GPU datasheet (dense)"),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
     "NVIDIA Ada Lovelace architecture whitepaper (FP32 accumulate, dense)"),
    ("V100", {"fp16": 125.0, "fp32": 15.7}, "NVIDIA V100 Tensor Core GPU datasheet (SXM2)"),
    ("T4", {"fp16": 65.0, "fp32": 8.1}, "NVIDIA T4 Tensor Core GPU datasheet"),
)


def precision(config: Mapping[str, Any]) -> str:
    """The matmul precision a run's knobs select: bf16 | fp16 | tf32 | fp32."""
    amp = config.get("amp", "off")
    if amp in ("bf16", "fp16"):
        return amp
    return "tf32" if config.get("tf32") else "fp32"


def peak_tflops(gpu_name: str | None, precision_name: str) -> tuple[float, str] | None:
    """(peak dense TFLOP/s, cited source) for a GPU name and precision; None when unknown (e.g. CPU)."""
    if not gpu_name:
        return None
    for key, peaks, source in PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return (peaks[precision_name], source) if precision_name in peaks else None
    return None


def mfu(achieved_flops_per_s: float | None, gpu_name: str | None, config: Mapping[str, Any]) -> float | None:
    """Model FLOPs utilisation (0-1) against the cited peak; None where the peak is unknown."""
    peak = peak_tflops(gpu_name, precision(config))
    if peak is None or achieved_flops_per_s is None or not math.isfinite(achieved_flops_per_s):
        return None
    return achieved_flops_per_s / (peak[0] * 1e12)
