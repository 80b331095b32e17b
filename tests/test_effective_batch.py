"""The fastest way to an effective batch: every batch_size x grad_accum = B, from a TOML key or from
`trainbench fit --effective-batch B`, measured side by side, equivalence-checked and ranked."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiment import effective_batch_points, effective_batch_variants, load_experiment
from harness.results import load_records
from tests.conftest import TOY


def test_points_are_every_split_of_the_effective_batch_largest_micro_batch_first() -> None:
    assert [(p["batch_size"], p["grad_accum"]) for p in effective_batch_points(12)] == \
        [(12, 1), (6, 2), (4, 3), (3, 4), (2, 6), (1, 12)]
    assert [p["batch_size"] for p in effective_batch_points(12, largest=5)] == [4, 3, 2, 1]  # 6 and 12 do not fit
    for bad in (0, -4, 2.5, True, "8"):
        with pytest.raises(ValueError, match="give the effective batch .* as a positive integer"):
            effective_batch_points(bad)


def test_the_baseline_is_your_pair_when_its_product_matches() -> None:
    knobs, name, variants = effective_batch_variants(8, {"preset": "tiny", "batch_size": 2, "grad_accum": 4})
    assert name == "b2x4" and knobs["batch_size"] == 2 and knobs["grad_accum"] == 4
    assert list(variants) == ["b8x1", "b4x2", "b1x8"]
    _, name, _ = effective_batch_variants(8, {"batch_size": "2", "grad_accum": "4"}, largest=1)  # yours does not fit
    assert name == "b1x8"
    _, name, variants = effective_batch_variants(8, {})
    assert name == "b8x1" and list(variants) == ["b4x2", "b2x4", "b1x8"]
    with pytest.raises(ValueError, match=r"batch_size x grad_accum = 4 x 1 is not 8; drop them"):
        effective_batch_variants(8, {"batch_size": 4})


def test_a_toml_effective_batch_becomes_exact_variants(tmp_path: Path) -> None:
    from harness.experiment import knob_kinds

    path = tmp_path / "e.toml"
    path.write_text('workload = "lm"\neffective_batch = 8\n[baseline]\npreset = "tiny"\n')
    exp = load_experiment(path)
    assert exp.baseline_name == "b8x1" and exp.variants == ["b8x1", "b4x2", "b2x4", "b1x8"]
    assert all(knob_kinds(exp, v) == {"exact"} for v in exp.variants[1:])  # same gradient: checked equivalent
    path.write_text('workload = "lm"\neffective_batch = 0\n')
    with pytest.raises(ValueError, match="e.toml: effective_batch=0: give the effective batch"):
        load_experiment(path)


@pytest.mark.slow
def test_fit_ranks_every_pair_that_fits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    out = tmp_path / "rank"
    knobs = ["threads=1", "n_samples=64", "mib_per_sample=16"]
    budget = "1.0"
    assert main(["fit", TOY, *knobs, "--memory", budget, "--effective-batch", "4", "--repeats", "3",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "largest batch_size within 1 GiB" in printed and ": 4" in printed  # everything up to 4 fits
    records = load_records(out)
    speed = {r.variant for r in records if r.phase == "speed" and r.status == "ok"}
    assert speed == {"b4x1", "b2x2", "b1x4"}
    equivalence = {r.variant: r.equivalence.get("passed") for r in records if r.phase == "equivalence"}
    assert equivalence == {"b2x2": True, "b1x4": True}
    report = (out / "report" / "README.md").read_text()
    assert "## Same effective batch" in report and "Every batch_size x grad_accum = 4 that ran" in report
    ranking = report.split("## Same effective batch")[1].split("\n## ")[0]
    assert all(f"`{v}`" in ranking for v in speed)


@pytest.mark.parametrize("argv, message", [
    (["--effective-batch", "0"], "--effective-batch=0: give the effective batch"),
    (["--effective-batch", "8", "--knob", "max_length"], "--effective-batch ranks batch_size x grad_accum"),
    (["--effective-batch", "8", "--repeats", "0"], "--repeats 0: measure each split at least once"),
])
def test_bad_effective_batch_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture[str],
                                         tmp_path: Path) -> None:
    from harness.cli import main

    out = tmp_path / "never"
    assert main(["fit", "lm", "preset=tiny", "--memory", "1", *argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_the_ranking_plots_against_batch_size_and_advises_only_the_fastest() -> None:
    from harness.analysis import summarize
    from harness.analysis.advisor import advise_summary
    from harness.report.plots import scaling_axes
    from tests.fixtures.synthetic import base_config, speed_record

    splits = {"b8x1": (8, 1, 1.0), "b4x2": (4, 2, 1.5), "b2x4": (2, 4, 1.3), "b1x8": (1, 8, 0.7)}
    noise = (0.0, 0.01, -0.01, 0.005)
    records = [speed_record(name, rep, speedup=speed, noise=noise[rep], config=base_config(batch_size=b, grad_accum=a))
               for rep in range(4) for name, (b, a, speed) in splits.items()]
    s = summarize(records, "b8x1")
    assert scaling_axes(s)[:2] == ("batch_size", [])  # grad_accum follows from batch_size: no line of its own
    found = advise_summary(s)
    advised = [v for v, fs in found.items() if any(f.rule == "faster_at_same_effective_batch" for f in fs)]
    assert advised == ["b4x2"]  # b2x4 is resolved faster too, but b4x2 is the fastest
    assert float(s.at["b2x4", "speedup_ci_low"]) > 1
