"""A results directory describes itself: a real sweep writes experiment.json and workload.json beside its
records, analysis and report import nothing of the models, and the report renders the same in a process
that cannot import them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import results
from harness.description import load_description
from harness.experiment import build, load_saved_experiment, resolve_saved
from harness.jobs import plan
from harness.report import write_report
from harness.results import EXPERIMENT_FILE, WORKLOAD_FILE, Record, append, load_records
from harness.runner import run_experiment
from tests.conftest import REPO, TOY
from tests.fixtures.synthetic import speed_record

FORBIDDEN = ("models", "harness.registry", "harness.runner", "harness.trainer", "harness.config")

# Run in a child before anything else: any import of the models, the registry, the runner, the trainer
# or the config raises, so a report that still reaches for them fails loudly.
REFUSE_IMPORTS = textwrap.dedent(f"""
    import sys

    class RefuseModels:
        def find_spec(self, name, path=None, target=None):
            if name.startswith({FORBIDDEN!r}):
                raise ImportError(f"{{name}} must not be imported to render a report")
            return None

    sys.meta_path.insert(0, RefuseModels())
""")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny real LM sweep: an exact variant (checked), a size variant (a quality knob: check skipped)."""
    out = tmp_path_factory.mktemp("sweep") / "results"
    exp = build("lm-tiny", "lm", {"preset": "tiny", "bench_warmup_steps": 1, "bench_steps": 2},
                {"per_sequence": {"forward": "per_sequence"}, "wide": {"d_model": 64}},
                repeats=1, quality_epochs=1, timeout_s=300, target_half_width_pct=0.0,
                gates=("per_sequence.equivalent",))
    run_experiment(exp, out)
    return exp, out


def test_analysis_and_report_import_no_models():
    code = ("import harness.analysis, harness.report, sys; "
            f"bad = [m for m in sys.modules if m.startswith({FORBIDDEN!r})]; assert not bad, bad")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_sweep_writes_its_description(sweep):
    exp, out = sweep
    assert (out / EXPERIMENT_FILE).is_file() and (out / WORKLOAD_FILE).is_file()
    json.loads((out / WORKLOAD_FILE).read_text())  # plain JSON
    desc = load_description(out)
    wl = exp.configs["baseline"].get_workload()
    assert desc.name == "lm" and desc.description == wl.description
    assert desc.primary_metric == wl.primary_metric and desc.higher_is_better is wl.higher_is_better
    assert desc.quality_metrics == tuple(wl.quality_metrics)
    assert desc.knob_kinds["forward"] == "exact" and desc.knob_kinds["d_model"] == "quality"
    assert desc.knob_kinds["amp"] == "approx" and desc.knob_kinds["bench_steps"] == "budget"
    assert list(desc.variants) == ["baseline", "per_sequence", "wide"]
    for v, cfg in exp.configs.items():
        cost = desc.variants[v]
        assert cost.parameter_count == wl.parameter_count(cfg)
        assert cost.flops_per_token == pytest.approx(wl.flops_per_token(cfg))
        assert cost.cost_components == pytest.approx(wl.cost_components(cfg))
    assert desc.variants["wide"].parameter_count > desc.variants["baseline"].parameter_count


def test_saved_experiment_is_plain_data_and_resolves_again(sweep):
    exp, out = sweep
    saved = load_saved_experiment(out)
    assert saved.name == "lm-tiny" and saved.workload == "lm" and saved.baseline_name == "baseline"
    assert saved.variants == exp.variants and saved.gates == exp.gates and saved.quality_epochs == 1
    assert saved.configs["wide"] == exp.configs["wide"].to_dict()
    assert saved.overrides["wide"] == {"d_model": 64}
    again = resolve_saved(saved)  # what `sweep --resume` needs: a runnable, resolved experiment
    assert {v: c.to_dict() for v, c in again.configs.items()} == {v: c.to_dict() for v, c in exp.configs.items()}


@pytest.mark.slow
def test_report_renders_the_same_without_the_models(sweep, tmp_path):
    _, out = sweep
    here = write_report(out, tmp_path / "here").read_text()
    assert "**forward** (exact)" in here and "**d_model** (quality)" in here  # kinds from workload.json
    assert "### baseline vs wide" in here  # the cost model from workload.json
    assert "| Variant | epochs | best epoch | token_acc |" in here  # quality metrics, primary first
    script = REFUSE_IMPORTS + textwrap.dedent(f"""
        from pathlib import Path

        from harness.report import write_report

        write_report(Path({str(out)!r}), Path({str(tmp_path / "there")!r}))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "there" / "README.md").read_text() == here
    assert sorted(p.name for p in (tmp_path / "there").glob("*.png")) == \
        sorted(p.name for p in (tmp_path / "here").glob("*.png"))


def test_load_accepts_a_sweep_with_skipped_equivalence(sweep):
    _, out = sweep
    skipped = [r for r in load_records(out) if r.phase == "equivalence" and r.equivalence.get("passed") is None]
    assert [r.variant for r in skipped] == ["wide"] and skipped[0].env  # planned here, with this machine's env
    df = results.load(out)  # used to raise: "mixes records from 2 machines (['?/?/no-gpu', ...])"
    assert set(df["variant"]) == {"baseline", "per_sequence", "wide"}


def test_planned_records_carry_the_environment():
    exp = build("plan", TOY, {}, {"wider": {"dim": 4}}, repeats=1)
    _, skipped = plan(exp)
    assert [r.variant for r in skipped] == ["wider"]
    assert skipped[0].env["hostname"] and skipped[0].env["python"]


def test_load_ignores_records_that_never_ran(tmp_path):
    # Results written before planned records carried an env: such a record names no machine.
    for rep in range(2):
        append(tmp_path, speed_record("baseline", rep))
    never_ran = speed_record("wide", 0)
    append(tmp_path, Record(experiment="demo", variant="wide", phase="equivalence", repeat=0,
                            workload=never_ran.workload, preset="tiny", seed=0, config=never_ran.config,
                            status="ok", equivalence={"passed": None, "reason": "not checked", "compared": []}))
    assert len(results.load(tmp_path)) == 3
    append(tmp_path, speed_record("baseline", 2, env={**speed_record("x", 0).env, "hostname": "elsewhere"}))
    with pytest.raises(ValueError, match="mixes records from 2 machines"):
        results.load(tmp_path)


def test_regenerated_reports_do_not_mark_the_code_dirty(tmp_path: Path) -> None:
    from harness.results import code_dirty

    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    git("init", "-q")
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "README.md").write_text("old report\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("add", ".")
    git("commit", "-qm", "init")
    assert not code_dirty(tmp_path)
    (tmp_path / "reports" / "README.md").write_text("regenerated report\n")
    assert not code_dirty(tmp_path)
    (tmp_path / "code.py").write_text("x = 2\n")
    assert code_dirty(tmp_path)
