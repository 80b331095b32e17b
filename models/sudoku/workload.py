"""The Sudoku workload (seed 003): an RRN solver trained on generated puzzles or a user's sudoku.csv."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from harness.knobs import Knob
from harness.workload import BatchCounts, LossResult, Preset, Workload, cached, eval_batches
from models.sudoku.data import CURRICULUM, STAGES, SudokuDataset, collate_puzzles, generate, read_sudoku_csv
from models.sudoku.metrics import METRIC_NAMES, SudokuMetrics
from models.sudoku.model import FORWARD_MODES, RecurrentRelationalNetwork, sudoku_loss

if TYPE_CHECKING:
    from harness.config import RunConfig

GENERATOR_VERSION = 1  # bump when the generator's output changes, so stale caches are not served


def _knob(name: str, type_: type, default: Any, kind: str, doc: str, **kw: Any) -> Knob:
    return Knob(name=name, type=type_, default=default, kind=kind, doc=doc, **kw)


KNOBS = (
    _knob("forward", str, "gather", "exact", "message passing: gather = index_select/index_add over the 1,620 "
          "edges; dense = all 81x81 pairs masked by the adjacency", choices=FORWARD_MODES),
    _knob("hidden", int, 96, "quality", "LSTM state / message size per cell", min=1),
    _knob("mlp_width", int, 96, "quality", "hidden width of the input, message and update MLPs", min=1),
    _knob("mlp_layers", int, 3, "quality", "Linear layers per MLP", min=2, max=8),
    _knob("embed_dim", int, 16, "quality", "size of the digit, row and column embeddings", min=1),
    _knob("n_steps", int, 32, "quality", "message-passing steps (the loss averages over all of them)", min=1),
    _knob("constraint_weight", float, 0.5, "quality", "weight of the row/column/box constraint loss "
          "(0.5 reproduces seed 003's logged loss = CE + 0.5 x constraint)", min=0.0),
    _knob("stage", str, "easy", "quality", "difficulty of generated puzzles: givens easy 36-45, medium 30-35, "
          "hard 22-29, beginner 56-65; the eval split is always at this stage", choices=STAGES),
    _knob("curriculum", str, "none", "quality", "easy_to_hard: train easy -> ... -> `stage` over the epochs "
          "(15:20:25 shares, as seed 003's schedule)", choices=("none", "easy_to_hard")),
    _knob("n_train", int, 10_000, "quality", "training puzzles (generated, or at most this many from data_path)",
          min=1),
    _knob("n_eval", int, 1_000, "quality", "eval puzzles (generated, or taken from data_path)", min=1),
    _knob("data_seed", int, 0, "quality", "seed of the puzzle generator and of the data_path train/eval split",
          min=0),
    _knob("data_path", str, "", "quality", "a sudoku.csv file (header quizzes,solutions; 81 digits, 0 = blank); "
          "empty = generated puzzles"),
    _knob("on_bad_rows", str, "skip", "quality", "malformed data_path rows: skip them with a warning listing "
          "their line numbers, or refuse the file", choices=("skip", "refuse")),
)

_BENCH = {"bench_warmup_steps": 3, "bench_steps": 20}


class SudokuWorkload(Workload):
    """Recurrent relational network Sudoku solver (Palm et al. 2018) with seed 003's metrics."""

    name = "sudoku"
    description = "Sudoku RRN (graph net, 81 cells x 20 peers); forward = gather | dense; seed 003"
    knobs = KNOBS
    presets = {
        "tiny": Preset(values={"hidden": 8, "mlp_width": 8, "mlp_layers": 2, "embed_dim": 4, "n_steps": 2,
                               "n_train": 64, "n_eval": 16, "batch_size": 8, "bench_warmup_steps": 1,
                               "bench_steps": 2}, doc="tests: a step in milliseconds"),
        "cpu": Preset(values={"hidden": 32, "mlp_width": 32, "mlp_layers": 2, "embed_dim": 8, "n_steps": 8,
                              "n_train": 8192, "n_eval": 512, "batch_size": 16, "lr": 5e-3,
                              "constraint_weight": 0.1, **_BENCH},
                      doc="2-core CPU report size: easy puzzles, width 32, 8 steps, batch 16, lr 5e-3; constraint "
                          "weight 0.1 (at the seed's 0.5 the prediction sits near uniform for the first ~100 steps)"),
        "seed": Preset(values={"hidden": 96, "mlp_width": 96, "mlp_layers": 3, "embed_dim": 16, "n_steps": 32,
                               "n_train": 360_064, "n_eval": 10_000, "batch_size": 128, "scheduler": "cosine",
                               **_BENCH},
                       doc="seed 003 / Palm et al. size: hidden 96, MLPs 3x96, 32 steps, batch 128 "
                           "(2,813 batches/epoch as logged); the seed trained 60 epochs", device_hint="cuda"),
    }
    default_preset = "cpu"
    primary_metric = "grid_acc"
    higher_is_better = True
    quality_metrics = METRIC_NAMES
    eval_imports = ("torchmetrics",)  # evaluate imports it lazily: ~2-3 s (scipy) a speed run never pays

    def validate(self, cfg: RunConfig) -> None:
        """Reject a curriculum that has nowhere to go, or one combined with a user's file."""
        if cfg.curriculum != "none" and cfg.stage not in CURRICULUM[1:]:
            raise ValueError(f"knob 'curriculum': easy_to_hard with stage={cfg.stage} has nothing to ramp to; "
                             "set stage=medium or stage=hard (the final stage), or curriculum=none")
        if cfg.curriculum != "none" and cfg.data_path:
            raise ValueError("knob 'curriculum': easy_to_hard needs generated puzzles; "
                             "unset data_path or set curriculum=none")
        if cfg.data_path and not Path(cfg.data_path).is_file():  # refused before any run starts
            raise ValueError(f"knob 'data_path': file '{cfg.data_path}' does not exist; give a sudoku.csv path "
                             "or leave it empty (generated puzzles)")

    def build_model(self, cfg: RunConfig) -> nn.Module:
        """An RRN sized by the config; both forward modes share parameters and their init."""
        return RecurrentRelationalNetwork(hidden=cfg.hidden, mlp_width=cfg.mlp_width, mlp_layers=cfg.mlp_layers,
                                          embed_dim=cfg.embed_dim, n_steps=cfg.n_steps, forward_mode=cfg.forward)

    def build_datasets(self, cfg: RunConfig) -> tuple[SudokuDataset, SudokuDataset]:
        """(train, eval) from the generator (cached) or from data_path."""
        if cfg.data_path:
            return self._file_datasets(cfg)
        train_stages = CURRICULUM[:CURRICULUM.index(cfg.stage) + 1] if cfg.curriculum == "easy_to_hard" \
            else (cfg.stage,)
        splits = {}
        for split, n, stages in (("train", cfg.n_train, train_stages), ("eval", cfg.n_eval, (cfg.stage,))):
            params = {"version": GENERATOR_VERSION, "n": n, "stages": list(stages), "seed": cfg.data_seed,
                      "split": split}
            data = cached("sudoku", params, lambda n=n, stages=stages, split=split:
                          generate(n, stages, cfg.data_seed, split))
            splits[split] = SudokuDataset(data["quizzes"], data["solutions"], stages, total_epochs=cfg.epochs)
        return splits["train"], splits["eval"]

    def _file_datasets(self, cfg: RunConfig) -> tuple[SudokuDataset, SudokuDataset]:
        if cfg.stage != "easy":
            warnings.warn(f"stage={cfg.stage} is ignored with data_path: the file's puzzles are used as they are",
                          stacklevel=3)
        quizzes, solutions = read_sudoku_csv(cfg.data_path, cfg.on_bad_rows)
        if len(quizzes) <= cfg.n_eval:
            raise ValueError(f"knob 'n_eval': bad value {cfg.n_eval}: '{cfg.data_path}' has {len(quizzes)} valid "
                             f"rows, leaving none to train on; use n_eval < {len(quizzes)}")
        order = np.random.default_rng(cfg.data_seed).permutation(len(quizzes))
        parts = (order[cfg.n_eval:cfg.n_eval + cfg.n_train], order[:cfg.n_eval])
        train, evaluation = (SudokuDataset(torch.from_numpy(quizzes[idx])[None], torch.from_numpy(solutions[idx]),
                                           ("file",)) for idx in parts)
        return train, evaluation

    def collate(self, cfg: RunConfig) -> Any:
        """Stack quizzes and solutions into int64 (B, 81) tensors."""
        return collate_puzzles

    def forward(self, model: nn.Module, batch: dict[str, torch.Tensor], cfg: RunConfig) -> torch.Tensor:
        """Per-step logits (B, n_steps, 81, 9)."""
        return model(batch["quiz"])

    def loss(self, outputs: torch.Tensor, batch: dict[str, torch.Tensor], cfg: RunConfig) -> LossResult:
        """Sum over puzzles of (CE over steps and cells + constraint_weight x constraint)."""
        total, ce, constraint = sudoku_loss(outputs, batch["solution"], cfg.constraint_weight)
        return LossResult(total=total.sum(), parts={"ce": ce.sum(), "constraint": constraint.sum()})

    def batch_counts(self, batch: dict[str, torch.Tensor], cfg: RunConfig) -> BatchCounts:
        """One loss element per puzzle."""
        n = int(batch["quiz"].shape[0])
        return BatchCounts(samples=n, loss_elements=n)

    def evaluate(self, model: nn.Module, dataset: torch.utils.data.Dataset, cfg: RunConfig,
                 device: torch.device) -> dict[str, float]:
        """Metrics of the final step's prediction over the eval split."""
        metrics = SudokuMetrics(device)
        for batch in eval_batches(dataset, cfg.batch_size, collate_puzzles):
            batch = self.to_device(batch, device)
            metrics.update(model(batch["quiz"])[:, -1], batch["quiz"], batch["solution"])
        return metrics.compute()
