"""Sudoku model, loss, metrics and the workload wiring (tiny preset)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from harness.registry import resolve
from models.sudoku.data import blank_cells, solved_grids, write_sudoku_csv
from models.sudoku.grid import adjacency, edges, unit_membership, units
from models.sudoku.metrics import METRIC_NAMES, evaluate_logits
from models.sudoku.model import sudoku_loss

SOLVED = "123456789456789123789123456234567891567891234891234567345678912678912345912345678"


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRAINBENCH_CACHE", str(tmp_path / "cache"))


def grid(text: str) -> torch.Tensor:
    return torch.tensor([int(ch) for ch in text])


def confident(grids: torch.Tensor, scale: float = 50.0) -> torch.Tensor:
    """Logits (N, 81, 9) that put (almost) all probability on each cell's digit."""
    return scale * torch.nn.functional.one_hot(grids - 1, 9).float()


def relabelled(g: torch.Tensor, a: int, b: int) -> torch.Tensor:
    """The grid with digits a and b swapped everywhere: another valid solution."""
    return torch.where(g == a, b, torch.where(g == b, a, g))


def tiny(**overrides):
    cfg = resolve("sudoku", {"preset": "tiny", **overrides})
    return cfg, cfg.get_workload()


# --- metrics ------------------------------------------------------------------------------------

def test_solve_rate_counts_a_valid_alternative_solution():
    solution = grid(SOLVED)
    other = relabelled(solution, 1, 2)                       # valid, differs exactly on the 1s and 2s
    quiz = torch.where((solution == 1) | (solution == 2), 0, solution)  # 18 blanks; both grids fit
    m = evaluate_logits(confident(other[None]), quiz[None], solution[None])
    assert m["solve_rate"] == 1.0 and m["violations_per_grid"] == 0.0
    assert m["grid_acc"] == 0.0 and m["cell_acc"] == 0.0     # every blank differs from the stored solution


def test_a_valid_grid_that_drops_a_given_is_not_solved():
    solution = grid(SOLVED)
    quiz = solution.clone()
    quiz[10:50] = 0                                          # givens include some 1s and 2s
    assert ((quiz == 1) | (quiz == 2)).any()
    m = evaluate_logits(confident(relabelled(solution, 1, 2)[None]), quiz[None], solution[None])
    assert m["solve_rate"] == 0.0 and m["violations_per_grid"] == 0.0


def test_metrics_by_hand_on_two_grids():
    solution = grid(SOLVED)
    quiz = solution.clone()
    quiz[:9] = 0                                             # blank the first row
    wrong = solution.clone()
    wrong[0] = solution[1]                                   # one wrong blank -> 3 violations
    m = evaluate_logits(confident(torch.stack([solution, wrong])), quiz.expand(2, 81), solution.expand(2, 81))
    assert m["grid_acc"] == 0.5 and m["solve_rate"] == 0.5
    assert m["violations_per_grid"] == 1.5
    assert m["cell_acc"] == pytest.approx(17 / 18)
    assert m["confidence"] == pytest.approx(1.0) and m["entropy_nats"] == pytest.approx(0.0, abs=1e-6)
    uniform = evaluate_logits(torch.zeros(1, 81, 9), quiz[None], solution[None])
    assert uniform["confidence"] == pytest.approx(1 / 9) and uniform["entropy_nats"] == pytest.approx(math.log(9))
    assert list(m) == list(METRIC_NAMES)


# --- loss ---------------------------------------------------------------------------------------

def test_loss_by_hand():
    solution = grid(SOLVED)
    total, ce, constraint = sudoku_loss(confident(solution[None])[:, None], solution[None], 0.5)
    assert ce.item() == pytest.approx(0.0, abs=1e-6) and constraint.item() == pytest.approx(0.0, abs=1e-6)
    wrong = solution.clone()
    wrong[40] = solution[41]                                 # the wrong digit appears twice in 3 units
    total, ce, constraint = sudoku_loss(confident(wrong[None])[:, None], solution[None], 0.5)
    assert ce.item() == pytest.approx(50.0 / 81, rel=1e-5)  # one cell off by a logit gap of 50
    assert constraint.item() == pytest.approx(3.0, rel=1e-5)  # excess count 1, squared, in 3 units
    assert total.item() == pytest.approx(50.0 / 81 + 1.5, rel=1e-5)


