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
    assert len(lines) == 23 <= 25  # the number its docstring states


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


def test_a_workload_object_made_inside_a_function_is_refused_with_the_fix() -> None:
    import trainbench
    from harness.simple import SimpleWorkload

    orphan = SimpleWorkload("orphan", model=lambda: torch.nn.Linear(2, 2), train=[],
                            loss=lambda out, batch: out.sum())
    with pytest.raises(ValueError,
                       match="not an attribute of any importable module.*assign it at the top level of a module"):
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


# --- the light path grows with the user: own knobs, factories with the config, optimizer and schedule,
# --- ignore_index, a workload in a script ---------------------------------------------------------

SCRIPT = str(REPO / "examples" / "mlp_script.py")


def _linear(**kwargs):
    from harness.simple import SimpleWorkload

    return SimpleWorkload("lin", model=lambda cfg: torch.nn.Linear(2, 2), train=lambda cfg: [],
                          loss=lambda out, batch: out.sum(), **kwargs)


def test_own_knobs_are_typed_by_their_defaults_validated_and_reach_the_model() -> None:
    from harness.config import resolve
    from harness.knobs import Knob

    wl = _linear(knobs={"width": 32, "dropout": 0.1, "cell": "gru", "tied": False,
                        "heads": Knob(name="heads", type=int, default=2, kind="exact", doc="heads", choices=(1, 2, 4))})
    cfg = resolve(wl, {"width": "64", "dropout": "0.5", "tied": "true", "heads": "4"})
    assert (cfg.width, cfg.dropout, cfg.cell, cfg.tied, cfg.heads) == (64, 0.5, "gru", True, 4)
    assert {k.name: k.kind for k in wl.knobs} == {"width": "quality", "dropout": "quality", "cell": "quality",
                                                  "tied": "quality", "heads": "exact"}
    with pytest.raises(ValueError, match="knob 'width': bad value 'wide'"):
        resolve(wl, {"width": "wide"})
    with pytest.raises(ValueError, match="knob 'heads': bad value"):
        resolve(wl, {"heads": "3"})
    from harness.registry import resolve as by_name

    tagger = by_name(TAGGER, {"width": "48"})
    assert tagger.get_workload().build_model(tagger).gru.hidden_size == 48


