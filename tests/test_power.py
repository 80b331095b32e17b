"""The smallest detectable slowdown: its arithmetic, its A/A input, `doctor --mde`, and where it is quoted."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from harness import history
from harness.analysis import power, stats
from harness.cli import main
from harness.results import Record
from tests.conftest import TOY


def test_detectable_slowdown_is_the_power_calculation_with_the_intervals_quantile() -> None:
    sd, n = 0.05, 5
    expected = (stats.SEQUENTIAL_WIDEN * 2.776 + 0.941) * sd / math.sqrt(n)
    assert power.detectable_log(sd, n) == pytest.approx(expected, rel=1e-3)
    assert power.detectable_slowdown_pct(sd, n) == pytest.approx(100 * (1 - math.exp(-expected)), rel=1e-3)
    assert power.detectable_slowdown_pct(sd, 10) < power.detectable_slowdown_pct(sd, 5)  # more repeats, finer
    assert math.isnan(power.detectable_log(sd, 2))


def test_the_power_is_what_the_decision_rule_delivers() -> None:
    # simulate comparisons with a planted slowdown of exactly the detectable size: ~80% are decided "slower"
    from harness.analysis import decision

    sd, n, trials = 0.04, 5, 4000
    shift = power.detectable_log(sd, n)
    logs = np.random.default_rng(11).normal(-shift, sd, (trials, n))
    slower = sum(decision.decide(stats.repeat_ratio(np.exp(row))).outcome == decision.WORSE for row in logs)
    assert 0.76 <= slower / trials <= 0.84, slower / trials


def _rec(variant: str, repeat: int, sps: float, attempt: int = 0) -> Record:
    return Record(experiment="mde", variant=variant, phase="speed", repeat=repeat, workload="w", preset="p", seed=0,
                  config={}, status="ok", attempt=attempt, metrics={"samples_per_s": sps})


def test_aa_log_ratios_pair_repeats_from_their_latest_attempts() -> None:
    recs = [_rec("baseline", 0, 100), _rec("aa", 0, 50), _rec("baseline", 0, 100, 1), _rec("aa", 0, 110, 1),
            _rec("baseline", 1, 100), _rec("aa", 1, 90)]
    assert power.aa_log_ratios(recs, "baseline", "aa") == pytest.approx([math.log(1.1), math.log(0.9)])
    with pytest.raises(ValueError, match="gave 2 usable repeat"):
        power.Detectable.from_log_ratios("w", [0.1, -0.1], (5, 10))


@pytest.mark.parametrize("argv, message", [
    (["doctor", "--mde", "lm", "gpcm"], "one workload, got lm gpcm"),
    (["doctor", "--mde", "lm", "--repeats", "2"], "--repeats 2: use 3 or more"),
    (["doctor", "lm"], "a workload and knobs go with --mde"),
])
def test_bad_doctor_inputs_are_one_line(argv, message, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.slow
def test_doctor_mde_measures_and_records(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("TRAINBENCH_HISTORY", str(tmp_path / "history" / "sessions.jsonl"))
    assert main(["doctor", "--mde", TOY, "bench_steps=20", "--repeats", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{TOY} bench_steps=20: A/A spread " in out and "at 5 repeats" in out and "at 10 repeats" in out
    (entry,) = [json.loads(x) for x in history.mde_path().read_text().splitlines()]
    assert entry["repeats"] == 3 and set(entry["slowdown_pct"]) == {"5", "10"}
    # the figure follows the recorded spread exactly
    assert entry["slowdown_pct"]["10"] == pytest.approx(power.detectable_slowdown_pct(entry["sd_pct"] / 100, 10))


def test_the_measured_slowdown_is_quoted_by_reports_and_the_gate(tmp_path: Path, monkeypatch) -> None:
    from harness.against import mde_note
    from harness.report.reproducibility import mde_lines

    monkeypatch.setenv("TRAINBENCH_HISTORY", str(tmp_path / "history" / "sessions.jsonl"))
    rec = Record(experiment="x", variant="v", phase="speed", repeat=0, workload="lm", preset="p", seed=0, config={},
                 status="ok", env={"cpu_model": "c", "cpu_cores": 2, "torch": "t"})
    machine = history.machine_fingerprint(rec.env)
    assert "unmeasured; run `trainbench doctor --mde lm`" in mde_note("lm", [rec])
    assert "not measured on this machine; `trainbench doctor --mde lm`" in "\n".join(mde_lines({}, [rec]))
    entry = {"machine": machine, "workload": "lm preset=tiny", "sd_pct": 4.0, "repeats": 8, "aa_ratio": 1.0,
             "slowdown_pct": {"5": 9.1, "10": 5.9}, "time": "2026-12-07T06:00:00+0000"}
    history.append_history(entry, history.mde_path())
    history.append_history({**entry, "machine": "another"}, history.mde_path())
    text = "\n".join(mde_lines({"mde": history.latest_mde(machine)}, [rec]))
    assert "`trainbench doctor --mde lm preset=tiny`, 2026-12-07): A/A spread 4.0%" in text
    assert "from 9.1% at 5 repeats, 5.9% at 10 repeats" in text
    assert "detects slowdowns of 5.9% or more at 10 repeats" in mde_note("lm", [rec])
    assert "unmeasured" in mde_note("gpcm", [rec])  # another workload has its own figure
