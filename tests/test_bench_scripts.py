"""The bench/ scripts end to end in a subprocess at their tiniest settings: they run, measure through the
engine and print their tables (no timing is asserted: the machine is shared)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


def _run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(REPO / "bench" / script), *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)


def _ok(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.splitlines()


@pytest.mark.slow
def test_gpcm_modes_prints_every_mode_speedups_and_equivalence() -> None:
    lines = _ok(_run("measure_gpcm_modes.py", "--preset", "tiny", "--threads", "1", "--warmup", "1",
                     "--steps", "1", "--rounds", "3"))
    assert lines[0].startswith("gpcm preset=tiny") and "measured steps/mode=3" in lines[0]
    assert lines[1].split()[:4] == ["mode", "step", "ms", "p10"]
    rows = {line.split()[0]: line for line in lines[2:5]}
    assert list(rows) == ["sequential", "parallel", "scan"]
    assert "x1 (baseline)" in rows["sequential"] and "x" in rows["scan"].split()[7]
    for mode in ("parallel", "scan"):
        line = next(x for x in lines if x.startswith(f"equivalence {mode} vs sequential"))
        assert "float32 pass" in line and "float64 pass" in line


@pytest.mark.slow
def test_doctrans_checkpointing_runs_each_setting_in_its_own_process() -> None:
    lines = _ok(_run("measure_doctrans_checkpointing.py", "--preset", "tiny", "--shapes", "8x4", "--repeats", "1",
                     "--steps", "1", "--warmup", "1", "image_h=32"))
    rows = [line.split() for line in lines if line.lstrip().startswith("8x4 ")]
    assert [r[1] for r in rows] == ["on", "off"]
    assert all(float(r[5]) > 0 for r in rows)  # peak_rss_MiB from the engine's window
    assert any(line.startswith("8x4: checkpointing costs") and "MiB peak RSS" in line for line in lines)
    assert lines[-1].startswith("(no intervals")


@pytest.mark.slow
def test_gate_rates_prints_both_clocks_tables_and_a_verdict_line() -> None:
    lines = _ok(_run("measure_gate_rates.py", "--reps", "1", "--pairs", "10", "--warmup-pairs", "1"))
    assert lines[0].startswith("rep   1/1: A/A")
    for clock in ("wall", "cpu"):
        assert any(line.startswith(f"{clock} clock: A/A speedup median") for line in lines)
        assert any(line.startswith(f"{clock}: ") for line in lines)
    assert sum(line.startswith("  1.00  ") for line in lines) == 2
    assert lines[-1].startswith("cpu: ")


@pytest.mark.parametrize(("script", "args", "message"), [
    ("measure_gpcm_modes.py", ["--modes", "sequential,warp"], "--modes: bad value warp"),
    ("measure_doctrans_checkpointing.py", ["--shapes", "8by4"], "--shapes: bad value '8by4'"),
    ("measure_gate_rates.py", ["--pairs", "1"], "--pairs >= 2"),
    ("measure_against_rates.py", ["--reps", "0"], "use --reps >= 1"),
    ("regressions.py", ["--only", "no_such_regression"], "no_such_regression"),
    ("measure_sessions.py", ["--out", "runs/none", "--busy", "9"], "--busy [9]: session numbers run from 1"),
    ("measure_sessions.py", ["--out", "runs/none", "--paired", "warp"], "--paired warp: not a variant of"),
])
@pytest.mark.slow
def test_bad_usage_is_an_error_line_and_exit_2(script: str, args: list[str], message: str) -> None:
    proc = _run(script, *args, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_measure_overhead_prints_the_paired_interval_and_the_overhead_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REPEATS", "3")
    lines = _ok(_run("measure_overhead.py", "bench_steps=20", "bench_warmup_steps=1", "batch_size=4"))
    assert lines[0].startswith("config: lm preset=tiny batch_size=4 threads=1 steps=20 x 3 alternating runs")
    assert lines[-2].startswith("instrumented / bare, paired by run: x") and "overhead" in lines[-2]
    words = lines[-1].split()  # overhead: X.X% of a Y.Y ms step (bare Z.Z ms)
    assert words[0] == "overhead:" and words[2:4] == ["of", "a"] and words[5:8] == ["ms", "step", "(bare"]
    float(words[1].rstrip("%"))
    assert float(words[4]) > 0 and float(words[8]) > 0 and words[9] == "ms)"


@pytest.mark.slow
def test_against_rates_runs_each_condition_through_the_against_path() -> None:
    lines = _ok(_run("measure_against_rates.py", "--reps", "1", "--max-repeats", "3", "--budget-s", "0",
                     "bench_steps=30", timeout=600))
    assert lines[0].startswith("tiny LM step ")
    reps = [line for line in lines if line.startswith("rep  1/1 ")]
    assert [r.split()[2] for r in reps] == ["same:", "slow10:", "slow5:"]
    assert all(r.endswith(("-> pass", "-> FAIL")) for r in reps)
    assert lines[-1].startswith("old == new: false alarms in ") and "5% slowdown caught in" in lines[-1]


def test_every_planted_regression_applies_to_the_committed_tree() -> None:
    lines = _ok(_run("regressions.py", "--check", timeout=300))
    applied = [line for line in lines if ": applies (" in line]
    assert len(applied) == 16, lines  # every one of bench/regressions.py
