"""DocTranslator: the DIMTDA topology assembled (two encoders -> two Q-Formers -> gated fusion -> decoder)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.doctrans.decoder import TextDecoder
from models.doctrans.encoders import PatchEncoder, WindowEncoder
from models.doctrans.layers import Attention
from models.doctrans.qformer import GatedFusion, QFormer


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelSizes:
    """Every size the model is built from (the workload maps its knobs onto this)."""

    image_hw: tuple[int, int]
    """Page height and width in pixels."""
    patch_px: int
    """ViT patch side."""
    vit_width: int
    vit_depth: int
    swin_patch_px: int
    """Swin patch-embedding side (the first stage's token size)."""
    swin_width: int
    """Width of the first Swin stage; doubles at every patch merging."""
    swin_depths: tuple[int, ...]
    """Blocks per Swin stage."""
    window: int
    """Swin attention window side, in tokens."""
    head_dim: int
    """Width of one attention head everywhere."""
    num_queries: int
    qformer_width: int
    dec_width: int
    dec_depth: int
    vocab_size: int
    max_positions: int
    """Longest decoder input (target tokens + BOS)."""


class DocTranslator(nn.Module):
    """Page image + target prefix -> next-token logits."""

    def __init__(self, sizes: ModelSizes, grad_checkpointing: bool = False, attention: str = "sdpa") -> None:
        super().__init__()
        s = sizes
        self.vit = PatchEncoder(image_hw=s.image_hw, patch_px=s.patch_px, width=s.vit_width, depth=s.vit_depth,
                                head_dim=s.head_dim)
        self.swin = WindowEncoder(image_hw=s.image_hw, patch_px=s.swin_patch_px, width=s.swin_width,
                                  depths=s.swin_depths, window=s.window, head_dim=s.head_dim)
        self.qformer_vit = QFormer(encoder_dim=self.vit.out_dim, width=s.qformer_width,
                                   num_queries=s.num_queries, head_dim=s.head_dim)
        self.qformer_swin = QFormer(encoder_dim=self.swin.out_dim, width=s.qformer_width,
                                    num_queries=s.num_queries, head_dim=s.head_dim)
        self.fusion = GatedFusion(width=s.qformer_width, out_dim=s.dec_width)
        self.decoder = TextDecoder(vocab_size=s.vocab_size, width=s.dec_width, depth=s.dec_depth,
                                   head_dim=s.head_dim, max_positions=s.max_positions)
        for part in (self.vit, self.swin, self.decoder):
            part.checkpointing = grad_checkpointing
        for module in self.modules():
            if isinstance(module, Attention):
                module.kernel = attention  # models.attention.attend's kernel, in every attention layer

    def encode(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """image (B, 1, H, W) -> fused memory (B, N, dec_width), gate alpha (B, N, 1)."""
        q_vit = self.qformer_vit(self.vit(image))  # (B, N, qformer_width)
        q_swin = self.qformer_swin(self.swin(image))  # (B, N, qformer_width)
        return self.fusion(q_vit, q_swin)

    def forward(self, image: torch.Tensor, tokens_in: torch.Tensor) -> torch.Tensor:
        """image (B, 1, H, W), tokens_in (B, T) -> logits (B, T, vocab)."""
        memory, _ = self.encode(image)
        return self.decoder(tokens_in, memory)
