"""Sudoku quality metrics, accumulated over eval batches with torchmetrics.

The predicted grid is the model's most likely digit in every cell, givens included (the model is
not told to copy them), so "keeps every given" is a real test of the prediction.

- cell_acc:             fraction of blank cells whose digit equals the stored solution's;
- grid_acc:             fraction of grids equal to the stored solution in all 81 cells (primary);
- solve_rate:           fraction of grids that are a valid Sudoku and keep every given — a puzzle
                        with several solutions counts as solved by any of them;
- violations_per_grid:  mean number of repeated digits over rows, columns and boxes (`grid.violations`);
- confidence:           mean max probability over blank cells;
- entropy_nats:         mean predictive entropy over blank cells, in nats (ln 9 = 2.197 is uniform).
"""

from __future__ import annotations

import torch

from models.sudoku.grid import N_DIGITS, is_valid_solution, keeps_givens, violations

METRIC_NAMES = ("grid_acc", "cell_acc", "solve_rate", "violations_per_grid", "confidence", "entropy_nats")


class SudokuMetrics:
    """Running quality metrics: `update` per batch of final-step logits, `compute` at the end."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        # imported here: torchmetrics pulls in scipy (~2 s), which speed runs never need
        from torchmetrics import MeanMetric
        from torchmetrics.classification import MulticlassAccuracy

        self.cell_acc = MulticlassAccuracy(num_classes=N_DIGITS, average="micro").to(device)
        self.means = {name: MeanMetric().to(device) for name in METRIC_NAMES if name != "cell_acc"}

    @torch.no_grad()
    def update(self, logits: torch.Tensor, quiz: torch.Tensor, solution: torch.Tensor) -> None:
        """Add a batch: logits (B, 81, 9), quiz (B, 81) digits 0..9, solution (B, 81) digits 1..9."""
        probs = logits.float().softmax(dim=-1)                                   # (B, 81, 9)
        pred = probs.argmax(dim=-1) + 1                                          # (B, 81) digits 1..9
        blank = quiz == 0                                                        # (B, 81)
        if blank.any():
            self.cell_acc.update(pred[blank] - 1, solution[blank] - 1)
            self.means["confidence"].update(probs.max(dim=-1).values[blank])
            entropy = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1)         # (B, 81)
            self.means["entropy_nats"].update(entropy[blank])
        self.means["grid_acc"].update((pred == solution).all(dim=-1).float())
        solved = is_valid_solution(pred) & keeps_givens(pred, quiz)
        self.means["solve_rate"].update(solved.float())
        self.means["violations_per_grid"].update(violations(pred).float())

    def compute(self) -> dict[str, float]:
        """Metric name -> value, in `METRIC_NAMES` order (NaN for a metric that saw no cell)."""
        out = {name: float(metric.compute()) for name, metric in self.means.items()}
        out["cell_acc"] = float(self.cell_acc.compute()) if self.cell_acc.update_count else float("nan")
        return {name: out[name] for name in METRIC_NAMES}


def evaluate_logits(logits: torch.Tensor, quiz: torch.Tensor, solution: torch.Tensor) -> dict[str, float]:
    """All metrics for one batch of final-step logits (B, 81, 9)."""
    metrics = SudokuMetrics(logits.device)
    metrics.update(logits, quiz, solution)
    return metrics.compute()
