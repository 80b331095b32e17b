"""The Sudoku board as a graph: cells, units (rows, columns, boxes), peer edges, and validity checks.

Cells are numbered 0..80 row-major (cell = 9 * row + col). Grids hold digits 1..9, with 0 for a blank.
Everything here is a pure function of the board layout, shared by the data generator, the CSV
reader, the model (edges, adjacency) and the metrics (violations, validity). The cached layout
tensors are always built on the CPU (explicit device), so a first call under a `torch.device("meta")`
context (e.g. `Workload.parameter_count`) cannot cache meta tensors.
"""

from __future__ import annotations

from functools import cache

import torch

N_CELLS = 81
N_DIGITS = 9
N_PEERS = 20


def cell_rows() -> torch.Tensor:
    """Row of every cell, (81,) int64."""
    return torch.arange(N_CELLS, device="cpu") // 9


def cell_cols() -> torch.Tensor:
    """Column of every cell, (81,) int64."""
    return torch.arange(N_CELLS, device="cpu") % 9


@cache
def units() -> torch.Tensor:
    """The 27 units (9 rows, 9 columns, 9 boxes) as cell indices, (27, 9) int64."""
    r = torch.arange(9, device="cpu")
    rows = r[:, None] * 9 + r[None, :]                     # (9, 9): unit i = row i
    cols = rows.T.contiguous()                             # (9, 9): unit i = column i
    box_origin = (r // 3) * 27 + (r % 3) * 3               # top-left cell of box i
    offsets = (r // 3) * 9 + r % 3                         # the 9 cells of a box relative to its origin
    boxes = box_origin[:, None] + offsets[None, :]         # (9, 9)
    return torch.cat([rows, cols, boxes]).clone()


@cache
def unit_membership() -> torch.Tensor:
    """One-hot unit membership, (27, 81) float32: [u, c] = 1 when cell c lies in unit u."""
    member = torch.zeros(27, N_CELLS, device="cpu")
    member.scatter_(1, units(), 1.0)
    return member


@cache
def adjacency() -> torch.Tensor:
    """Peer adjacency, (81, 81) float32: [i, j] = 1 when i != j share a row, column or box."""
    member = unit_membership()
    shared = member.T @ member                             # (81, 81): units two cells share
    adj = (shared > 0).float()
    adj.fill_diagonal_(0.0)
    return adj


@cache
def edges() -> tuple[torch.Tensor, torch.Tensor]:
    """Directed peer edges (src, dst), each (1620,) int64, sorted by dst then src; no duplicates."""
    dst, src = adjacency().T.nonzero(as_tuple=True)        # row-major over adj.T: sorted by dst, then src
    assert src.numel() == N_CELLS * N_PEERS
    return src.clone(), dst.clone()


def unit_digit_counts(probs: torch.Tensor) -> torch.Tensor:
    """Expected count of each digit in each unit: (..., 81, 9) probabilities -> (..., 27, 9)."""
    member = unit_membership().to(device=probs.device, dtype=probs.dtype)
    return torch.einsum("uc,...cd->...ud", member, probs)


def violations(grids: torch.Tensor) -> torch.Tensor:
    """Per grid, how many unit entries repeat a digit already in the unit: (N, 81) -> (N,) int64.

    A unit with k distinct digits among its filled cells contributes (filled cells - k); a valid
    solution scores 0, and changing one cell of a solution scores 3 (its row, column and box).
    """
    grids = torch.as_tensor(grids)
    in_units = grids[:, units().to(grids.device)].sort(dim=-1).values   # (N, 27, 9) each unit sorted
    repeats = (in_units[..., 1:] == in_units[..., :-1]) & (in_units[..., 1:] > 0)  # equal neighbours
    return repeats.sum(dim=(-2, -1))


def is_valid_solution(grids: torch.Tensor) -> torch.Tensor:
    """Per grid, whether it is a complete valid Sudoku: (N, 81) -> (N,) bool."""
    grids = torch.as_tensor(grids)
    complete = ((grids >= 1) & (grids <= 9)).all(dim=-1)
    return complete & (violations(grids) == 0)


def keeps_givens(grids: torch.Tensor, quizzes: torch.Tensor) -> torch.Tensor:
    """Per grid, whether every given (non-zero) cell of the quiz has the same digit: (N,) bool."""
    quizzes = torch.as_tensor(quizzes)
    return ((quizzes == 0) | (torch.as_tensor(grids).long() == quizzes.long())).all(dim=-1)