@pytest.mark.parametrize("knobs, message", [
    ({"lr": 0.1}, "knob\\(s\\) lr already exist for every workload; read cfg.lr"),
    ({"width": [32, 64]}, "knob 'width' default \\[32, 64\\] is a list; give a bool, int, float or str default"),
    ({"2wide": 3}, "knob name '2wide'; use an identifier"),
])
def test_bad_own_knobs_name_the_fix(knobs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _linear(knobs=knobs)


def test_every_factory_gets_the_config_and_one_that_cannot_says_how_to_write_it() -> None:
    from harness.config import resolve
    from harness.simple import SimpleWorkload

    seen = []
    wl = SimpleWorkload("lin", model=lambda cfg: seen.append(cfg.seed) or torch.nn.Linear(2, 2),
                        train=lambda cfg: [cfg.batch_size], loss=lambda out, batch: out.sum(), knobs={"k": 1})
    cfg = resolve(wl, {"seed": "7", "batch_size": "5"})
    assert isinstance(wl.build_model(cfg), torch.nn.Linear) and seen == [7]
    assert len(wl.build_datasets(cfg)[0]) + len(wl.build_datasets(cfg)[1]) == 1
    old_style = SimpleWorkload("old", model=lambda: torch.nn.Linear(2, 2), train=[], loss=lambda out, batch: out.sum())
    with pytest.raises(TypeError, match=r"model is called as model\(cfg\).*write model=lambda cfg: \.\.\."):
        old_style.build_model(resolve(old_style, {}))
    shared = torch.nn.Linear(2, 2)  # a ready module: copied per build, so two runs never share trained weights
    ready = SimpleWorkload("ready", model=shared, train=[], loss=lambda out, batch: out.sum())
    built = ready.build_model(resolve(ready, {}))
    assert built is not shared and torch.equal(built.weight, shared.weight)


def test_own_optimizer_and_schedule_drive_training_and_the_knobs_they_replace_refuse_a_value() -> None:
    from harness.registry import get, resolve
    from harness.trainer import Trainer

    path = f"{SCRIPT}:WORKLOAD"
    cfg = resolve(path, {"lr": "0.05", "bench_steps": "4", "bench_warmup_steps": "1"})
    trainer = Trainer(cfg)
    assert type(trainer.opt) is torch.optim.SGD and trainer.opt.param_groups[0]["nesterov"]
    assert isinstance(trainer.sched, torch.optim.lr_scheduler.CosineAnnealingLR) and trainer.plateau is None
    assert trainer.opt.param_groups[0]["lr"] == 0.05
    trainer.run_steps(3)
    assert trainer.opt.param_groups[0]["lr"] < 0.05  # the workload's cosine schedule stepped per optimizer step
    for knob, value in [("optimizer", "adamw"), ("weight_decay", "0.1"), ("scheduler", "cosine"),
                        ("lr_warmup_steps", "3")]:
        with pytest.raises(ValueError, match=f"knob '{knob}' does not act on workload 'mlp'.*remove '{knob}="):
            resolve(path, {knob: value})
    fixed = _linear(optimizer=lambda model, cfg: torch.optim.SGD(model.parameters(), lr=0.5))
    from harness.config import resolve as resolve_wl

    with pytest.raises(ValueError, match="knob 'lr'=0.01 does not reach workload 'lin''s optimizer .its lr: 0.5.; "
                                         "pass lr=cfg.lr"):
        fixed.build_optimizer(torch.nn.Linear(2, 2), resolve_wl(fixed, {"lr": "0.01"}))
    assert get(path).build_optimizer(torch.nn.Linear(2, 2), resolve(path, {})) is not None


def test_ignore_index_leaves_unlabelled_targets_out_of_the_mean_apart_from_pad_id() -> None:
    from harness.registry import get, resolve

    path = f"{SCRIPT}:WORKLOAD"
    wl, cfg = get(path), resolve(path, {})
    x = torch.randn(6, 16)
    y = torch.tensor([0, -1, 2, 3, -1, 1])
    out = torch.randn(6, 4)
    counts = wl.batch_counts((x, y), cfg)
    assert counts.samples == 6 and counts.loss_elements == 4
    mean = torch.nn.functional.cross_entropy(out, y, ignore_index=-1)
    torch.testing.assert_close(wl.loss(out, (x, y), cfg).total, mean * 4)
    tagger = get(TAGGER)  # no ignore_index: the pad id marks the targets' padding too
    assert tagger.ignore_index == tagger.pad_id == 0


def test_a_script_workload_is_found_by_its_file_and_a_notebook_one_is_refused(monkeypatch) -> None:
    import types

    from harness.api import workload_path
    from harness.registry import get

    wl = get(f"{SCRIPT}:WORKLOAD")
    assert wl.name == "mlp" and get(f"{SCRIPT}:WORKLOAD") is wl  # imported once
    script = types.ModuleType("__main__")
    script.__file__ = SCRIPT
    script.W = wl
    monkeypatch.setitem(sys.modules, "__main__", script)
    stray = _linear()
    script.W2 = stray
    monkeypatch.chdir(REPO)  # runs start here: the script is recorded by its path from here, no machine path
    assert workload_path(stray) == "examples/mlp_script.py:W2"
    assert get("examples/mlp_script.py:W2") is stray  # the running script itself, not a second import of its file
    notebook = types.ModuleType("__main__")
    notebook.W = stray
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with pytest.raises(ValueError, match="defined in a notebook or an interactive session.*move it into a module file"):
        workload_path(stray)
    with pytest.raises(ValueError, match="workload script 'nowhere.py' does not exist"):
        get("nowhere.py:W")


def test_a_script_that_starts_a_sweep_while_imported_is_stopped_with_the_fix(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text("import torch\nimport trainbench\n"
                      "W = trainbench.SimpleWorkload('u', model=lambda cfg: torch.nn.Linear(2, 2),"
                      " train=lambda cfg: [], loss=lambda out, batch: out.sum())\ntrainbench.run(W)\n")
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", f"{script}:W", "--repeats", "1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2, proc.stderr[-1500:]
    assert "put the call under `if __name__ == \"__main__\":`" in proc.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_the_script_sweeps_its_own_knob_through_trainbench_run_in_fresh_processes(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "examples/mlp_script.py:WORKLOAD",
                           "depth=1,3", "lr=0.05", "--repeats", "1", "--out", str(tmp_path / "r")],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from harness.analysis.summary import latest_attempts
    from harness.results import load_records

    recs = latest_attempts(r for r in load_records(tmp_path / "r") if r.phase == "speed")
    assert sorted(r.config["depth"] for r in recs) == [1, 3] and all(r.status == "ok" for r in recs)
    assert all(r.config["width"] == 64 and r.config["lr"] == 0.05 for r in recs)


def test_the_trainbench_command_finds_a_module_in_the_working_directory(tmp_path: Path, monkeypatch,
                                                                         capsys) -> None:
    from harness.cli import main

    (tmp_path / "mymodels_cwd.py").write_text(
        "import torch\nfrom trainbench import SimpleWorkload\n"
        "W = SimpleWorkload('mine', model=lambda cfg: torch.nn.Linear(2, 2), train=lambda cfg: [],"
        " loss=lambda out, batch: out.sum(), knobs={'width': 8})\n")
    monkeypatch.chdir(tmp_path)  # an installed console script has neither '' nor the working directory on sys.path
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    assert main(["list", "mymodels_cwd:W"]) == 0
    assert "| width | int |" in capsys.readouterr().out
