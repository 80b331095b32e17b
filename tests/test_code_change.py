"""Gates that see a code change: forward passes on every submodule, multi-step equivalence, stored
references, and old against new (base revision exported from git, interleaved fresh processes)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from harness import against, reference
from harness.analysis.speedup import Comparison, compare
from harness.analysis.stats import RatioEstimate
from harness.probes.counters import ForwardCounter
from harness.results import Record

ROOT = Path(__file__).resolve().parent.parent


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(self.a(x)))  # `a` twice per forward: weight sharing, one pass

    def helper(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(self.a(x)))  # the same layers, around the root's __call__


def test_forward_passes_count_a_second_pass_around_the_root() -> None:
    model, x = TwoLayer(), torch.randn(2, 4)
    counter = ForwardCounter(model)
    counter.watch()
    model(x)
    assert (counter.calls, counter.passes) == (1, 1.0)  # shared weights are not a second pass
    model.helper(x)
    assert (counter.calls, counter.passes) == (1, 2.0)  # the root saw one call; the layers ran twice
    assert counter.extra_passes() == {"a": 2.0, "b": 2.0}
    counter.unwatch()  # fast path again: later root calls count as 2 passes each
    counter.reset()
    model(x)
    model(x)
    assert (counter.calls, counter.passes) == (2, 4.0)
    counter.remove()
    model(x)
    assert counter.calls == 2


def test_a_checkpointed_backward_is_not_a_second_pass() -> None:
    from torch.utils.checkpoint import checkpoint

    class Checkpointed(TwoLayer):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return checkpoint(lambda h: self.b(self.a(h)), x, use_reentrant=False)

    model = Checkpointed()
    counter = ForwardCounter(model)
    counter.watch()
    model(torch.randn(2, 4, requires_grad=True)).sum().backward()  # the backward reruns a and b
    assert (counter.calls, counter.passes) == (1, 1.0)


def test_the_lm_counts_one_pass_per_micro_step_and_two_with_the_bug() -> None:
    from harness.engine import step_counters
    from harness.registry import resolve

    assert step_counters(resolve("lm", {"preset": "tiny"})).forward_calls_per_step == 1
    assert step_counters(resolve("lm", {"preset": "tiny", "duplicate_forward": True})).forward_calls_per_step == 2


def test_multi_step_equivalence_passes_for_accumulation_and_fails_for_a_changed_init() -> None:
    from harness.equivalence import check_equivalence
    from harness.registry import resolve

    one = resolve("lm", {"preset": "tiny", "threads": 1})
    split = resolve("lm", {"preset": "tiny", "threads": 1, "batch_size": 4, "grad_accum": 2})
    ok = check_equivalence(one, split, steps=3)
    assert ok["passed"], ok["reason"]
    assert ok["compared"][0] == "loss at each of 3 steps" and ok["compared"][1].endswith("parameters after them")
    toy = resolve("tests.toy:WORKLOAD", {"threads": 1})
    bad = check_equivalence(toy, toy.replace(init_shift=0.01), steps=3)
    assert not bad["passed"] and bad["max_rel_err"] > bad["tolerance"]


def _estimate(ratio: float, low: float, high: float) -> RatioEstimate:
    return RatioEstimate(ratio, low, high, 5, "t over 5 repeats", 0)


def _comparison(ratio: float, low: float, high: float, clock: str, base_ms: float, new_ms: float) -> Comparison:
    class Fixed(Comparison):
        def median_ms(self, side: str, phase: str = "") -> float:
            return base_ms if side == "baseline" else new_ms
    return Fixed(label="lm preset=tiny", changed={}, clock=clock, estimate=_estimate(ratio, low, high),
                 baseline=(), variant=())


BASE = against.Base(ref="main", sha="abcdef0123456789", changed=("models/lm/data.py",))


@pytest.mark.parametrize("ratio, low, high, passes, outcome", [
    (0.995, 0.98, 1.01, True, "equivalent within ±3%"),    # A/A: the interval inside the margin
    (0.985, 0.975, 0.995, True, "equivalent within ±3%"),  # resolved, but wholly within 3%: too small to matter
    (0.90, 0.88, 0.92, False, "slower"),                   # a resolved 10% slowdown
    (0.975, 0.96, 0.99, False, "slower"),                  # resolved, and not shown to be within 3%
    (0.90, 0.70, 1.10, True, "unresolved"),                # not resolved: no verdict of "slower"
    (1.20, 1.15, 1.25, True, "faster"),
])
def test_verdict_fails_only_a_resolved_slowdown(ratio, low, high, passes, outcome) -> None:
    wall = _comparison(ratio, low, high, "wall", 1.6, 1.6 / ratio)
    passed, message = against.verdict("lm preset=tiny", BASE, wall, None, {"data": 0.15, "forward": 0.01})
    assert passed is passes
    assert message.startswith(f"old against new: lm preset=tiny: new against abcdef0123 (main), wall clock: {outcome}: "
                              f"x{ratio:.3g} [")
    if not passes:
        assert f"SLOWER by {100 * (1 - ratio):.1f}%" in message and "data loading" in message
        assert "models/lm/data.py" in message


def test_a_change_under_one_model_package_touches_only_that_workload() -> None:
    lm_only = against.Base(ref="main", sha="0" * 40, changed=("models/lm/data.py",))
    assert lm_only.touches("lm") and not lm_only.touches("gpcm")
    harness = against.Base(ref="main", sha="0" * 40, changed=("models/lm/data.py", "harness/trainer.py"))
    assert harness.touches("gpcm") and harness.touches("sudoku")
    shared = against.Base(ref="main", sha="0" * 40, changed=("models/attention.py",))  # LM and DocTrans use it
    assert shared.touches("lm") and shared.touches("doctrans")


def _run(variant: str, repeat: int, wall_sps: float, cpu_sps: float) -> Record:
    # 10 steps of 8 samples: the wall window and the steps' CPU time give the two throughputs
    return Record(experiment="against", variant=variant, phase="speed", repeat=repeat, workload="lm", preset="tiny",
                  seed=0, config={}, status="ok", metrics={"samples_per_s": wall_sps},
                  totals={"samples": 80, "measured_steps": 10, "window_s": 80 / wall_sps},
                  step_cpu_ms=tuple([80 / cpu_sps * 100.0] * 10))


def test_verdict_says_waiting_when_cpu_time_did_not_grow() -> None:
    # per repeat the wall time grew ~37% and the CPU time ~3%: the gap is paired within each repeat
    noise = (1.0, 1.3, 0.8, 1.1, 0.9)  # the host moves whole runs; both clocks of a run move together
    old = [_run("old", i, 100 * n, 100 * n) for i, n in enumerate(noise)]
    new = [_run("new", i, 73 * n * (1 + 0.01 * i), 97 * n) for i, n in enumerate(noise)]
    wall = compare(old, new, clock="wall", label="lm")
    cpu = compare(old, new, clock="cpu", label="lm")
    passed, message = against.verdict("lm", BASE, wall, cpu, {"data": 0.6})
    assert not passed and "waiting" in message and "CPU clock " in message
    # the same wall slowdown with CPU time grown alike is work, not waiting
    busy = [_run("new", i, 73 * n * (1 + 0.01 * i), 73 * n * (1 + 0.01 * i)) for i, n in enumerate(noise)]
    _, message = against.verdict("lm", BASE, compare(old, busy, clock="wall", label="lm"),
                                 compare(old, busy, clock="cpu", label="lm"), {"data": 0.6})
    assert "waiting" not in message


def test_reference_differences_name_the_first_step_that_moved() -> None:
    stored = {"dtype": "float32", "steps": 3, "losses": [2.0, 1.9, 1.8], "quality": {"eval_loss": 1.7},
              "flops_per_step": 100, "forward_calls_per_step": 1.0, "param_count": 10}
    same = {**stored, "losses": [2.0, 1.9, 1.8 * (1 + 1e-6)]}
    assert reference.differences(stored, same) == []
    moved = {**stored, "losses": [2.0, 1.9004, 1.81], "flops_per_step": 120}
    diffs = reference.differences(stored, moved)
    assert diffs[0].startswith("training loss after step 2: 1.9 -> 1.9004 (relative 2.1e-04 > 2e-05)")
    assert "flops_per_step: 100 -> 120" in diffs
    assert reference.analytic_problem({"flops_per_step": 300, "analytic_flops_per_step": 100.0}).startswith(
        "flops_per_step 300 is x3.00 the workload's analytic model")
    assert reference.analytic_problem({"flops_per_step": 120, "analytic_flops_per_step": 100.0}) == ""


def test_reference_check_measures_and_reports(tmp_path: Path) -> None:
    passed, message = reference.check("lm", tmp_path)
    assert not passed and "trainbench reference --update lm" in message
    (line,) = reference.update(["lm"], tmp_path)
    assert line.startswith("lm: created")
    assert reference.check("lm", tmp_path) == (True, "reference lm: 10 step losses, quality and counters as stored")
    stored = json.loads((tmp_path / "lm.json").read_text())
    stored["losses"][3] *= 1.001
    (tmp_path / "lm.json").write_text(json.dumps(stored))
    passed, message = reference.check("lm", tmp_path)
    assert not passed and "training loss after step 4" in message


def test_every_workload_has_a_stored_reference() -> None:
    for wl in ("doctrans", "gpcm", "lm", "sudoku"):
        assert (reference.reference_dir() / f"{wl}.json").exists(), wl


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A clone of this repository's HEAD with the working tree's harness/ and models/ (so the test measures
    the code under test, committed or not), committed as the clone's main."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    dest = tmp_path_factory.mktemp("against") / "repo"
    _git(ROOT, "clone", "-q", str(ROOT), str(dest))
    for part in ("harness", "models", "pyproject.toml"):
        src, dst = ROOT / part, dest / part
        if src.is_dir():
            shutil.rmtree(dst)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dst)
    _git(dest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-am", "test base", "--allow-empty")
    _git(dest, "add", "-A")
    _git(dest, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "untracked", "--allow-empty")
    _git(dest, "checkout", "-q", "-B", "main")  # main = HEAD, whatever the source had checked out
    return dest


def test_resolve_base_refuses_an_unknown_revision_and_finds_changes(clone: Path) -> None:
    with pytest.raises(ValueError, match=r"--against nosuchref: not a revision of this repository"):
        against.resolve_base("nosuchref", clone)
    assert against.resolve_base(None, clone).changed == ()
    assert against.resolve_base(None, clone).ref == "merge base of HEAD and main"
    data = clone / "models" / "lm" / "data.py"
    data.write_text(data.read_text() + "\n# a comment\n")
    try:
        assert against.resolve_base("HEAD", clone).changed == ("models/lm/data.py",)
    finally:
        _git(clone, "checkout", "-q", "--", "models/lm/data.py")


def test_exported_base_imports_its_own_code(clone: Path) -> None:
    base = against.resolve_base("HEAD", clone)
    with against.exported(base, clone) as root:
        assert (root / "harness" / "against.py").exists() and not (root / ".git").exists()
        against.check_imports_from(root)
    assert not root.exists()


def _compare_against(clone: Path, *knobs: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "harness.cli", "compare", "--against", "main", "lm", "preset=tiny",
           "bench_steps=40", *knobs, "--budget-s", "30", "--out", str(clone / "runs" / "x")]
    return subprocess.run(cmd, cwd=clone, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(clone)})


@pytest.mark.slow
def test_compare_against_catches_a_planted_sleep_in_the_collate_and_names_data_loading(clone: Path) -> None:
    unchanged = _compare_against(clone)
    assert unchanged.returncode == 0 and "no code change against" in unchanged.stdout, unchanged.stderr
    data = clone / "models" / "lm" / "data.py"
    text = data.read_text()
    doc = '    """Right-pad to the longest sequence: tokens (B, T), targets (B, T-1) with -100 at padding."""\n'
    assert text.count(doc) == 1
    # 5 ms of sleep per batch: the tiny LM's step is ~2 ms, so the new code is several times slower on wall time
    data.write_text(text.replace(doc, doc + "    __import__('time').sleep(0.005)\n"))
    try:
        proc = _compare_against(clone)
    finally:
        _git(clone, "checkout", "-q", "--", "models/lm/data.py")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAIL old against new: lm preset=tiny" in proc.stdout and "SLOWER by" in proc.stdout
    assert "the time went to data loading" in proc.stdout and "waiting" in proc.stdout



def test_a_traced_run_records_the_schedule_clipping_and_ema_of_every_step() -> None:
    """Trainer.trace on known settings: a cosine schedule after a 2-step warmup over 6 planned steps gives the
    learning rates by formula; a clip of 0.01 holds every clipped norm to it; EMA and parameter checksums are
    there, no loss scale without fp16; a run without trace pays for none of it."""
    import math

    from harness.registry import resolve
    from harness.trainer import Trainer

    cfg = resolve("tests.toy:WORKLOAD", {"scheduler": "cosine", "lr_warmup_steps": 2, "clip_grad_norm": 0.01,
                                         "ema": 0.5, "lr": 0.1, "bench_warmup_steps": 1, "bench_steps": 5,
                                         "threads": 1})
    tr = Trainer(cfg)
    assert tr.trace is None
    tr.run_steps(6, trace=True)
    factors = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * k / 4)) for k in range(4)]
    assert [t["lr"] for t in tr.trace] == pytest.approx([0.1 * f for f in factors])
    assert all(t["grad_norm"] > 0.01 and t["grad_norm_clipped"] == pytest.approx(0.01, rel=1e-4) for t in tr.trace)
    assert all({"param_sum", "ema_sum"} <= set(t) and "loss_scale" not in t for t in tr.trace)
    assert len({t["param_sum"] for t in tr.trace}) == 6  # the weights move every step


def test_reference_differences_name_the_counter_and_the_variant_that_moved() -> None:
    per_step = {"lr": [0.1, 0.2, 0.3], "grad_norm": [1.0, 0.9, 0.8]}
    stored = {"dtype": "float32", "steps": 3, "losses": [2.0, 1.9, 1.8], "quality": {}, "per_step": per_step,
              "flops_per_step": 100, "forward_calls_per_step": 1.0, "param_count": 10,
              "variants": {"cosine_warmup": {"knobs": {"scheduler": "cosine"}, "losses": [2.0, 1.9, 1.8],
                                             "per_step": per_step}}}
    assert reference.differences(stored, stored) == []
    moved = json.loads(json.dumps(stored))
    moved["variants"]["cosine_warmup"]["per_step"]["lr"][2] = 0.25  # the loss has not moved (yet)
    moved["per_step"]["grad_norm"] = [1.0, 0.9, 0.8, 0.7][:3]
    assert reference.differences(stored, moved) == [
        "variant cosine_warmup (scheduler=cosine): lr at step 3: 0.3 -> 0.25"]
    del moved["variants"]["cosine_warmup"]
    moved["per_step"]["ema_sum"] = [1.0, 1.0, 1.0]
    assert reference.differences(stored, moved) == [
        "ema_sum at step 1: None -> 1", "variant cosine_warmup (scheduler=cosine): no longer measured"]


def test_references_pin_the_training_paths_and_every_experiments_training_knobs() -> None:
    """`variant_knobs`: the harness's training paths, plus each bundled variant's generic training knobs (warmup cut
    to end inside the reference), one name per distinct knob set; a variant of exact knobs only is not one."""
    knobs = reference.variant_knobs("gpcm")
    assert set(reference.TRAINING_PATHS) <= set(knobs)
    assert knobs["gpcm.adamw_cosine"] == {"optimizer": "adamw", "scheduler": "cosine"}
    assert not any(name.endswith((".parallel", ".scan", ".workers")) for name in knobs)
    sudoku = reference.variant_knobs("sudoku")
    assert "sudoku.onecycle" not in sudoku  # onecycle with its warmup cut to 3: the training path already
    assert sudoku["sudoku.production"]["lr_warmup_steps"] == 3
    stored = json.loads((reference.reference_dir() / "gpcm.json").read_text())
    assert set(stored["variants"]) == set(knobs)  # the stored references cover them all


def test_live_tensor_bytes_count_a_known_allocation_once_and_a_leak_is_a_slope() -> None:
    """One MiB kept is counted once (its views add nothing) and is gone when dropped; a tensor kept every step of a
    traced run grows the series by its size per step, which the reference names as a leak."""
    from harness.probes.counters import live_tensor_bytes

    before = live_tensor_bytes()
    kept = torch.zeros(1024 * 1024, dtype=torch.uint8)
    views = [kept[:10], kept.view(1024, 1024)]
    assert live_tensor_bytes() - before == 1024 * 1024
    del kept, views
    assert live_tensor_bytes() == before
    flat = [5e5, 6e5, 6e5 + 128, 6e5, 6e5 + 128, 6e5]  # optimizer state at step 2, batch lengths after
    assert abs(reference.growth_per_step(flat)) < 100
    leak = [x + 65536 * i for i, x in enumerate(flat)]
    assert reference.growth_per_step(leak) == pytest.approx(65536, rel=0.01)
    stored = {"losses": [1.0] * 6, "per_step": {"live_bytes": flat}}
    lines = reference._trajectory(stored, {"losses": [1.0] * 6, "per_step": {"live_bytes": leak}}, 2e-5)
    assert lines[0].startswith("live tensor memory grows +64.0 KiB per step over 6 steps (stored: ")
    assert reference._trajectory(stored, stored, 2e-5) == []
