"""Deep-GPCM workload: knobs and presets, loss and counts, metrics by hand, equivalence through the harness."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from harness.equivalence import check_equivalence
from harness.registry import resolve
from models.gpcm import WORKLOAD
from models.gpcm.data import ResponseSequences
from models.gpcm.metrics import ordinal_metrics
from models.gpcm.workload import oracle_metrics


def _tiny(**overrides: object):
    return resolve("gpcm", {"preset": "tiny", **overrides})


def test_presets_resolve_and_seed_preset_has_the_source_sizes() -> None:
    for preset in ("tiny", "cpu", "seed"):
        cfg = resolve("gpcm", {"preset": preset})
        assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.clip_grad_norm) == ("adam", 1e-3, 1e-5, 1.0)
    seed = resolve("gpcm", {"preset": "seed"})
    assert (seed.memory_size, seed.key_dim, seed.value_dim, seed.summary_dim) == (50, 50, 200, 50)
    assert (seed.n_students, seed.n_questions, seed.min_seq_len, seed.max_seq_len) == (800, 400, 100, 399)
    assert seed.batch_size == 64 and WORKLOAD.presets["seed"].device_hint == "cuda"
    assert resolve("gpcm", {}).preset == "cpu"


@pytest.mark.parametrize("overrides, match", [
    ({"forward": "fast"}, r"knob 'forward': bad value 'fast'; allowed: sequential \| parallel \| scan"),
    ({"n_cats": 1}, r"knob 'n_cats': bad value 1"),
    ({"min_seq_len": 30, "max_seq_len": 10}, r"min_seq_len=30, max_seq_len=10"),
])
def test_bad_knobs_are_value_errors(overrides: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _tiny(**overrides)


def test_loss_is_the_nll_sum_over_valid_positions() -> None:
    cfg = _tiny()
    batch = {"questions": torch.tensor([[3, 1, 0], [2, 0, 0]]), "responses": torch.tensor([[1, 0, 0], [3, 0, 0]])}
    log_probs = torch.log_softmax(torch.randn(2, 3, 4), -1)
    loss = WORKLOAD.loss({"log_probs": log_probs}, batch, cfg)
    expected = -(log_probs[0, 0, 1] + log_probs[0, 1, 0] + log_probs[1, 0, 3])
    assert torch.allclose(loss.total, expected) and torch.allclose(loss.parts["nll"], expected)
    counts = WORKLOAD.batch_counts(batch, cfg)
    assert (counts.samples, counts.loss_elements, counts.real_tokens, counts.padded_tokens) == (2, 3, 3, 6)


def test_ordinal_metrics_by_hand() -> None:
    # confusion (true, pred): (0,0) (1,1) (3,2) (3,3). Quadratic weights (i-j)^2/9: observed 1/9;
    # expected from the marginals true (1,1,0,2), pred (1,1,1,1): 48/36. QWK = 1 - (1/9)/(4/3) = 11/12.
    preds, targets = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 3, 3])
    got = ordinal_metrics(preds, targets, 4)
    assert got["qwk"] == pytest.approx(11 / 12, abs=1e-6)
    assert got["categorical_accuracy"] == pytest.approx(0.75)
    assert got["ordinal_accuracy"] == pytest.approx(1.0)
    assert got["mae"] == pytest.approx(0.25)
    # off by two and three: ordinal accuracy counts |error| <= 1 only
    far = ordinal_metrics(torch.tensor([0, 0, 3]), torch.tensor([2, 3, 3]), 4)
    assert far["ordinal_accuracy"] == pytest.approx(1 / 3) and far["mae"] == pytest.approx(5 / 3)
    assert ordinal_metrics(targets, targets, 4)["qwk"] == pytest.approx(1.0)
    # one category everywhere on both sides: kappa is 0/0, reported as no agreement beyond chance
    assert ordinal_metrics(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long), 4)["qwk"] == 0.0
    # the trainer evaluates under the run's autocast: the same predictions score the same (kappa in bf16 did not)
    g = torch.Generator().manual_seed(0)
    preds, targets = torch.randint(0, 4, (5000,), generator=g), torch.randint(0, 4, (5000,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ordinal_metrics(preds, targets, 4) == ordinal_metrics(preds, targets, 4)


def test_datasets_are_cached_on_disk_and_evaluate_reports_the_metrics_and_the_oracles() -> None:
    cfg = _tiny()
    train, held_out = WORKLOAD.build_datasets(cfg)
    assert (len(train), len(held_out)) == (64, 16)
    cache = Path(os.environ["TRAINBENCH_CACHE"])
    assert any(p.name.startswith("gpcm_synthetic_oc-") for p in cache.iterdir())
    again, _ = WORKLOAD.build_datasets(cfg)
    assert torch.equal(again.questions, train.questions)
    torch.manual_seed(0)
    model = WORKLOAD.build_model(cfg).eval()
    with torch.no_grad():
        metrics = WORKLOAD.evaluate(model, held_out, cfg, torch.device("cpu"))
    assert tuple(metrics) == WORKLOAD.quality_metrics
    assert 0 <= metrics["categorical_accuracy"] <= metrics["ordinal_accuracy"] <= 1
    assert -1 <= metrics["qwk"] <= 1 and 0 <= metrics["mae"] <= 3
    # the generating GPCM's own scores on the same positions: the data's, whatever the model
    valid = torch.arange(held_out.questions.shape[1]) < held_out.lengths.unsqueeze(1)
    oracle = ordinal_metrics(held_out.oracle[valid], held_out.responses[valid], cfg.n_cats)
    assert metrics["oracle_qwk"] == oracle["qwk"] and metrics["oracle_categorical_accuracy"] == \
        oracle["categorical_accuracy"]
    assert metrics["oracle_categorical_accuracy"] > metrics["categorical_accuracy"]  # an untrained model
    plain = ResponseSequences(held_out.questions, held_out.responses, held_out.lengths, n_questions=cfg.n_questions,
                              n_cats=cfg.n_cats)
    assert oracle_metrics(plain, cfg) == {}  # a user's own data has no generating model


@pytest.mark.parametrize("mode", ["parallel", "scan"])
def test_harness_equivalence_check_passes_for_every_mode(mode: str) -> None:
    base = _tiny(forward="sequential")
    for dtype in (torch.float32, torch.float64):
        result = check_equivalence(base, base.replace(forward=mode), dtype)
        assert result["passed"], result["reason"]


def test_modes_train_to_the_same_weights() -> None:
    """A few Adam steps in each mode from one seed end at the same loss (equal steps, equal data)."""
    cfg = _tiny()
    train, _ = WORKLOAD.build_datasets(cfg)
    batch = WORKLOAD.collate(cfg)([train[i] for i in range(cfg.batch_size)])
    n = WORKLOAD.batch_counts(batch, cfg).loss_elements
    losses = {}
    for mode in ("sequential", "scan"):
        mode_cfg = cfg.replace(forward=mode)
        torch.manual_seed(0)
        model = WORKLOAD.build_model(mode_cfg).double()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        history = []
        for _ in range(8):
            opt.zero_grad()
            loss = WORKLOAD.loss(WORKLOAD.forward(model, batch, mode_cfg), batch, mode_cfg).total / n
            loss.backward()
            opt.step()
            history.append(loss.item())
        losses[mode] = history
    assert losses["sequential"][-1] < losses["sequential"][0]  # it learns
    assert losses["scan"] == pytest.approx(losses["sequential"], rel=1e-9)
