"""Attention kernels the transformer workloads (LM, DocTrans) share, selected by their `attention` knob.

- ``sdpa``: `torch.nn.functional.scaled_dot_product_attention`, letting torch pick the kernel (flash,
  memory-efficient, cuDNN or its math fallback) by device, dtype and shape; the engine records the pick.
- ``flash`` / ``efficient``: the same call restricted to one fused kernel (`torch.nn.attention.sdpa_kernel`);
  an input that kernel cannot take fails the run with torch's reason. ``efficient`` exists on CUDA only.
- ``math``: softmax(Q K^T / sqrt(d) + mask) V written out in plain tensor ops, the reference the fused
  kernels are checked against (equivalence within the float32 tolerance).
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from harness.knobs import Knob

KERNELS = ("sdpa", "math", "flash", "efficient")
CUDA_ONLY = ("efficient",)


def attention_knob() -> Knob:
    """The `attention` knob of a workload built on `attend`."""
    return Knob(name="attention", type=str, default="sdpa", kind="approx", choices=KERNELS,
                doc="sdpa: torch's scaled_dot_product_attention, kernel picked by torch (recorded); flash / "
                    "efficient: that fused kernel only (efficient: CUDA); math: the explicit softmax(QK^T/sqrt(d))V")


def check_device(kernel: str, device: str) -> None:
    """ValueError (one line) for a kernel the config's device (its `device` knob: auto, cpu, cuda) does not have."""
    device_type = "cuda" if device == "cuda" or device == "auto" and torch.cuda.is_available() else "cpu"
    if kernel in CUDA_ONLY and device_type != "cuda":
        raise ValueError(f"knob 'attention': {kernel} is a CUDA kernel and this run is on the {device_type}; "
                         f"use sdpa, flash or math")


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, kernel: str = "sdpa",
           attn_mask: torch.Tensor | None = None, is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """Attention of q (B, h, T, d) over k, v (B, h, S, d) -> (B, h, T, d) with the chosen kernel.
    `attn_mask`: bool (True = may attend) or additive float, broadcastable to (B, h, T, S)."""
    if kernel == "math":
        return math_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal, dropout_p=dropout_p)
    context = contextlib.nullcontext()
    if kernel != "sdpa":
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
        context = sdpa_kernel(backends[kernel])
    try:
        with context:
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, is_causal=is_causal,
                                                  dropout_p=dropout_p)
    except RuntimeError as exc:
        if kernel == "sdpa":
            raise
        raise RuntimeError(f"attention={kernel}: torch has no {kernel} kernel for these inputs (device "
                           f"{q.device.type}, dtype {q.dtype}, mask {'yes' if attn_mask is not None else 'no'}): "
                           f"{str(exc).splitlines()[0]}; use attention=sdpa or math") from exc


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, attn_mask: torch.Tensor | None = None,
                   is_causal: bool = False, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + causal/attn masks) v, as SDPA's math backend defines it."""
    T, S = q.shape[-2], k.shape[-2]
    scores = q @ k.transpose(-2, -1) / (q.shape[-1] ** 0.5)  # (B, h, T, S)
    if is_causal:
        causal = torch.ones(T, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        scores = scores.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool \
            else scores + attn_mask
    weights = scores.softmax(dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v
