"""The light path: a user's own model (examples/tagger.py) as a workload in a few lines, run
through `trainbench run`, a 3-variant sweep with equivalence, gates and a report, and from Python."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO

TAGGER = "examples.tagger:WORKLOAD"


def test_the_tagger_adapter_is_at_most_25_lines() -> None:
    source = (REPO / "examples" / "tagger.py").read_text()
    body = source.split('"""', 2)[2]
    lines = [line for line in body.splitlines() if line.strip()]
    assert len(lines) == 22 <= 25  # the number its docstring states


def test_counts_and_a_mean_loss_become_a_sum_over_non_padding_tags() -> None:
    from examples.tagger import WORKLOAD, pad, sentences
    from harness.registry import resolve

    cfg = resolve(TAGGER, {})
    batch = pad(sentences(4))
    counts = WORKLOAD.batch_counts(batch, cfg)
    real = sum(len(x) for x, _ in sentences(4))
    assert counts.samples == 4 and counts.loss_elements == real == counts.real_tokens
    assert counts.padded_tokens == batch[0].numel()
    torch.manual_seed(0)
    model = WORKLOAD.build_model(cfg)
    out = WORKLOAD.forward(model, batch, cfg)
    mean = torch.nn.functional.cross_entropy(out.flatten(0, 1), batch[1].flatten(), ignore_index=0)
    torch.testing.assert_close(WORKLOAD.loss(out, batch, cfg).total, mean * real)


@pytest.mark.slow
def test_trainbench_run_profiles_it_in_fresh_processes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", TAGGER, "--repeats", "1", "--out",
                           str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from harness.analysis.summary import latest_attempts
    from harness.results import load_records

    # one repeat; on a busy machine a contended run is run again: the latest attempt is the measurement
    (rec,) = latest_attempts(r for r in load_records(tmp_path / "r") if r.phase == "speed")
    assert rec.status == "ok" and rec.metrics["samples_per_s"] > 0 and rec.metrics["forward_calls_per_step"] == 1
    assert rec.metrics["tokens_per_s"] > 0  # token counts inferred from the integer (batch, length) input


@pytest.mark.slow
def test_a_three_variant_sweep_from_python_with_equivalence_gates_and_report(tmp_path: Path) -> None:
    import trainbench
    from examples.tagger import WORKLOAD

    df = trainbench.sweep(
        WORKLOAD,  # the object: found again as examples.tagger:WORKLOAD by each fresh process
        {"accum": {"batch_size": 8, "grad_accum": 2},  # same effective batch: exact only if the mean is undone
         "duplicate": {"duplicate_forward": True},
         "fast_lr": {"lr": 1e-2}},
        repeats=1, quality_epochs=1, target_half_width_pct=0.0, out=tmp_path / "r", report=tmp_path / "rep",
        gates=["accum.equivalent", "duplicate.forward_calls_per_step == 2", "baseline.forward_calls_per_step == 1",
               "fast_lr.eval_loss_delta <= 1"])
    assert df.index[0] == "baseline" and set(df.index) == {"baseline", "accum", "duplicate", "fast_lr"}
    assert df.at["accum", "equivalent"] == True  # noqa: E712 (a numpy bool)
    assert [g.passed for g in df.attrs["gates"]] == [True, True, True, True], df.attrs["gates"]
    assert (tmp_path / "rep" / "README.md").read_text().startswith("# sweep")
    assert df.at["fast_lr", "eval_loss"] > 0


def test_a_workload_object_defined_in_main_is_refused_with_the_fix() -> None:
    import trainbench
    from harness.simple import SimpleWorkload

    orphan = SimpleWorkload("orphan", model=lambda: torch.nn.Linear(2, 2), train=[],
                            loss=lambda out, batch: out.sum())
    with pytest.raises(ValueError, match="not an attribute of any importable module.*move it into a module file"):
        trainbench.run(orphan)


@pytest.mark.parametrize("kwargs, message", [
    ({"reduction": "avg"}, "reduction='avg'; use 'mean'"),
    ({"loss": "ce"}, "loss must be callable"),
    ({"eval_fraction": 1.5}, "eval_fraction=1.5; use a value in"),
])
def test_bad_light_path_arguments_name_the_fix(kwargs: dict, message: str) -> None:
    from harness.simple import SimpleWorkload

    args = {"model": lambda: torch.nn.Linear(2, 2), "train": [], "loss": lambda out, batch: out.sum(), **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        SimpleWorkload("w", **args)


def test_a_loss_that_is_not_a_scalar_names_the_fix() -> None:
    from examples.tagger import WORKLOAD, pad, sentences
    from harness.registry import resolve

    cfg = resolve(TAGGER, {})
    bad = type(WORKLOAD).__new__(type(WORKLOAD))
    bad.__dict__.update(WORKLOAD.__dict__)
    bad._loss = lambda out, batch: torch.nn.functional.cross_entropy(out.flatten(0, 1), batch[1].flatten(),
                                                                     reduction="none")
    batch = pad(sentences(2))
    with pytest.raises(TypeError, match=r"loss\(\) returned \(\d+,\); return a scalar tensor"):
        bad.loss(WORKLOAD.forward(WORKLOAD.build_model(cfg), batch, cfg), batch, cfg)
