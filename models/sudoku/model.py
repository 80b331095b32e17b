"""Recurrent relational network (Palm, Paquet & Winther, NeurIPS 2018) for Sudoku, and its loss.

Each of the 81 cells is a node linked to its 20 peers (1,620 directed edges). Per step t:

    m_j     = sum over peers i of MLP_msg([h_i; h_j])     # messages into cell j
    x_j     = MLP_post([m_j; x0_j])                       # x0 = MLP_in(digit, row, col embeddings)
    h, c    = LSTMCell(x, (h, c))                         # h starts at x0, c at 0
    logits  = Linear(h -> 9 digits)                       # one prediction per step

Message passing comes in two implementations of the same function (`forward` knob):

- ``gather``: index_select the sender and receiver parts of every edge, run the MLP on the 1,620
  pairs, index_add the results into their receivers;
- ``dense``: form all 81 x 81 pairs by broadcasting, run the MLP on every pair and sum with the 0/1
  adjacency as a batched product: 4x the message FLOPs (6,561 pairs, not 1,620) but no gather or scatter.

Both first apply MLP_msg's first layer per cell, split into its sender and receiver halves
(W [h_i; h_j] + b = W_src h_i + W_dst h_j + b): the same function as running it on each
concatenated pair, at 1/20 of the cost, since each cell is a sender or receiver on 20 edges.

Both build the same parameters in the same order, so one seed gives one model either way.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.sudoku.grid import N_CELLS, N_DIGITS, adjacency, cell_cols, cell_rows, edges, unit_digit_counts

FORWARD_MODES = ("gather", "dense")


def mlp(n_in: int, width: int, n_out: int, n_layers: int) -> nn.Sequential:
    """n_layers Linear layers with ReLU between them (none after the last)."""
    dims = [n_in] + [width] * (n_layers - 1) + [n_out]
    layers: list[nn.Module] = []
    for i in range(n_layers):
        layers.append(nn.Linear(dims[i], dims[i + 1]))
        if i < n_layers - 1:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RecurrentRelationalNetwork(nn.Module):
    """RRN over the Sudoku peer graph; `forward(quiz)` returns per-step logits (B, steps, 81, 9)."""

    def __init__(self, *, hidden: int, mlp_width: int, mlp_layers: int, embed_dim: int, n_steps: int,
                 forward_mode: str) -> None:
        super().__init__()
        if forward_mode not in FORWARD_MODES:
            raise ValueError(f"knob 'forward': bad value {forward_mode!r}; allowed: {' | '.join(FORWARD_MODES)}")
        if mlp_layers < 2:
            raise ValueError(f"knob 'mlp_layers': bad value {mlp_layers}; the message MLP needs 2 or more layers")
        self.hidden, self.n_steps, self.forward_mode = hidden, n_steps, forward_mode
        self.digit_embed = nn.Embedding(N_DIGITS + 1, embed_dim)        # 0 = blank
        self.row_embed = nn.Embedding(9, embed_dim)
        self.col_embed = nn.Embedding(9, embed_dim)
        self.input_mlp = mlp(3 * embed_dim, mlp_width, hidden, mlp_layers)
        self.msg_mlp = mlp(2 * hidden, mlp_width, hidden, mlp_layers)
        self.post_mlp = mlp(2 * hidden, mlp_width, hidden, mlp_layers)
        self.lstm = nn.LSTMCell(hidden, hidden)
        self.readout = nn.Linear(hidden, N_DIGITS)
        # The board layout is fixed: kept out of parameters *and* buffers, because weight averaging
        # (AveragedModel with use_buffers=True) blends integer buffers in float and truncates them.
        self._layout: dict[torch.device, dict[str, torch.Tensor]] = {}

    def layout(self, device: torch.device) -> dict[str, torch.Tensor]:
        """Edge list, adjacency and cell rows/columns on `device`, built once per device."""
        if device not in self._layout:
            src, dst = edges()
            self._layout[device] = {name: t.to(device) for name, t in (
                ("src", src), ("dst", dst), ("adj", adjacency()), ("rows", cell_rows()), ("cols", cell_cols()))}
        return self._layout[device]

    def _first_layer_halves(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """MLP_msg's first layer on [h_i; h_j] = W_src h_i + (W_dst h_j + b), computed once per cell."""
        first = self.msg_mlp[0]
        w_src, w_dst = first.weight[:, :self.hidden], first.weight[:, self.hidden:]
        return h @ w_src.T, h @ w_dst.T + first.bias                                  # (B, 81, W) each

    def messages_gather(self, h: torch.Tensor) -> torch.Tensor:
        """Summed incoming messages over the edge list: (B, 81, H) -> (B, 81, H)."""
        from_src, to_dst = self._first_layer_halves(h)
        graph = self.layout(h.device)
        pre = from_src.index_select(1, graph["src"]) + to_dst.index_select(1, graph["dst"])  # (B, E, W)
        msg = self.msg_mlp[1:](pre)                                                   # (B, E, H)
        return torch.zeros_like(h).index_add_(1, graph["dst"], msg)

    def messages_dense(self, h: torch.Tensor) -> torch.Tensor:
        """Summed incoming messages over all 81 x 81 pairs, masked by adjacency: (B, 81, H) -> (B, 81, H)."""
        from_src, to_dst = self._first_layer_halves(h)
        pre = from_src[:, :, None, :] + to_dst[:, None, :, :]                         # (B, 81_i, 81_j, W)
        msg = self.msg_mlp[1:](pre)                                                   # (B, 81_i, 81_j, H)
        adj = self.layout(h.device)["adj"].to(msg.dtype)                             # (81, 81) 0/1
        return torch.einsum("ij,bijh->bjh", adj, msg)

    def forward(self, quiz: torch.Tensor) -> torch.Tensor:
        """(B, 81) digits 0..9 -> per-step digit logits (B, n_steps, 81, 9)."""
        b, graph = quiz.shape[0], self.layout(quiz.device)
        emb = torch.cat([self.digit_embed(quiz),
                         self.row_embed(graph["rows"]).expand(b, -1, -1),
                         self.col_embed(graph["cols"]).expand(b, -1, -1)], dim=-1)   # (B, 81, 3E)
        x0 = self.input_mlp(emb)                                                      # (B, 81, H)
        h, c = x0.reshape(b * N_CELLS, -1), torch.zeros_like(x0).reshape(b * N_CELLS, -1)  # (B*81, H)
        messages = self.messages_gather if self.forward_mode == "gather" else self.messages_dense
        logits = []
        for _ in range(self.n_steps):
            m = messages(h.view(b, N_CELLS, -1))                                      # (B, 81, H)
            x = self.post_mlp(torch.cat([m, x0], dim=-1))                             # (B, 81, H)
            h, c = self.lstm(x.reshape(b * N_CELLS, -1), (h, c))
            logits.append(self.readout(h).view(b, N_CELLS, N_DIGITS))
        return torch.stack(logits, dim=1)                                             # (B, S, 81, 9)


def sudoku_loss(logits: torch.Tensor, solution: torch.Tensor,
                constraint_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample losses: (total, ce, constraint), each (B,); total = ce + constraint_weight * constraint.

    ce: cross-entropy against the solution, averaged over steps and all 81 cells (Palm et al.).
    constraint: the expected count of each digit in each row, column and box should be 1; the squared
    excess over 1, summed over the 27 units x 9 digits and averaged over steps. Zero for any
    prediction whose probabilities respect the rules, so it never fights a valid answer.
    logits (B, S, 81, 9); solution (B, 81) digits 1..9.
    """
    b, n_steps = logits.shape[:2]
    target = (solution - 1).unsqueeze(1).expand(b, n_steps, N_CELLS)                 # (B, S, 81)
    ce = F.cross_entropy(logits.reshape(-1, N_DIGITS), target.reshape(-1), reduction="none")
    ce = ce.view(b, n_steps * N_CELLS).mean(dim=1)                                     # (B,)
    counts = unit_digit_counts(logits.softmax(dim=-1))                                 # (B, S, 27, 9)
    constraint = (counts - 1).clamp(min=0).square().sum(dim=(-2, -1)).mean(dim=1)     # (B,)
    return ce + constraint_weight * constraint, ce, constraint
