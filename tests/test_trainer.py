"""The training loop: exact accumulation, EMA, early stopping, schedules, AMP."""

from __future__ import annotations

import pytest
import torch

from harness.config import resolve
from harness.engine import run
from harness.equivalence import check_equivalence
from harness.optim import make_scheduler
from harness.trainer import Trainer
from tests import toy
from tests.conftest import TOY


def test_micro_batch_times_accumulation_equals_one_big_batch() -> None:
    base = resolve("lm", {"preset": "tiny", "batch_size": 8, "grad_accum": 1})
    for bs, accum in ((4, 2), (2, 4), (1, 8)):
        eq = check_equivalence(base, base.replace(batch_size=bs, grad_accum=accum))
        assert eq["passed"], (bs, accum, eq)


def test_unequal_effective_batch_is_not_called_equivalent() -> None:
    base = resolve("lm", {"preset": "tiny"})
    eq = check_equivalence(base, base.replace(batch_size=4))
    assert eq["passed"] is False and "effective batch differs" in eq["reason"]


def test_changed_initialisation_fails_equivalence() -> None:
    base = resolve(TOY, {})
    eq = check_equivalence(base, base.replace(init_shift=0.01))
    assert eq["passed"] is False and eq["max_rel_err"] > 1e-3


def test_ema_weights_differ_and_are_evaluated() -> None:
    trainer = Trainer(resolve(TOY, {"epochs": 2, "ema": 0.9, "lr": 0.05}))
    result = run(trainer)
    raw = dict(trainer.model.named_parameters())
    ema = dict(trainer.ema.module.named_parameters())
    assert not torch.allclose(raw["linear.weight"], ema["linear.weight"])
    assert {"score", "ema_score", "mse", "ema_mse"} <= set(result.quality)
    assert result.quality["mse"] != result.quality["ema_mse"]


def test_early_stopping_stops_at_the_right_epoch() -> None:
    # score rises for 3 evaluations, then stalls: with patience 2 the run stops after epoch 5.
    toy._EVAL_CALLS["n"] = 0
    cfg = resolve(TOY, {"epochs": 10, "early_stopping_patience": 2, "metric_script": "0.1,0.2,0.3,0.25,0.29,0.5"})
    result = run(cfg)
    assert [p["epoch"] for p in result.curve] == [1, 2, 3, 4, 5]
    assert result.metrics["best_epoch"] == 3 and result.quality["score"] == 0.3


@pytest.mark.parametrize("scheduler", ["none", "cosine", "onecycle"])
def test_schedules_warm_up_and_end_where_expected(scheduler) -> None:
    cfg = resolve(TOY, {"scheduler": scheduler, "lr_warmup_steps": 10, "lr": 1.0})
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched, _ = make_scheduler(opt, cfg, 100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] < 0.2 and max(lrs) == pytest.approx(1.0, rel=0.05)
    if scheduler == "none":
        assert lrs[-1] == 1.0
    else:
        assert lrs[-1] < 0.05


def test_bf16_autocast_trains_and_is_recorded() -> None:
    result = run(resolve("lm", {"preset": "tiny", "amp": "bf16", "bench_steps": 2}))
    assert result.metrics["samples_per_s"] > 0 and result.metrics["final_loss"] > 0


def test_clipping_bounds_the_update() -> None:
    cfg = resolve(TOY, {"clip_grad_norm": 1e-3, "optimizer": "sgd", "lr": 1.0, "bench_warmup_steps": 1,
                        "bench_steps": 1})
    trainer = Trainer(cfg)
    before = trainer.model.linear.weight.detach().clone()
    run(trainer)
    # two SGD steps with momentum 0.9, each gradient clipped to norm 1e-3: |dw| <= 1e-3 * (1 + 1.9)
    assert float((trainer.model.linear.weight.detach() - before).norm()) <= 1e-3 * 2.9 + 1e-9


def test_persistent_workers_keep_the_sample_order() -> None:
    from harness.data import batches_forever

    def order(persistent: bool) -> list[float]:
        cfg = resolve(TOY, {"num_workers": 1, "persistent_workers": persistent, "n_samples": 64})
        trainer = Trainer(cfg)
        stream = batches_forever(trainer.loader)
        return [float(next(stream)[1][1][0]) for _ in range(3 * len(trainer.loader))]  # three epochs

    assert order(True) == order(False)


def test_ema_keeps_integer_buffers_exact() -> None:
    from harness.optim import make_ema, update_ema

    model = torch.nn.Linear(2, 2)
    model.register_buffer("index", torch.arange(81))
    ema = make_ema(model, resolve(TOY, {"ema": 0.9}))
    for _ in range(3):
        with torch.no_grad():
            model.weight.add_(1.0)
        update_ema(ema, model)
    assert torch.equal(ema.module.index, torch.arange(81))
    assert not torch.allclose(ema.module.weight, model.weight)