def test_loss_is_a_sum_over_puzzles_and_averages_over_steps():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 81, 9)
    solutions = torch.stack([grid(SOLVED), relabelled(grid(SOLVED), 3, 7)])
    cfg, wl = tiny()
    both = wl.loss(logits, {"solution": solutions}, cfg)
    single = [wl.loss(logits[i:i + 1], {"solution": solutions[i:i + 1]}, cfg) for i in range(2)]
    assert both.total.item() == pytest.approx(sum(s.total.item() for s in single), rel=1e-6)
    assert set(both.parts) == {"ce", "constraint"}
    _, ce_all, _ = sudoku_loss(logits, solutions, 0.5)
    per_step = [sudoku_loss(logits[:, t:t + 1], solutions, 0.5)[1] for t in range(3)]
    assert torch.allclose(ce_all, sum(per_step) / 3)
    assert wl.batch_counts({"quiz": solutions}, cfg).loss_elements == 2


# --- model --------------------------------------------------------------------------------------

def test_gather_and_dense_compute_the_same_function_and_gradients():
    outs, grads = {}, {}
    for mode in ("gather", "dense"):
        cfg, wl = tiny(forward=mode, n_steps=3, hidden=12, mlp_width=10, mlp_layers=3)
        torch.manual_seed(0)
        model = wl.build_model(cfg)
        train, _ = wl.build_datasets(cfg)
        batch = wl.collate(cfg)([train[i] for i in range(4)])
        outs[mode] = wl.forward(model, batch, cfg)
        wl.loss(outs[mode], batch, cfg).total.backward()
        grads[mode] = {name: p.grad for name, p in model.named_parameters()}
    assert outs["gather"].shape == (4, 3, 81, 9)
    assert torch.allclose(outs["gather"], outs["dense"], atol=1e-5, rtol=1e-4)
    assert list(grads["gather"]) == list(grads["dense"])
    for name, g in grads["gather"].items():
        assert g is not None and g.abs().sum() > 0, name
        assert torch.allclose(g, grads["dense"][name], atol=1e-5, rtol=1e-4), name


def test_messages_only_flow_between_peers():
    cfg, wl = tiny(n_steps=1)
    torch.manual_seed(0)
    model = wl.build_model(cfg)
    h = torch.zeros(1, 81, cfg.hidden)
    base = model.messages_gather(h)
    h[0, 0] = 1.0                                            # perturb cell 0 only
    changed = (model.messages_gather(h) - base).abs().sum(dim=-1)[0] > 0  # (81,) cells whose message moved
    expected = torch.zeros(81, dtype=torch.bool)
    expected[[1, 2, 3, 4, 5, 6, 7, 8, 9, 18, 27, 36, 45, 54, 63, 72, 10, 11, 19, 20, 0]] = True
    assert torch.equal(changed, expected)                    # its 20 peers, and itself as a receiver


# --- workload -----------------------------------------------------------------------------------

def test_tiny_training_step_and_evaluate():
    cfg, wl = tiny()
    torch.manual_seed(0)
    model = wl.build_model(cfg)
    train, evaluation = wl.build_datasets(cfg)
    assert (len(train), len(evaluation)) == (cfg.n_train, cfg.n_eval)
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    batch = wl.collate(cfg)([train[i] for i in range(cfg.batch_size)])
    assert batch["quiz"].dtype == torch.int64 and batch["quiz"].shape == (cfg.batch_size, 81)
    wl.loss(wl.forward(model, batch, cfg), batch, cfg).total.backward()
    assert len(calls) == 1                                   # one root-module call per micro-step
    model.eval()
    with torch.no_grad():
        quality = wl.evaluate(model, evaluation, cfg, torch.device("cpu"))
    assert list(quality) == list(wl.quality_metrics) and wl.primary_metric == "grid_acc"
    assert all(math.isfinite(v) for v in quality.values())


