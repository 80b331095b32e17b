"""Isolated runs: failures become records, the sweep goes on, --resume redoes nothing finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from harness.experiment import build
from harness.jobs import plan
from harness.results import RECORDS_FILE, iter_records, load_records
from harness.runner import run_experiment
from tests.conftest import TOY

BASE = {"bench_warmup_steps": 1, "bench_steps": 4}


@pytest.mark.slow
def test_crash_nan_and_timeout_become_records_while_others_finish(tmp_path) -> None:
    exp = build("failures", TOY, BASE, {"raises": {"fail": "raise"}, "nan": {"fail": "nan"},
                                        "hangs": {"fail": "hang"}, "fine": {"dim": 4}},
                repeats=1, equivalence=False, timeout_s=25, target_half_width_pct=0.0)
    run_experiment(exp, tmp_path)
    by_variant = {r.variant: r for r in load_records(tmp_path)}
    assert by_variant["baseline"].status == "ok" and by_variant["fine"].status == "ok"
    assert by_variant["raises"].status == "crash"
    assert "RuntimeError: planted failure in forward" in by_variant["raises"].error
    assert by_variant["nan"].status == "nan" and "training loss is nan" in by_variant["nan"].error
    assert by_variant["hangs"].status == "timeout" and "exceeded timeout_s=25" in by_variant["hangs"].error
    assert by_variant["fine"].metrics["samples_per_s"] > 0


def test_repeats_are_interleaved_and_rotated() -> None:
    exp = build("order", TOY, BASE, {"b": {"dim": 4}, "c": {"dim": 2}}, repeats=4, equivalence=False,
                target_half_width_pct=0.0)
    jobs, _ = plan(exp)
    assert [(j.variant, j.repeat) for j in jobs] == [  # every round holds each variant; each leads one in turn
        ("baseline", 0), ("b", 0), ("c", 0), ("b", 1), ("c", 1), ("baseline", 1),
        ("c", 2), ("baseline", 2), ("b", 2), ("baseline", 3), ("b", 3), ("c", 3)]


@pytest.mark.slow
def test_existing_results_need_resume(tmp_path) -> None:
    exp = build("again", TOY, BASE, {}, repeats=1, equivalence=False)
    run_experiment(exp, tmp_path)
    try:
        run_experiment(exp, tmp_path)
    except ValueError as exc:
        assert "pass --resume" in str(exc)
    else:
        raise AssertionError("a second run into the same directory must be refused")


def _toml(tmp_path) -> str:
    path = tmp_path / "resume.toml"
    path.write_text(f'workload = "{TOY}"\nrepeats = 3\nequivalence = false\ntarget_half_width_pct = 0\nmax_reruns = 0\n'
                    '[baseline]\nbench_warmup_steps = 1\nbench_steps = 2\n[variants.slow]\nsleep_ms = 5.0\n')
    return str(path)


@pytest.mark.slow
def test_resume_after_kill_reruns_nothing_finished(tmp_path) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "harness.cli", "sweep", _toml(tmp_path), "--out", str(out),
           "--reports", str(tmp_path / "reports")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline and len(list(iter_records(out))) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = [r.key for r in iter_records(out)]
    assert 2 <= len(before) < 6, before
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    keys = [r.key for r in iter_records(out)]
    assert Counter(keys).most_common(1)[0][1] == 1, "a finished run was run again"
    assert len(keys) == 6 and keys[: len(before)] == before
    assert (out / RECORDS_FILE).read_text().endswith("\n")


def test_runs_get_fixed_malloc_thresholds_unless_the_user_sets_them(monkeypatch) -> None:
    from harness.launch import MALLOC_ENV, child_env

    monkeypatch.delenv("MALLOC_MMAP_THRESHOLD_", raising=False)
    assert child_env()["MALLOC_MMAP_THRESHOLD_"] == MALLOC_ENV["MALLOC_MMAP_THRESHOLD_"] == str(32 * 1024**2)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "65536")
    assert child_env()["MALLOC_MMAP_THRESHOLD_"] == "65536"  # the user's setting wins


@pytest.mark.slow
def test_a_record_says_which_malloc_settings_it_ran_under(tmp_path) -> None:
    exp = build("malloc", TOY, {**BASE, "bench_steps": 2}, {}, repeats=1, equivalence=False, max_reruns=0)
    run_experiment(exp, tmp_path)
    (rec,) = load_records(tmp_path)
    assert rec.env["malloc"].startswith("MALLOC_MMAP_THRESHOLD_=")


def test_by_variant_starts_every_renewal_before_waiting_for_any() -> None:
    from harness.launch import ByVariant, Launcher

    calls: list[str] = []

    class Slow(Launcher):
        def __init__(self, name: str) -> None:
            super().__init__()
            self.name = name

        def renew_start(self) -> None:
            calls.append(f"start {self.name}")

        def renew_finish(self) -> None:
            calls.append(f"ready {self.name}")

    ByVariant({"old": Slow("old"), "new": Slow("new")}).renew()
    assert calls == ["start old", "start new", "ready old", "ready new"]  # the two servers start side by side


@pytest.mark.slow
def test_a_variant_proven_the_same_function_reuses_the_baseline_quality_runs(tmp_path) -> None:
    """quality_reuse: a variant changing only exact knobs whose equivalence check passed is not re-trained (its
    records are the baseline's of the same seed, marked, without times); one whose check failed, or that changes a
    quality knob, trains; quality_reuse = false trains every variant."""
    from harness.analysis.summary import summarize

    variants = {"same": {"sleep_ms": 1.0}, "shifted": {"init_shift": 0.5}, "lr": {"lr": 0.05}}
    exp = build("reuse", TOY, BASE, variants, repeats=0, quality_epochs=2, quality_seeds=2,
                target_half_width_pct=0.0)
    run_experiment(exp, tmp_path / "on")
    recs = load_records(tmp_path / "on")
    checks = {r.variant: r.equivalence.get("passed") for r in recs if r.phase == "equivalence"}
    assert checks == {"same": True, "shifted": False, "lr": None}
    quality = {(r.variant, r.repeat): r for r in recs if r.phase == "quality"}
    assert len(quality) == 8 and {r.repeat for r in quality.values()} == {0, 1}
    for seed in (0, 1):
        same, base = quality["same", seed], quality["baseline", seed]
        assert same.reused_from == "baseline" and same.config["sleep_ms"] == 1.0 and same.seed == base.seed
        assert same.quality == base.quality and same.quality  # the baseline's seed, not another's
        assert [p["train_loss"] for p in same.curve] == [p["train_loss"] for p in base.curve]
        assert all(p["wall_s"] != p["wall_s"] for p in same.curve) and not same.step_ms  # no time of its own
        assert all(not quality[v, seed].reused_from and quality[v, seed].wall_s > 0 for v in ("shifted", "lr"))
    assert quality["baseline", 0].quality != quality["baseline", 1].quality  # two seeds: two trainings
    s = summarize(recs, "baseline")
    assert s.at["same", "reused_from"] == "baseline" and s.at["same", "score_delta"] == 0
    assert s.at["same", "time_to_target_reached"] == "" and s.at["lr", "time_to_target_reached"] != ""
    assert s.attrs["equal_time_s"] is not None  # the reused curves' missing times do not void it

    off = build("reuse", TOY, BASE, {"same": variants["same"]}, repeats=0, quality_epochs=1,
                target_half_width_pct=0.0, quality_reuse=False)
    run_experiment(off, tmp_path / "off")
    (trained,) = [r for r in load_records(tmp_path / "off") if r.variant == "same" and r.phase == "quality"]
    assert not trained.reused_from and trained.wall_s > 0 and trained.step_ms
