"""Q-Formers and gated fusion: compress each encoder's tokens to N queries, then mix the two sets.

A Q-Former owns N learnable query vectors; one block lets them self-attend and cross-attend to the
(projected) tokens of one encoder, so every page becomes a fixed-size (N, d) summary whatever the
encoder's token count. The gate decides, per query, how much of each encoder's summary to keep:
alpha = sigmoid(W [Q_a; Q_b]),  Q = alpha * Q_a + (1 - alpha) * Q_b, then Q is projected to the
decoder width.
"""

from __future__ import annotations

import torch
from torch import nn

from models.doctrans.layers import Block, init_weights


class QFormer(nn.Module):
    """N learnable queries; one block of self-attention + cross-attention to one encoder's tokens."""

    def __init__(self, *, encoder_dim: int, width: int, num_queries: int, head_dim: int) -> None:
        super().__init__()
        self.encoder_proj = nn.Linear(encoder_dim, width)
        self.queries = nn.Parameter(torch.zeros(num_queries, width))
        self.block = Block(width, head_dim, context_dim=width)
        self.norm = nn.LayerNorm(width)
        self.apply(init_weights)
        nn.init.trunc_normal_(self.queries, std=0.02)

    def forward(self, encoder_tokens: torch.Tensor) -> torch.Tensor:
        """encoder_tokens (B, T, d_enc) -> queries (B, N, width)."""
        context = self.encoder_proj(encoder_tokens)  # (B, T, width)
        queries = self.queries.expand(encoder_tokens.shape[0], -1, -1)  # (B, N, width)
        return self.norm(self.block(queries, context))


class GatedFusion(nn.Module):
    """alpha = sigmoid(W [Q_a; Q_b]) per query; returns (project(alpha Q_a + (1-alpha) Q_b), alpha)."""

    def __init__(self, *, width: int, out_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * width, 1)
        self.out = nn.Linear(width, out_dim)
        self.apply(init_weights)

    def forward(self, q_a: torch.Tensor, q_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q_a, q_b (B, N, width) -> fused (B, N, out_dim), alpha (B, N, 1)."""
        alpha = torch.sigmoid(self.gate(torch.cat([q_a, q_b], dim=-1)))  # (B, N, 1)
        return self.out(alpha * q_a + (1 - alpha) * q_b), alpha