class _Uniform(nn.Module):
    def forward(self, quiz: torch.Tensor) -> torch.Tensor:
        return torch.zeros(quiz.shape[0], 2, 81, 9)


def test_evaluate_on_a_uniform_predictor():
    cfg, wl = tiny()
    _, evaluation = wl.build_datasets(cfg)
    quality = wl.evaluate(_Uniform(), evaluation, cfg, torch.device("cpu"))
    assert quality["confidence"] == pytest.approx(1 / 9) and quality["grid_acc"] == 0.0
    assert quality["violations_per_grid"] == 27 * 8          # all 1s: each unit repeats a digit 8 times


def test_data_path_splits_a_users_file(tmp_path: Path):
    rng = np.random.default_rng(0)
    solutions = solved_grids(30, rng)
    path = tmp_path / "sudoku.csv"
    write_sudoku_csv(path, blank_cells(solutions, "hard", rng), solutions)
    cfg, wl = tiny(data_path=str(path), n_eval=10, n_train=100)
    train, evaluation = wl.build_datasets(cfg)
    assert (len(train), len(evaluation)) == (20, 10)
    seen = {bytes(train[i][1].numpy()) for i in range(20)} | {bytes(evaluation[i][1].numpy()) for i in range(10)}
    assert seen == {bytes(s) for s in solutions}              # a split, no row lost or repeated
    with pytest.raises(ValueError, match="knob 'n_eval'.*30 valid rows"):
        wl.build_datasets(cfg.replace(n_eval=30))


def test_curriculum_trains_through_the_stages_and_evaluates_the_final_one():
    cfg, wl = tiny(curriculum="easy_to_hard", stage="medium", epochs=4)
    train, evaluation = wl.build_datasets(cfg)
    assert train.stages == ("easy", "medium") and evaluation.stages == ("medium",)
    givens = lambda ds: (ds[0][0] != 0).sum().item()  # noqa: E731
    assert 36 <= givens(train) <= 45
    train.set_epoch(3)
    assert train.stage == "medium" and 30 <= givens(train) <= 35


@pytest.mark.parametrize("overrides, message", [
    ({"curriculum": "easy_to_hard"}, "knob 'curriculum'.*stage=easy"),
    ({"curriculum": "easy_to_hard", "stage": "beginner"}, "knob 'curriculum'.*stage=beginner"),  # not the seed's
    ({"curriculum": "easy_to_hard", "stage": "hard", "data_path": "x.csv"}, "knob 'curriculum'.*data_path"),
    ({"forward": "sparse"}, "knob 'forward'.*gather \\| dense"),
    ({"stage": "expert"}, "knob 'stage'"),
])
def test_bad_knob_combinations_are_refused(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


def test_presets_sizes():
    seed = resolve("sudoku", {"preset": "seed"})
    assert (seed.hidden, seed.mlp_width, seed.n_steps, seed.batch_size) == (96, 96, 32, 128)
    wl = seed.get_workload()
    assert wl.presets["seed"].device_hint == "cuda" and wl.default_preset == "cpu"
    # equal parameter count in both forward modes, counted on the meta device; a first build under
    # the meta device must not leave meta tensors in the cached board layout
    for layout in (units, unit_membership, adjacency, edges):
        layout.cache_clear()
    assert wl.parameter_count(seed) == wl.parameter_count(seed.replace(forward="dense"))
    assert adjacency().device.type == "cpu" and adjacency().sum() == 1620 and edges()[0].device.type == "cpu"


def test_weight_averaging_leaves_the_board_layout_intact():
    # The trainer's EMA averages buffers too (in float, truncating integers); the graph must survive it.
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    cfg, wl = tiny()
    torch.manual_seed(0)
    model = wl.build_model(cfg)
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    for _ in range(3):
        ema.update_parameters(model)
    quiz = torch.randint(0, 10, (2, 81))
    with torch.no_grad():
        assert torch.allclose(ema.module(quiz), model(quiz), atol=1e-6)
