"""The CI gates catch planted regressions, name the cause, and leave an unchanged config alone.

Each planted regression is applied here only (monkeypatch or the test-only toy workload), never
shipped. The ratio tests time real steps, with margins far outside the measured noise: a planted
30% slowdown against a gate allowing 10%, a lost 4x speedup against a gate asking 2.5x.
"""

from __future__ import annotations

import importlib.util
import statistics
from collections.abc import Callable
from typing import Any

import pytest
import torch

from harness.engine import StepCounters
from harness.loads import burn_cpu_s
from harness.pytest_plugin import (
    counter_verdict,
    equivalence_verdict,
    loss_verdict,
    measure_counters,
    measure_speedup,
    pick_clock,
    ratio_verdict,
)
from harness.registry import resolve
from harness.trainer import Trainer
from models.gpcm.model import DeepGPCM
from models.lm import LMWorkload
from tests.conftest import REPO, TOY

LM_TINY = {"preset": "tiny", "device": "cpu"}


def _bench_module(name: str) -> Any:
    """A bench/ test module, to use its thresholds (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_busy = burn_cpu_s  # burns CPU like real work, so the CPU clock sees it


class SlowCollate:
    """A collate doing `extra_cpu_s` more work per batch: the planted DataLoader regression."""

    def __init__(self, collate: Callable[[list[Any]], Any], extra_cpu_s: float) -> None:
        self.collate, self.extra_cpu_s = collate, extra_cpu_s

    def __call__(self, samples: list[Any]) -> Any:
        _busy(self.extra_cpu_s)
        return self.collate(samples)


def _median_step_cpu_s(cfg: Any, steps: int = 8) -> float:
    from harness.engine import run

    return statistics.median(run(cfg.replace(bench_warmup_steps=1, bench_steps=steps)).step_cpu_ms) / 1e3


# --- counter gates -----------------------------------------------------------------------------------


def test_counter_verdict_against_hand_made_counters() -> None:
    good = StepCounters(label="x", forward_calls_per_step=1.0, flops_per_step=600, reference_flops_per_step=600,
                        param_count=10, samples_per_step=4, real_tokens_per_step=0,
                        padded_tokens_per_step=0)
    assert counter_verdict("x", good, {"forward_calls_per_step": 1, "flops_per_step": 600})[0]
    passed, message = counter_verdict("x", good, {"param_count": 11})
    assert not passed and "param_count = 10 (expected 11)" in message and "size or structure changed" in message
    with pytest.raises(ValueError, match="counter 'flops' does not exist"):
        counter_verdict("x", good, {"flops": 600})


def test_duplicate_forward_knob_fails_the_counter_gate() -> None:
    counters = measure_counters(resolve("lm", {**LM_TINY, "duplicate_forward": True}))
    passed, message = counter_verdict(counters.label, counters, {"forward_calls_per_step": 1,
                                                                  "flops_per_step": counters.reference_flops_per_step})
    assert not passed
    assert "duplicate_forward=True" in message and "forward_calls_per_step = 2.0" in message
    assert "duplicate forward" in message and "flops_per_step" in message


def test_duplicate_forward_reintroduced_in_code_fails_the_counter_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    # The seed-004 bug written into the workload: logits from one forward, the loss from a second.
    forward = LMWorkload.forward

    def forward_twice(self: LMWorkload, model: Any, batch: Any, cfg: Any) -> Any:
        forward(self, model, batch, cfg)
        return forward(self, model, batch, cfg)

    clean = measure_counters(resolve("lm", LM_TINY))
    assert counter_verdict(clean.label, clean, {"forward_calls_per_step": 1})[0]
    monkeypatch.setattr(LMWorkload, "forward", forward_twice)
    bug = measure_counters(resolve("lm", LM_TINY))
    passed, message = counter_verdict(bug.label, bug, {"forward_calls_per_step": 1})
    assert not passed and "forward_calls_per_step = 2.0" in message and "duplicate forward" in message
    assert bug.flops_per_step > clean.flops_per_step  # the extra forward costs FLOPs too


def test_flops_per_step_equals_one_forward_and_one_backward() -> None:
    # Same batch, counted twice: in the trainer's step and in a plain forward + backward. LM tiny: the
    # counter sees the linear layers (2 x tokens x matmul weights per forward, twice that backward).
    cfg = resolve("lm", LM_TINY)
    counters = measure_counters(cfg)
    assert counters.flops_per_step == counters.reference_flops_per_step > 0
    matmul_params = 12 * cfg.d_model**2 + cfg.vocab_size * cfg.d_model
    # Attention scores are not counted on a CPU (torch's SDPA there has no FLOP formula).
    assert counters.flops_per_step == 6 * matmul_params * counters.padded_tokens_per_step


# --- equivalence and fixed-seed quality gates --------------------------------------------------------


def test_changed_initialisation_fails_equivalence_and_loss_gates() -> None:
    base = resolve(TOY, {"device": "cpu"})
    variant = base.replace(init_shift=0.5)
    passed, message = equivalence_verdict(base, variant)
    assert not passed and "does not compute the same function" in message and "init_shift 0.0 -> 0.5" in message
    passed, message = loss_verdict(base, variant, steps=3, rel_tol=1e-4)
    assert not passed and "loss gate failed" in message and "init_shift=0.5" in message
    assert equivalence_verdict(base, base)[0]


def test_scan_optimisation_that_changes_init_fails_equivalence(monkeypatch: pytest.MonkeyPatch) -> None:
    wl_class = type(resolve("gpcm", {"preset": "tiny", "device": "cpu"}).get_workload())
    build = wl_class.build_model

    def build_shifted(self: Any, cfg: Any) -> torch.nn.Module:
        model = build(self, cfg)
        if cfg.forward == "scan":  # the "optimization" re-initialises one layer its own way
            torch.nn.init.normal_(next(model.parameters()), std=0.5)
        return model

    monkeypatch.setattr(wl_class, "build_model", build_shifted)
    base = resolve("gpcm", {"preset": "tiny", "device": "cpu", "forward": "sequential"})
    passed, message = equivalence_verdict(base, base.replace(forward="scan"))
    assert not passed and "forward sequential -> scan" in message and "does not compute the same function" in message


# --- ratio gates -------------------------------------------------------------------------------------


def test_unchanged_config_passes_the_ratio_gate() -> None:
    cfg = resolve("lm", LM_TINY)
    result = measure_speedup(cfg, cfg, pairs=30)
    passed, message = ratio_verdict(result, min_speedup=0.9)
    assert passed, message
    assert result.clock == "cpu" and result.estimate.n == 30 and result.changed == {}
    assert result.estimate.method == "block bootstrap" and "whole-interval" not in message


def test_dataloader_thirty_percent_slower_fails_the_ratio_gate() -> None:
    cfg = resolve("lm", LM_TINY)
    extra_s = 0.3 * _median_step_cpu_s(cfg, steps=16)  # one collate per step (grad_accum=1)
    reference, patched = Trainer(cfg), Trainer(cfg)
    patched.loader.collate_fn = SlowCollate(patched.loader.collate_fn, extra_s)
    result = measure_speedup(reference, patched, pairs=60)
    passed, message = ratio_verdict(result, min_speedup=0.9)
    assert not passed, message
    assert "ratio gate failed" in message and "time went in data loading" in message
    assert "no knob differs" in message and result.estimate.ci_high < 0.9


def test_scan_replaced_by_sequential_fails_the_ratio_gate(monkeypatch: pytest.MonkeyPatch) -> None:
    baseline, variant, min_speedup = _bench_module("test_bench_gpcm").SPEEDUP_GATES[0]
    assert (baseline, variant) == ("sequential", "scan")
    forward = DeepGPCM.forward

    def scan_is_sequential(self: DeepGPCM, questions: torch.Tensor, responses: torch.Tensor) -> Any:
        if self.forward_mode == "scan":
            return self._forward_sequential(questions, responses)
        return forward(self, questions, responses)

    monkeypatch.setattr(DeepGPCM, "forward", scan_is_sequential)
    base = resolve("gpcm", {"preset": "tiny", "device": "cpu", "forward": baseline})
    result = measure_speedup(base, base.replace(forward=variant), pairs=20)
    passed, message = ratio_verdict(result, min_speedup)
    assert not passed, message
    assert "gpcm forward=scan vs forward=sequential" in message
    assert "knobs changed: forward sequential -> scan" in message
    assert "both settings may now run the same code path" in message  # the likeliest cause leads


def test_pick_clock_uses_cpu_time_only_when_all_work_is_in_this_process() -> None:
    cfg = resolve(TOY, {"device": "cpu"})
    assert pick_clock("auto", cfg, cfg) == "cpu"
    assert pick_clock("auto", cfg, cfg.replace(num_workers=1)) == "wall"
    assert pick_clock("wall", cfg) == "wall"
    with pytest.raises(ValueError, match="clock: bad value 'gpu'"):
        pick_clock("gpu", cfg)


def test_clocks_against_a_known_sleep() -> None:
    # A 30 ms sleep inside forward: all of it on the wall clock, none of it on the CPU clock.
    cfg = resolve(TOY, {"sleep_ms": 30.0, "device": "cpu"})
    result = measure_speedup(cfg, cfg.replace(sleep_ms=0.0), pairs=4, warmup_pairs=1, clock="wall")
    (base,) = result.baseline
    assert min(base.step_ms) >= 30.0
    assert statistics.median(base.step_cpu_ms) < 15.0
    assert result.estimate.ratio > 1.0 and result.changed == {"sleep_ms": (30.0, 0.0)}
    assert not result.estimate.has_interval and "need >= 10" in result.estimate.describe()  # 4 pairs: no interval
