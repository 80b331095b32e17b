"""The text decoder: causal self-attention over the target prefix, cross-attention to the fused
page queries, and an output layer tied to the token embedding (as in mBART/Donut decoders)."""

from __future__ import annotations

import torch
from torch import nn

from models.doctrans.layers import Block, init_weights, run_blocks


class TextDecoder(nn.Module):
    """Transformer decoder with learned positions and a tied output embedding."""

    def __init__(self, *, vocab_size: int, width: int, depth: int, head_dim: int, max_positions: int) -> None:
        super().__init__()
        self.checkpointing = False
        self.embed = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(max_positions, width)
        self.blocks = nn.ModuleList(Block(width, head_dim, context_dim=width, causal=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """tokens (B, T) ids, memory (B, N, width) -> logits (B, T, vocab)."""
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens) + self.pos(positions)  # (B, T, width)
        x = run_blocks(self.blocks, x, memory, checkpointing=self.checkpointing)
        return self.norm(x) @ self.embed.weight.t()  # tied output embedding: (B, T, vocab)
