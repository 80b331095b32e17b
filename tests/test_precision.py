"""Repeats until the interval is tight, contended runs re-run, both within the experiment's budget.

The launcher here is a stand-in that returns planted outcomes (a known samples/s per variant and
repeat, contended or not), so the runner's decisions are tested on known loads, not on timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.experiment import build, load_experiment
from harness.jobs import Job, Outcome
from harness.launch import Launcher
from harness.results import PRECISION_FILE, load_records
from harness.runner import run_experiment
from tests.conftest import TOY


class PlantedLauncher(Launcher):
    """Returns samples/s = speed[variant] x noise[repeat]; the first `contended` speed runs are contended."""

    def __init__(self, speed: dict[str, float], noise: list[float], contended: int = 0) -> None:
        super().__init__()
        self.speed, self.noise, self.contended = speed, noise, contended
        self.jobs: list[Job] = []

    def launch(self, job: Job, workdir: Path) -> Outcome:
        self.jobs.append(job)
        verdict = ""
        if job.phase == "speed" and self.contended > 0:
            self.contended -= 1
            verdict = "its steps waited 40% of their wall time for a core"
        sps = self.speed[job.variant] * self.noise[job.repeat % len(self.noise)]
        result = {"status": "ok", "env": {"hostname": "h", "cpu_model": "c"},
                  "metrics": {"samples_per_s": sps, "train_wall_s": 1.0, "measured_steps": 10},
                  "contention": {"verdict": verdict}, "equivalence": {"passed": True, "reason": "planted"}}
        return Outcome(result, 0, "", False, 0.01)


def _exp(**kw):
    return build("prec", TOY, {}, {"fast": {"n_samples": 128}}, repeats=3, equivalence=False, **kw)


def test_tight_ratios_stop_at_the_stopping_rules_minimum(tmp_path: Path) -> None:
    from harness.analysis.stats import MIN_STOP_REPEATS

    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0, 1.001, 0.999])
    run_experiment(_exp(), tmp_path / "r", launcher=launcher)
    # interleaved A B, B A, A B, then rounds up to the minimum a sweep may stop on (the interval is tight at 3)
    assert [(j.repeat, j.variant) for j in launcher.jobs[:6]] == [
        (0, "baseline"), (0, "fast"), (1, "fast"), (1, "baseline"), (2, "baseline"), (2, "fast")]
    assert max(j.repeat for j in launcher.jobs) == MIN_STOP_REPEATS - 1 and len(launcher.jobs) == 2 * MIN_STOP_REPEATS


def test_a_fixed_number_of_repeats_has_no_stopping_rule(tmp_path: Path) -> None:
    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0, 1.001, 0.999])
    run_experiment(_exp(target_half_width_pct=0.0), tmp_path / "r", launcher=launcher)
    assert len(launcher.jobs) == 6


def test_wide_ratios_add_interleaved_repeats_up_to_max_repeats(tmp_path: Path) -> None:
    # the variant's speed swings +-20% from repeat to repeat: the interval never reaches +-3%
    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0, 1.2, 0.8, 1.1, 0.9])
    launcher.speed_by_repeat = True
    exp = _exp(max_repeats=6)
    orig = launcher.launch

    def launch(job: Job, workdir: Path) -> Outcome:  # noise on the variant only: its ratio wobbles
        out = orig(job, workdir)
        if job.variant == "baseline":
            out.result["metrics"]["samples_per_s"] = 100.0
        return out

    launcher.launch = launch
    run_experiment(exp, tmp_path / "r", launcher=launcher)
    assert max(j.repeat for j in launcher.jobs) == 5  # repeats 3, 4, 5 added, both sides each time
    # both sides each round, the order rotated by repeat (repeat 3 starts with the variant)
    assert [j.variant for j in launcher.jobs[6:]] == ["fast", "baseline", "baseline", "fast", "fast", "baseline"]
    notes = json.loads((tmp_path / "r" / PRECISION_FILE).read_text())["notes"]
    assert any("max_repeats=6 reached" in n and "fast" in n for n in notes)


def test_a_contended_run_reruns_its_whole_round_within_the_budget(tmp_path: Path) -> None:
    # every one of the first 10 speed runs is contended, but the experiment allows only 4 re-runs: two rounds of 2
    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0], contended=10)
    run_experiment(_exp(max_reruns=4, target_half_width_pct=0.0), tmp_path / "r", launcher=launcher)
    attempts = [(j.variant, j.repeat, j.attempt) for j in launcher.jobs]
    assert attempts[:6] == [("baseline", 0, 0), ("fast", 0, 0), ("baseline", 0, 1), ("fast", 0, 1),
                            ("baseline", 0, 2), ("fast", 0, 2)]  # the pair re-runs together, in its order
    assert sum(a > 0 for _, _, a in attempts) == 4
    precision = json.loads((tmp_path / "r" / PRECISION_FILE).read_text())
    assert precision["reruns"] == 4 and any("re-runs of the experiment is spent" in n for n in precision["notes"])
    records = load_records(tmp_path / "r")
    for v in ("baseline", "fast"):
        assert {r.attempt for r in records if r.variant == v and r.repeat == 0} == {0, 1, 2}


def test_a_rerun_round_pairs_runs_of_the_same_attempt(tmp_path: Path) -> None:
    from harness.analysis.speedup import estimate
    from harness.analysis.summary import latest_attempts

    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0], contended=1)
    run_experiment(_exp(target_half_width_pct=0.0), tmp_path / "r", launcher=launcher)
    latest = latest_attempts(load_records(tmp_path / "r"))
    assert {(r.variant, r.repeat, r.attempt) for r in latest if r.repeat == 0} == {("baseline", 0, 1), ("fast", 0, 1)}
    est, _ = estimate([r for r in latest if r.variant == "baseline"], [r for r in latest if r.variant == "fast"])
    assert est.n == 3 and est.ratio == pytest.approx(1.5)


def test_a_rerun_replaces_the_contended_run_in_the_summary(tmp_path: Path) -> None:
    from harness.analysis import summarize

    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0], contended=1)
    run_experiment(_exp(target_half_width_pct=0.0), tmp_path / "r", launcher=launcher)
    summary = summarize(load_records(tmp_path / "r"), "baseline")
    assert summary.at["baseline", "reruns"] == 1 and summary.at["fast", "reruns"] == 1  # its round, re-run
    assert summary.at["baseline", "contended_runs"] == 1
    assert summary.at["baseline", "still_contended"] == 0 and summary.at["fast", "speedup_pairs"] == 3


@pytest.mark.parametrize("text, message", [
    ("max_repeats = 2", "max_repeats=2 is below repeats=3"),
    ('target_half_width_pct = "tight"', "'target_half_width_pct' must be a number"),
    ("max_reruns = 1.5", "'max_reruns' must be an integer"),
    ('repeats = "three"', "'repeats' must be an integer"),
    ('quality_target = "high"', "'quality_target' must be a number"),
    ('equivalence = "no"', "'equivalence' must be true or false"),
])
def test_bad_precision_settings_name_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "x.toml"
    path.write_text(f'workload = "{TOY}"\nrepeats = 3\n{text}\n[variants.fast]\nn_samples = 128\n'
                    .replace("repeats = 3\nrepeats", "repeats"))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_experiment(path)


class _Clock:
    """A monotonic clock that advances only by the planted wall time of each launched run."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


