"""Report rendering on a recorded results fixture: golden structure (headings, tables), not golden numbers;
every referenced plot written and a real, non-empty PNG; the index; gates and cost tables with an experiment."""

import re
import shutil
from pathlib import Path

import pytest
from matplotlib.image import imread

from harness.experiment import build, save_experiment
from harness.report import write_index, write_report
from harness.results import load_records
from tests.fixtures.synthetic import RECORDED_DIR, demo_records, scaling_records, speed_record, write

TOY = "tests.fixtures.toy_workload:WORKLOAD"
SECTIONS = ["## Key changes", "## Speed", "## Noise floor", "## Equivalence", "## Quality", "## Phase breakdown",
            "## Gates", "## Advisor", "## Plots", "## Failed and skipped runs", "## Reproduce"]


def assert_png(path: Path) -> None:
    assert path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 400
    assert pixels.std() > 0.01  # not a blank canvas


def images(readme: Path) -> list[Path]:
    return [readme.parent / name for name in re.findall(r"!\[[^]]*\]\(([^)]+)\)", readme.read_text())]


def test_committed_fixture_matches_the_generator():
    # the recorded file loads under the current schema and holds what the generator makes
    recorded = load_records(RECORDED_DIR)
    assert [r.key for r in recorded] == [r.key for r in demo_records()]


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """Two rendered reports under one reports/ directory: the recorded fixture and a batch-size sweep."""
    out = tmp_path_factory.mktemp("report")
    shutil.copytree(RECORDED_DIR, out / "results")
    write_report(out / "results", out / "reports" / "demo")
    write_report(write(out / "scaling_results", scaling_records()), out / "reports" / "scaling")
    return out / "reports"


@pytest.fixture
def demo_report(reports):
    return reports / "demo" / "README.md"


def test_report_structure(demo_report):
    text = demo_report.read_text()
    assert text.startswith("# demo\n")
    positions = [text.index(s) for s in SECTIONS]
    assert positions == sorted(positions), "sections out of order"
    for header in ["| Variant | Knob (kind) | Baseline | Variant | Measured impact (95% CI) |",
                   "| Variant | samples/s (min–max) | tokens/s |",
                   "| Variant | compared | dtype | tolerance | max abs err | max rel err | result | note |",
                   "| Variant | epochs | best epoch | accuracy | mae | Δ accuracy |",
                   "| Variant | data % | forward % | loss % | backward % | optimizer % | other % | step ms |",
                   "| Variant | phase | repeat | status | error (last line) |"]:
        assert header in text, header
    for line in ["| where |", "| software |", "| code |", "| when |", "| repeats |", "**Headline:**"]:
        assert line in text, line
    assert "| `crashy` | speed | 1 | crash |" in text  # the failed run is shown, not dropped
    assert "**duplicate_forward**" in text and "**speedup_with_quality_loss**" in text
    # every markdown table row has as many cells as its header
    for block in re.findall(r"((?:^\|.*\|\n)+)", text, flags=re.M):
        counts = {len(re.findall(r"(?<!\\)\|", line)) for line in block.strip().splitlines()}
        assert len(counts) == 1, block


def test_plots_written_and_nonempty(demo_report):
    found = images(demo_report)
    assert {p.name for p in found} == {"throughput.png", "phases.png", "quality.png", "resources.png"}
    for png in found:
        assert_png(png)


def test_scaling_plot_when_one_numeric_knob_is_swept(reports):
    readme = reports / "scaling" / "README.md"
    assert "scaling.png" in {p.name for p in images(readme)}
    assert_png(reports / "scaling" / "scaling.png")
    assert "quality.png" not in readme.read_text()  # no quality runs, no quality plot


def test_gates_and_cost_table_with_an_experiment(tmp_path):
    exp = build("toyexp", TOY, {"preset": "tiny"}, {"wide": {"d_model": 64, "n_layers": 2}, "bs8": {"batch_size": 8}},
                description="toy sizes", gates=("wide.speedup >= 0.1", "all.forward_calls_per_step == 1",
                                                "bs8.speedup >= 5"), source="bench/experiments/toy.toml")
    speedups = {"baseline": 1.0, "wide": 0.3, "bs8": 1.5}
    records = [speed_record(v, r, speedup=speedups[v], noise=(0.0, 0.02, 0.01)[r], config=exp.configs[v].to_dict(),
                            workload=TOY, experiment="toyexp") for r in range(3) for v in exp.variants]
    results = write(tmp_path / "res", records)
    save_experiment(exp, results)  # as the runner does: experiment.json and workload.json beside the records
    readme = write_report(results, tmp_path / "reports" / "toyexp", plots=False)
    text = readme.read_text()
    assert "> toy sizes" in text and "trainbench sweep bench/experiments/toy.toml" in text
    assert "2/3 passed." in text
    assert "- ✅ `wide.speedup >= 0.1`" in text and "- ❌ `bs8.speedup >= 5`" in text
    assert "## Predicted vs measured cost" in text and "### baseline vs wide" in text
    assert "| Component | baseline | wide | Ratio |" in text and "FLOPs/token, formula (6N + 12·L·H·Q·T)" in text
    assert "**d_model** (quality)" in text  # workload knob kinds come from workload.json
    assert "## Plots" not in text and not list(readme.parent.glob("*.png"))


def test_index_links_every_report(reports):
    text = write_index(reports).read_text()
    assert "| Experiment | Headline | gates | commit | when | device |" in text
    assert "[demo](demo/README.md)" in text and "[scaling](scaling/README.md)" in text
    assert "adopt `batched`: faster than `baseline`, x3.03 [" in text  # the headline: the fastest to adopt


def test_recorded_warnings_are_listed_once_with_their_variants(tmp_path):
    import dataclasses

    warn = "num_workers=8 exceeds the 2 CPU cores here; capped at 2"
    recs = [dataclasses.replace(speed_record(v, r), warnings=(warn,) if v == "b" else ())
            for r in range(3) for v in ("a", "b")]
    readme = write_report(write(tmp_path / "results", recs), tmp_path / "rep", plots=False)
    text = readme.read_text()
    assert text.count(warn) == 1 and "## Warnings" in text
    assert f"| {warn} | `b` |" in text


def test_the_console_shows_each_warning_once_per_experiment(capsys):
    import dataclasses

    from harness.cli.common import progress
    from harness.jobs import Job

    warn = "pin_memory=true has no effect on a CPU run (nothing is copied to a GPU)"
    for r in range(2):
        job = Job(experiment="warned", variant="b", phase="speed", repeat=r, config={})
        progress(r + 1, 2, job, dataclasses.replace(speed_record("b", r), warnings=(warn,)))
    assert capsys.readouterr().err.count(f"warning: {warn}") == 1


def test_bar_labels_end_inside_their_panel_and_a_missing_value_says_na() -> None:
    """A value label past its bar never runs over the panel's edge (the axis widens until it fits); a variant
    without the value gets "n/a", not an empty slot that reads as zero."""
    import numpy as np

    from harness.report.plots import _bars, _figure, _fit_all

    fig, (ax,) = _figure(3, 2)
    _bars(ax, ["a", "b", "c"], np.array([1.0, 32.0, np.nan]), "MiB", 1.0)
    _fit_all(fig)  # as saving the figure does
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    right = ax.get_window_extent(renderer).x1
    assert all(t.get_window_extent(renderer).x1 <= right + 0.5 for t in ax.texts)
    labels = [t.get_text() for t in ax.texts]
    assert labels[1].strip() == "32 (+3100%)" and "n/a" in labels[2]
