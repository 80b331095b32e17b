"""torch.compile as a measured variant: compile time apart from the window, recompilations, break-even,
and a machine that cannot compile giving skipped runs, not crashes."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.analysis.summary import break_even_steps, latest_attempts
from harness.probes.compiled import CompileClock
from harness.results import load_records


@pytest.mark.slow
def test_compile_clock_counts_compilations_and_recompilations() -> None:
    fn = torch.compile(lambda x: (x * 3).sin().sum(), dynamic=False)  # a new shape: a new compilation
    clock = CompileClock()
    fn(torch.ones(3))
    clock.mark("first")
    fn(torch.ones(3))
    clock.mark("same")
    fn(torch.ones(5))
    clock.mark("other")
    seconds, frames = clock.between("start", "first")
    assert frames == 1 and seconds > 0
    assert clock.between("first", "same") == (0.0, 0)  # same shape: the compiled code reused
    assert clock.between("same", "other")[1] == 1


def test_break_even_arithmetic() -> None:
    # 30 s of compiling, 100 ms -> 70 ms per step: 30 / 0.03 = 1000 steps to pay it back.
    assert break_even_steps(30.0, 100.0, 70.0) == pytest.approx(1000.0)
    assert break_even_steps(30.0, 100.0, 70.0, base_compile_s=6.0) == pytest.approx(800.0)
    assert break_even_steps(30.0, 100.0, 100.0) == math.inf  # never: no step is faster
    assert break_even_steps(30.0, 100.0, 120.0) == math.inf
    assert break_even_steps(0.0, 100.0, 70.0) == 0.0
    assert math.isnan(break_even_steps(float("nan"), 100.0, 70.0))


@pytest.mark.slow
def test_a_compiled_sweep_reports_compile_time_outside_the_window(tmp_path: Path) -> None:
    from harness.cli import main

    exp = tmp_path / "compile.toml"
    exp.write_text('workload = "lm"\nrepeats = 2\ntarget_half_width_pct = 0\n'
                   '[baseline]\npreset = "tiny"\nbench_steps = 4\nbench_warmup_steps = 2\n'
                   '[variants.compiled]\ncompile = true\n')
    out = tmp_path / "out"
    assert main(["sweep", str(exp), "--out", str(out), "--reports", str(tmp_path / "reports")]) == 0
    records = load_records(out)
    compiled = latest_attempts(r for r in records if r.variant == "compiled" and r.phase == "speed")  # re-runs
    plain = [r for r in records if r.variant == "baseline" and r.phase == "speed"]
    assert len(compiled) == 2 and all(r.status == "ok" for r in compiled)
    for r in compiled:
        assert r.metrics["compile_s"] > 0  # dynamo traced the model in the warmup
        assert r.metrics["compile_in_window_s"] == 0.0 and r.metrics["recompiles"] == 0
        assert r.metrics["measured_steps"] == 4
    assert all("compile_s" not in r.metrics for r in plain)
    equivalence = [r for r in records if r.variant == "compiled" and r.phase == "equivalence"]
    assert equivalence and equivalence[0].equivalence["passed"] is True
    text = (tmp_path / "reports" / "compile" / "README.md").read_text()
    assert "## torch.compile" in text and "break-even" in text


@pytest.mark.slow
def test_a_machine_without_compile_records_skipped_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main
    from tests.conftest import TOY

    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))  # inductor finds no C++ compiler
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))  # and no cached kernels
    out = tmp_path / "out"
    assert main(["run", TOY, "compile=true", "--repeats", "1", "--out", str(out)]) == 0  # skipped is not failed
    records = load_records(out)
    assert records and {r.status for r in records} == {"skipped"}
    assert "torch.compile is unavailable here" in records[0].error
    assert "InvalidCxxCompiler" in records[0].error or "compiler" in records[0].error.lower()