def _timed(launcher: PlantedLauncher, clock: _Clock, run_s: float) -> None:
    orig = launcher.launch

    def launch(job: Job, workdir: Path) -> Outcome:
        clock.now += run_s
        out = orig(job, workdir)
        return Outcome(out.result, 0, "", False, run_s)

    launcher.launch = launch


def test_the_sweep_deadline_bounds_added_repeats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.runner

    clock = _Clock()
    monkeypatch.setattr(harness.runner.time, "monotonic", clock.monotonic)
    launcher = _wobbling({"baseline": 100.0, "fast": 150.0})  # the interval stays wide
    _timed(launcher, clock, run_s=10.0)
    # 6 planned runs take 60 s; 25 s more leaves room for exactly one added round (2 runs, 20 s)
    run_experiment(_exp(max_repeats=10), tmp_path / "r", launcher=launcher, deadline=clock.now + 85.0)
    assert len(launcher.jobs) == 8 and [j.repeat for j in launcher.jobs[6:]] == [3, 3]
    notes = json.loads((tmp_path / "r" / PRECISION_FILE).read_text())["notes"]
    assert any("the sweep's time budget spent before the target" in n for n in notes)


def test_a_passed_deadline_still_runs_the_planned_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import harness.runner

    clock = _Clock()
    monkeypatch.setattr(harness.runner.time, "monotonic", clock.monotonic)
    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0, 1.2, 0.8], contended=1)
    _timed(launcher, clock, run_s=10.0)
    run_experiment(_exp(), tmp_path / "r", launcher=launcher, deadline=clock.now - 1.0)
    assert [(j.variant, j.repeat, j.attempt) for j in launcher.jobs] == [  # the planned rounds, no re-run
        ("baseline", 0, 0), ("fast", 0, 0), ("fast", 1, 0), ("baseline", 1, 0), ("baseline", 2, 0), ("fast", 2, 0)]
    notes = json.loads((tmp_path / "r" / PRECISION_FILE).read_text())["notes"]
    assert any("baseline contended; its round was not re-run (the sweep's time budget" in n for n in notes)


def test_sweep_budget_must_not_be_negative(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    assert main(["sweep", "--budget-min", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--budget-min -1" in err[0] and "minutes >= 0" in err[0]


def _wobbling(speed: dict[str, float]) -> PlantedLauncher:
    """The variants' speed swings +-20% by repeat, the baseline's does not: intervals stay wide."""
    launcher = PlantedLauncher(speed, noise=[1.0, 1.2, 0.8])
    orig = launcher.launch

    def launch(job: Job, workdir: Path) -> Outcome:
        out = orig(job, workdir)
        if job.variant == "baseline":
            out.result["metrics"]["samples_per_s"] = 100.0
        return out

    launcher.launch = launch
    return launcher


def test_added_rounds_run_every_variant_in_its_own_process(tmp_path: Path) -> None:
    # even an exact knob (sleep inside forward) that could share the baseline's process gets its own:
    # paired rounds measured other ratios than separate processes, and one interval must not mix them
    launcher = _wobbling({"baseline": 100.0, "slower": 80.0})
    exp = build("prec", TOY, {}, {"slower": {"sleep_ms": 1.0}}, repeats=3, equivalence=False, max_repeats=5)
    run_experiment(exp, tmp_path / "r", launcher=launcher)
    assert not any(j.group for j in launcher.jobs)
    assert [(j.repeat, j.variant) for j in launcher.jobs[6:]] == [
        (3, "slower"), (3, "baseline"), (4, "baseline"), (4, "slower")]


def test_every_speed_round_after_the_first_starts_from_a_renewed_launcher(tmp_path: Path) -> None:
    launcher = _wobbling({"baseline": 100.0, "fast": 150.0})
    renewed: list[int] = []
    launcher.renew = lambda: renewed.append(len(launcher.jobs))  # jobs launched before each renewal
    run_experiment(_exp(max_repeats=5), tmp_path / "r", launcher=launcher)
    # once per round (repeat), before its first run; the first round runs on the launcher as it started
    assert renewed == [2, 4, 6, 8]
