"""A sweep's ETA before its first run (arithmetic on known job seconds), and a quick sweep that stays out of the
committed reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.cli import main
from harness.eta import GUESS_S, MACHINE_CHECK, Eta, job_key, overhead_key
from harness.jobs import Job

TOY = "tests.toy:WORKLOAD"


def _job(variant: str, phase: str = "speed", repeat: int = 0) -> Job:
    return Job(experiment="e", variant=variant, phase=phase, repeat=repeat, config={"preset": "tiny"})


def test_eta_from_known_seconds_then_scaled_by_what_runs_took(tmp_path: Path) -> None:
    cache = tmp_path / "seconds.json"
    cache.write_text(json.dumps({"e/a/speed/tiny": 2.0, "e/b/speed/tiny": 4.0, "e/a/quality/tiny": 10.0}))
    jobs = [_job("a", repeat=0), _job("b", repeat=0), _job("a", repeat=1), _job("b", repeat=1), _job("c"),
            _job("a", "quality")]
    eta = Eta(jobs, cache)
    # a, b, a, b known; c unknown: the median of known speed runs (3 s); the quality run 10 s
    assert eta.remaining_s() == pytest.approx(2 + 4 + 2 + 4 + 3 + 10)
    assert "last run of 5 of the 6 runs" in eta.basis()
    eta.done(jobs[0], 4.0)  # twice as slow as known: the rest is scaled x2; c: the median of a (now 4) and b
    assert eta.remaining_s() == pytest.approx(2 * (4 + 2 + 4 + 4 + 10))
    eta.add(_job("a", repeat=2))  # an added repeat
    assert eta.planned == 6 and eta.left[job_key(jobs[0])] == 2
    assert json.loads(cache.read_text())["e/a/speed/tiny"] == 4.0  # remembered for the next sweep


def test_eta_counts_the_machine_check_and_each_experiments_overhead(tmp_path: Path) -> None:
    cache = tmp_path / "seconds.json"
    cache.write_text(json.dumps({"e/a/speed/tiny": 2.0, MACHINE_CHECK: 1.0, overhead_key("e", "tiny"): 6.0}))
    steps = [MACHINE_CHECK, overhead_key("e", "tiny"), overhead_key("f", "tiny")]
    eta = Eta([_job("a")], cache, steps=steps)
    # f's overhead is unknown: the median of the known overheads, never a job's seconds
    assert eta.remaining_s() == pytest.approx(2 + 1 + 6 + 6)
    assert eta.planned == 1 and "last run of 1 of the 1 runs" in eta.basis()  # steps are not runs
    eta.finish(MACHINE_CHECK, 2.0)  # twice as slow as last time: the rest x2
    assert eta.remaining_s() == pytest.approx(2 * (2 + 6 + 6))
    eta.done(_job("a"), 4.0)
    assert eta.jobs_s == 4.0 and eta.remaining_s() == pytest.approx(2 * (6 + 6))


def test_a_guess_that_was_off_does_not_scale_the_known_rest(tmp_path: Path) -> None:
    cache = tmp_path / "seconds.json"
    cache.write_text(json.dumps({"e/a/speed/tiny": 2.0}))
    eta = Eta([_job("a"), _job("b", "quality")], cache, steps=[MACHINE_CHECK])
    # no quality run known: the median of the jobs known; no machine check known: the guess
    assert eta.remaining_s() == pytest.approx(2 + 2 + GUESS_S)
    eta.finish(MACHINE_CHECK, 0.5)  # a tenth of the guess: says nothing about this machine's speed today
    assert eta.remaining_s() == pytest.approx(2 + 2)


def test_a_reused_quality_job_does_not_set_the_estimate_of_the_others(tmp_path: Path) -> None:
    """A never-run quality experiment: after its baseline's quality run (60 s) and a variant that reused it (0 s),
    its unknown quality run is estimated from the run that trained, not from other experiments' quality runs (tiny
    ones) nor from the median with the reuse."""
    cache = tmp_path / "seconds.json"
    cache.write_text(json.dumps({"old/a/quality/tiny": 1.0, "old/b/quality/tiny": 2.0, "old/c/quality/tiny": 1.5}))
    jobs = [_job("base", "quality"), _job("same", "quality"), _job("other", "quality")]
    eta = Eta(jobs, cache)
    assert eta.remaining_s() == pytest.approx(3 * 1.5)  # nothing of e known: other experiments' quality runs
    eta.done(jobs[0], 60.0)
    eta.done(jobs[1], 0.0, typical=False)
    # e's own quality run that trained sets the rest, not the other experiments' nor the reuse
    assert eta.remaining_s() == pytest.approx(60.0)
    assert json.loads(cache.read_text())["e/same/quality/tiny"] == 0.0  # the next sweep: 0 s


def test_eta_guesses_and_says_so_on_a_new_machine(tmp_path: Path) -> None:
    eta = Eta([_job("a"), _job("b")], tmp_path / "none.json")
    assert eta.remaining_s() == pytest.approx(2 * GUESS_S)
    assert "a guess" in eta.basis()


@pytest.mark.slow
def test_quick_sweep_with_out_leaves_the_committed_reports_alone(tmp_path: Path, monkeypatch,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))  # the runs import tests.toy
    monkeypatch.chdir(tmp_path)
    (tmp_path / "reports").mkdir()
    exp = tmp_path / "toy.toml"
    exp.write_text(f'workload = "{TOY}"\nequivalence = false\n[baseline]\nbench_warmup_steps = 1\nbench_steps = 2\n'
                   '[variants.slow]\nsleep_ms = 1.0\n')
    assert main(["sweep", str(exp), "--quick", "--out", "quick"]) == 0
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("sweep: 1 experiment(s), 2 runs planned; ETA ~")
    assert "1/1 ok" in (tmp_path / "quick" / "reports" / "toy" / "README.md").read_text()
    assert list((tmp_path / "reports").iterdir()) == []  # nothing written to the committed reports
    assert (tmp_path / "runs" / ".job-seconds.json").is_file()  # the next sweep's ETA
    assert main(["sweep", str(exp), "--quick", "--out", "again"]) == 0
    assert "from this machine's last run of 2 of the 2 runs" in capsys.readouterr().err.splitlines()[0]


def test_quick_smoke_run_of_the_bundled_set_leaves_out_the_torchrun_experiments() -> None:
    from harness.cli.common import experiments_dir
    from harness.cli.measure import quick_set
    from harness.experiment import load_experiments

    exps = [e for f in sorted(experiments_dir().glob("*.toml")) for e in load_experiments(f, {"preset": "tiny"})]
    kept, left_out = quick_set(exps)
    assert sorted(left_out) == ["ddp-gpcm", "ddp-lm"]
    assert sorted(e.name for e in kept) == ["doctrans", "gpcm", "lm", "sudoku"]
