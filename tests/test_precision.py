"""Repeats until the interval is tight, contended runs re-run, both within the experiment's budget.

The launcher here is a stand-in that returns planted outcomes (a known samples/s per variant and
repeat, contended or not), so the runner's decisions are tested on known loads, not on timing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.experiment import build, load_experiment
from harness.results import PRECISION_FILE, load_records
from harness.runner import Job, Launcher, Outcome, run_experiment
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


def test_tight_ratios_stop_after_the_planned_repeats(tmp_path: Path) -> None:
    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0, 1.001, 0.999])
    run_experiment(_exp(), tmp_path / "r", launcher=launcher)
    assert [j.repeat for j in launcher.jobs] == [0, 0, 1, 1, 2, 2]  # interleaved A B, A B, A B; no more


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
    assert [j.variant for j in launcher.jobs[6:]] == ["baseline", "fast"] * 3
    notes = json.loads((tmp_path / "r" / PRECISION_FILE).read_text())["notes"]
    assert any("max_repeats=6 reached" in n and "fast" in n for n in notes)


def test_contended_runs_are_rerun_within_the_budget(tmp_path: Path) -> None:
    # every one of the first 10 speed runs is contended, but the experiment allows only 2 re-runs
    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0], contended=10)
    run_experiment(_exp(max_reruns=2, target_half_width_pct=0.0), tmp_path / "r", launcher=launcher)
    attempts = [(j.variant, j.repeat, j.attempt) for j in launcher.jobs]
    assert attempts[:3] == [("baseline", 0, 0), ("baseline", 0, 1), ("baseline", 0, 2)]
    assert sum(a > 0 for _, _, a in attempts) == 2
    precision = json.loads((tmp_path / "r" / PRECISION_FILE).read_text())
    assert precision["reruns"] == 2 and any("re-runs of the experiment is spent" in n for n in precision["notes"])
    records = load_records(tmp_path / "r")
    assert {r.attempt for r in records if r.variant == "baseline" and r.repeat == 0} == {0, 1, 2}


def test_a_rerun_replaces_the_contended_run_in_the_summary(tmp_path: Path) -> None:
    from harness.analysis import summarize

    launcher = PlantedLauncher({"baseline": 100.0, "fast": 150.0}, noise=[1.0], contended=1)
    run_experiment(_exp(target_half_width_pct=0.0), tmp_path / "r", launcher=launcher)
    summary = summarize(load_records(tmp_path / "r"), "baseline")
    assert summary.at["baseline", "reruns"] == 1 and summary.at["baseline", "contended_runs"] == 1
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
