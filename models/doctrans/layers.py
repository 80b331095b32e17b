"""Transformer building blocks shared by every part of the document translator.

One attention module serves self-, cross-, causal and windowed attention; one pre-norm block serves
the ViT encoder, the Q-Formers and the text decoder; `run_blocks` is the single place where
gradient checkpointing is applied.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.attention import attend


def init_weights(module: nn.Module) -> None:
    """ViT/BERT-style init: truncated-normal linear weights (std 0.02), zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, std=0.02)


class PatchEmbed(nn.Module):
    """Cut a grayscale page into non-overlapping p x p patches and project each (ViT's patchify + linear).

    Same function as a stride-p convolution, written as a reshape and a matmul because the CPU
    convolution backward costs milliseconds per call at these sizes.
    """

    def __init__(self, patch_px: int, dim: int) -> None:
        super().__init__()
        self.patch_px = patch_px
        self.proj = nn.Linear(patch_px * patch_px, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 1, H, W) -> patches (B, H/p, W/p, dim)."""
        B, _, H, W = image.shape
        p = self.patch_px
        patches = image.view(B, H // p, p, W // p, p).transpose(2, 3).reshape(B, H // p, W // p, p * p)
        return self.proj(patches)


class Attention(nn.Module):
    """Multi-head attention; keys/values come from `context` (cross) or from `x` itself (self)."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None) -> None:
        super().__init__()
        assert dim % head_dim == 0, (dim, head_dim)  # validated by the workload before building
        self.heads = dim // head_dim
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim or dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.kernel = "sdpa"
        """`models.attention.attend`'s kernel (the model's `attention` switch sets every module's)."""

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        """x (B, T, d), context (B, S, d_ctx) -> (B, T, d)."""
        B, T, d = x.shape
        ctx = x if context is None else context
        S = ctx.shape[1]
        q = self.q(x).view(B, T, self.heads, -1).transpose(1, 2)  # (B, h, T, hd)
        k, v = self.kv(ctx).view(B, S, 2, self.heads, -1).permute(2, 0, 3, 1, 4)  # 2 x (B, h, S, hd)
        if attn_mask is not None and attn_mask.is_floating_point():
            attn_mask = attn_mask.to(q.dtype)  # under autocast q is half precision, an additive mask is not
        y = attend(q, k, v, kernel=self.kernel, attn_mask=attn_mask, is_causal=is_causal)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class MLP(nn.Sequential):
    """Two-layer GELU feed-forward with a 4x hidden width."""

    def __init__(self, dim: int, ratio: int = 4) -> None:
        super().__init__(nn.Linear(dim, ratio * dim), nn.GELU(), nn.Linear(ratio * dim, dim))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP."""

    def __init__(self, dim: int, head_dim: int, context_dim: int | None = None, causal: bool = False) -> None:
        super().__init__()
        self.causal = causal
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, head_dim)
        self.norm_cross = nn.LayerNorm(dim) if context_dim else None
        self.cross = Attention(dim, head_dim, context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, d), context (B, S, d_ctx) or None -> (B, T, d)."""
        x = x + self.attn(self.norm1(x), is_causal=self.causal)
        if self.cross is not None:
            assert context is not None, "a cross-attention block needs a context"
            x = x + self.cross(self.norm_cross(x), context)
        return x + self.mlp(self.norm2(x))


def run_blocks(blocks: Iterable[nn.Module], x: torch.Tensor, *args: Any, checkpointing: bool) -> torch.Tensor:
    """Apply blocks in order; with `checkpointing` (and in training) recompute each in backward.

    Non-reentrant checkpointing keeps autograd semantics intact (inputs without grad, kwargs, nested
    checkpoints), and dropout-free blocks make the recomputation bit-identical to the first pass.
    """
    for block in blocks:
        if checkpointing and block.training and torch.is_grad_enabled():
            x = checkpoint(block, x, *args, use_reentrant=False)
        else:
            x = block(x, *args)
    return x
