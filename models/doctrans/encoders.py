"""The two page encoders: a ViT/DiT-like patch encoder and a Swin-like hierarchical windowed one.

Both read the same grayscale page (B, 1, H, W) and return a token sequence (B, T, d_out): the patch
encoder sees the page at one scale with global attention; the windowed encoder attends inside
local windows (shifted every other block so information crosses window borders) and halves the
resolution between stages with patch merging, as in DIMTDA's DiT + Donut-Swin pair.
"""

from __future__ import annotations

import torch
from torch import nn

from models.doctrans.layers import MLP, Attention, Block, PatchEmbed, init_weights, run_blocks


class PatchEncoder(nn.Module):
    """ViT: non-overlapping patches, learned positions, global self-attention blocks."""

    def __init__(self, *, image_hw: tuple[int, int], patch_px: int, width: int, depth: int, head_dim: int) -> None:
        super().__init__()
        self.out_dim = width
        self.checkpointing = False
        tokens = (image_hw[0] // patch_px) * (image_hw[1] // patch_px)
        self.patch = PatchEmbed(patch_px, width)
        self.pos = nn.Parameter(torch.zeros(1, tokens, width))
        self.blocks = nn.ModuleList(Block(width, head_dim) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 1, H, W) -> tokens (B, H/p * W/p, width)."""
        x = self.patch(image).flatten(1, 2) + self.pos  # (B, T, d)
        return self.norm(run_blocks(self.blocks, x, checkpointing=self.checkpointing))


def window_partition(x: torch.Tensor, window: int) -> torch.Tensor:
    """(B, H, W, C) -> (B * nW, window*window, C), windows in row-major order per image."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_merge(windows: torch.Tensor, window: int, H: int, W: int) -> torch.Tensor:
    """Inverse of `window_partition`: (B * nW, window*window, C) -> (B, H, W, C)."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


def relative_position_index(window: int) -> torch.Tensor:
    """(N, N) index into a ((2w-1)^2)-entry bias table for every pair of positions in a window."""
    coords = torch.stack(torch.meshgrid(torch.arange(window), torch.arange(window), indexing="ij")).flatten(1)
    rel = coords[:, :, None] - coords[:, None, :] + (window - 1)  # (2, N, N), each in [0, 2w-2]
    return rel[0] * (2 * window - 1) + rel[1]


def shifted_window_mask(H: int, W: int, window: int, shift: int) -> torch.Tensor:
    """(nW, N, N) additive mask: -inf between tokens that the cyclic shift brought from far regions."""
    region = torch.zeros(1, H, W, 1)
    bands = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for hs in bands:
        for ws in bands:
            region[:, hs, ws, :] = label
            label += 1
    ids = window_partition(region, window).squeeze(-1)  # (nW, N)
    same = ids[:, :, None] == ids[:, None, :]
    return torch.zeros(same.shape).masked_fill(~same, float("-inf"))


class WindowBlock(nn.Module):
    """Swin block: (shifted-)window self-attention with relative position bias, then an MLP."""

    def __init__(self, dim: int, head_dim: int, window: int, shift: int, resolution: tuple[int, int]) -> None:
        super().__init__()
        self.window, self.shift = window, shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, head_dim)
        self.rel_bias = nn.Parameter(torch.zeros((2 * window - 1) ** 2, dim // head_dim))
        self.register_buffer("rel_index", relative_position_index(window), persistent=False)
        mask = shifted_window_mask(*resolution, window, shift) if shift else None
        self.register_buffer("shift_mask", mask, persistent=False)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H, W, C)."""
        B, H, W, _ = x.shape
        y = self.norm1(x)
        if self.shift:
            y = torch.roll(y, shifts=(-self.shift, -self.shift), dims=(1, 2))
        bias = self.rel_bias[self.rel_index].permute(2, 0, 1).unsqueeze(0)  # (1, heads, N, N)
        if self.shift:
            # one mask per window, tiled over the batch to match window_partition's (b, window) order
            bias = (bias + self.shift_mask.unsqueeze(1)).repeat(B, 1, 1, 1)  # (B*nW, heads, N, N)
        y = self.attn(window_partition(y, self.window), attn_mask=bias)  # (B*nW, N, C)
        y = window_merge(y, self.window, H, W)
        if self.shift:
            y = torch.roll(y, shifts=(self.shift, self.shift), dims=(1, 2))
        x = x + y
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    """Halve the resolution, double the width: concatenate each 2x2 neighbourhood, then project."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim)
        self.reduce = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, H, W, C) -> (B, H/2, W/2, 2C)."""
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduce(self.norm(x))


class WindowEncoder(nn.Module):
    """Swin: patch embedding, stages of window blocks, patch merging between stages."""

    def __init__(self, *, image_hw: tuple[int, int], patch_px: int, width: int, depths: tuple[int, ...],
                 window: int, head_dim: int) -> None:
        super().__init__()
        self.checkpointing = False
        self.patch = PatchEmbed(patch_px, width)
        self.patch_norm = nn.LayerNorm(width)
        self.stages = nn.ModuleList()
        self.merges = nn.ModuleList()
        h, w, dim = image_hw[0] // patch_px, image_hw[1] // patch_px, width
        for s, depth in enumerate(depths):
            # Shifting is pointless (and ill-defined) when one window covers the whole stage.
            shift = window // 2 if min(h, w) > window else 0
            self.stages.append(nn.ModuleList(
                WindowBlock(dim, head_dim, window, shift if i % 2 else 0, (h, w)) for i in range(depth)))
            if s < len(depths) - 1:
                self.merges.append(PatchMerging(dim))
                h, w, dim = h // 2, w // 2, 2 * dim
        self.out_dim = dim
        self.norm = nn.LayerNorm(dim)
        self.apply(init_weights)
        for block in self.modules():
            if isinstance(block, WindowBlock):
                nn.init.trunc_normal_(block.rel_bias, std=0.02)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 1, H, W) -> tokens (B, H/(p 2^(S-1)) * W/(p 2^(S-1)), width 2^(S-1))."""
        x = self.patch_norm(self.patch(image))  # (B, H/p, W/p, C)
        for s, stage in enumerate(self.stages):
            x = run_blocks(stage, x, checkpointing=self.checkpointing)
            if s < len(self.merges):
                x = self.merges[s](x)
        return self.norm(x.flatten(1, 2))
