"""A decoder-only transformer LM (pre-norm, causal SDPA attention, tied embedding).

`forward_mode` selects how a batch is computed, with the same parameters:

- ``batched``: one padded (B, T) batch; right padding needs no extra mask because a causal query
  at a real position never attends to the pad keys after it.
- ``per_sequence``: one sequence at a time, unpadded (the seed-004 code before true batching).

Both compute the same logits at every real position, so outputs, loss and gradients compare.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.attention import attend


class Block(nn.Module):
    """Pre-norm transformer block: causal self-attention then a 4x MLP."""

    def __init__(self, d_model: int, n_heads: int, dropout: float, attention: str = "sdpa") -> None:
        super().__init__()
        self.n_heads = n_heads
        self.attention = attention
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
        p = self.dropout if self.training else 0.0
        y = attend(q, k, v, kernel=self.attention, is_causal=True, dropout_p=p)
        x = x + self.proj(y.transpose(1, 2).reshape(B, T, C))
        return x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)


class TransformerLM(nn.Module):
    """Token + position embeddings, `n_layers` blocks, final norm, output tied to the token embedding."""

    def __init__(self, vocab_size: int, d_model: int, n_layers: int, n_heads: int, max_positions: int,
                 dropout: float = 0.0, forward_mode: str = "batched", grad_checkpointing: bool = False,
                 attention: str = "sdpa") -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"knob 'd_model': {d_model} is not divisible by n_heads={n_heads}")
        self.tok = nn.Embedding(vocab_size, d_model)
        self.pos = nn.Embedding(max_positions, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, dropout, attention) for _ in range(n_layers))
        self.ln_f = nn.LayerNorm(d_model)
        self.forward_mode = forward_mode
        self.grad_checkpointing = grad_checkpointing
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def logits(self, idx: torch.Tensor) -> torch.Tensor:
        """(B, T) token ids -> (B, T, V) next-token logits."""
        T = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(T, device=idx.device))  # (B, T, d)
        for block in self.blocks:
            if self.grad_checkpointing and self.training:
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_f(x) @ self.tok.weight.T  # (B, T, V), tied output embedding

    def forward(self, tokens: torch.Tensor, host_lengths: list[int]) -> torch.Tensor | list[torch.Tensor]:
        """Next-token logits: (B, T-1, V) padded when batched, a list of (len-1, V) per sequence otherwise."""
        inputs = tokens[:, :-1]  # (B, T-1): the last token is only a target
        if self.forward_mode == "per_sequence":
            return [self.logits(inputs[i:i + 1, : n - 1])[0] for i, n in enumerate(host_lengths)]
        return self.logits(inputs)
