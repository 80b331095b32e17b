"""Grids: every combination of the swept knobs becomes a named variant (TOML `[grid]`, `run k=a,b`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiment import MAX_GRID_POINTS, expand_grid, load_experiment, point_name


def test_expand_grid_crosses_the_lists_first_knob_slowest() -> None:
    points = expand_grid({"batch_size": [8, 16], "amp": ["off", "bf16"]})
    assert [point_name(p) for p in points] == ["batch_size=8,amp=off", "batch_size=8,amp=bf16",
                                               "batch_size=16,amp=off", "batch_size=16,amp=bf16"]


@pytest.mark.parametrize("grid, message", [
    ({}, "grid is empty; give each swept knob a list, e.g. batch_size = [8, 16, 32]"),
    ({"batch_size": []}, "grid: 'batch_size' has no values ([]); give a list"),
    ({"batch_size": 8}, "grid: 'batch_size' has no values (8); give a list"),
    ({"batch_size": [8, 8]}, "grid: 'batch_size' lists a value twice"),
    ({"batch_size": list(range(1, 6)), "max_length": list(range(8, 13)), "lr": [0.1, 0.2]},
     f"grid: 5 x 5 x 2 = 50 points exceeds the maximum of {MAX_GRID_POINTS}; shorten a list or raise max_grid_points"),
])
def test_a_bad_grid_is_one_line_naming_the_fix(grid: dict, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        expand_grid(grid)
    assert str(exc.value).startswith(message) and "\n" not in str(exc.value)


def _toml(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "g.toml"
    path.write_text('workload = "lm"\n' + body + '\n[baseline]\npreset = "tiny"\n')
    return path


def test_a_toml_grid_becomes_variants_and_the_baseline_point_is_the_baseline(tmp_path: Path) -> None:
    exp = load_experiment(_toml(tmp_path, "[grid]\nbatch_size = [4, 8, 16]\nmax_length = [16, 32]\n"))
    # tiny is batch 8, max_length 32: that point is the baseline itself
    assert exp.variants == ["baseline", "batch_size=4,max_length=16", "batch_size=4,max_length=32",
                            "batch_size=8,max_length=16", "batch_size=16,max_length=16",
                            "batch_size=16,max_length=32"]
    assert exp.configs["batch_size=16,max_length=16"].batch_size == 16


@pytest.mark.parametrize("body, message", [
    ("[grid]\n", "g.toml: [grid] is empty"),
    ("[grid]\nnot_a_knob = [1, 2]\n", "unknown knob 'not_a_knob' for workload 'lm'"),
    ("max_grid_points = 4\n[grid]\nbatch_size = [2, 4, 8, 16, 32]\n",
     "g.toml: [grid]: 5 = 5 points exceeds the maximum of 4"),
    ("max_grid_points = 0\n[grid]\nbatch_size = [2]\n", "g.toml: 'max_grid_points' must be a positive integer"),
])
def test_a_bad_toml_grid_is_refused(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_experiment(_toml(tmp_path, body))


def test_run_sweeps_a_comma_list_and_keeps_free_text_commas() -> None:
    from harness.cli.measure import grid_items

    fixed, grid = grid_items("lm", {"batch_size": "4,8", "amp": "off,bf16", "preset": "tiny"})
    assert fixed == {"preset": "tiny"} and grid == {"batch_size": ["4", "8"], "amp": ["off", "bf16"]}
    fixed, grid = grid_items("tests.toy:WORKLOAD", {"metric_script": "1,2,3"})
    assert fixed == {"metric_script": "1,2,3"} and grid == {}


@pytest.mark.slow
def test_run_with_a_grid_records_every_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main
    from harness.results import load_records

    out = tmp_path / "grid"
    assert main(["run", "lm", "preset=tiny", "batch_size=4,8", "bench_steps=3", "--repeats", "1",
                 "--out", str(out)]) == 0
    records = load_records(out)
    assert sorted({r.variant for r in records}) == ["batch_size=4", "batch_size=8"]
    assert {r.variant: r.config["batch_size"] for r in records if r.phase == "speed"} == \
        {"batch_size=4": 4, "batch_size=8": 8}


def test_run_refuses_a_grid_over_a_bad_value_before_anything_runs(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    out = tmp_path / "grid"
    assert main(["run", "lm", "preset=tiny", "batch_size=4,x", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "batch_size" in err[0]
    assert not out.exists()


def test_a_grid_draws_one_curve_per_value_of_the_other_knob(tmp_path: Path) -> None:
    import pandas as pd

    from harness.report.plots import scaling, scaling_axes

    rows = []
    for ml in (64, 128):
        for bs in (4, 8, 16):
            rows.append({"config": {"batch_size": bs, "max_length": ml},
                         "changed": {"batch_size": (16, bs), "max_length": (128, ml)},
                         "samples_per_s": bs * 10.0 / ml, "samples_per_s_min": bs * 9.0 / ml,
                         "samples_per_s_max": bs * 11.0 / ml, "tokens_per_s": bs * 100.0,
                         "peak_rss_gib": 0.1 * bs, "cuda_peak_allocated_gib": float("nan")})
    summary = pd.DataFrame(rows)
    assert scaling_axes(summary)[:2] == ("batch_size", ["max_length"])
    path = scaling(summary, tmp_path / "scaling.png")
    assert path is not None and path.stat().st_size > 10_000
    assert scaling_axes(summary.assign(config=[{"batch_size": 8, "max_length": 64}] * 6)) is None


def test_one_factor_variants_draw_only_the_curve_of_the_swept_knob() -> None:
    import pandas as pd

    from harness.report.plots import scaling_axes

    base = {"max_length": 128, "forward": "batched", "amp": "off"}
    variants = {"baseline": {}, "chunk64": {"max_length": 64}, "no_chunking": {"max_length": 0},
                "per_sequence": {"forward": "per_sequence"}, "amp": {"amp": "bf16"}}
    rows = [{"config": {**base, **o}, "changed": {k: (base[k], v) for k, v in o.items()}} for o in variants.values()]
    summary = pd.DataFrame(rows, index=list(variants))
    # no_chunking's max_length=0 is a switch (no chunking), not a length: 128 and 64 alone make no curve
    assert scaling_axes(summary) is None
    summary.loc["chunk32"] = [{**base, "max_length": 32}, {"max_length": (128, 32)}]
    # the max_length curve from the variants on the baseline's line; the one-knob variants off it are left out
    assert scaling_axes(summary) == ("max_length", [], ["baseline", "chunk64", "chunk32"])
