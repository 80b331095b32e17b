"""The registry checks a workload before anything runs: each mistake is one line that names the fix."""

from __future__ import annotations

from typing import Any

import pytest

from harness.knobs import Knob
from harness.registry import _check
from harness.workload import Workload
from tests.toy import ToyWorkload


class OnlyAbstract(Workload):
    name = "bare"
    description = "declares nothing but its name"


class ClashingKnob(ToyWorkload):
    knobs = (*ToyWorkload.knobs, Knob(name="max_length", type=int, default=10, kind="quality", doc="clashes"))


class WrongDefaultPreset(ToyWorkload):
    default_preset = "huge"


class BareTensorLoss(ToyWorkload):
    def loss(self, outputs: Any, batch: Any, cfg: Any) -> Any:
        return ((outputs - batch[1]) ** 2).sum()


@pytest.mark.parametrize("obj, message", [
    (OnlyAbstract, "does not implement batch_counts, build_datasets, build_model, evaluate, forward, loss; "
                   "define them"),
    (ClashingKnob, "declares knob(s) max_length, which every workload already has (generic knobs); rename it"),
    (WrongDefaultPreset, "default_preset 'huge' is not one of its presets (tiny)"),
    ("not a workload", "is a str, not a harness.workload.Workload"),
])
def test_a_broken_workload_is_refused_in_one_line(obj: Any, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        _check(obj, "mine:WORKLOAD")
    text = str(exc.value)
    assert message in text and "\n" not in text and text.startswith("workload 'mine:WORKLOAD'")


def test_a_missing_class_attribute_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    wl = ToyWorkload()
    monkeypatch.setattr(ToyWorkload, "default_preset", None)
    with pytest.raises(ValueError, match="has no default_preset \\(str\\); set the class attribute default_preset"):
        _check(wl, "mine:WORKLOAD")


def test_the_cli_refuses_it_with_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    assert main(["run", "tests.test_registry_checks:ClashingKnob", "--repeats", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: workload") and "max_length" in err[0]


def test_a_loss_that_is_not_a_loss_result_names_the_fix() -> None:
    from harness import engine
    from harness.config import resolve

    cfg = resolve(BareTensorLoss(), {}, name="tests.test_registry_checks:BareTensorLoss")
    with pytest.raises(TypeError, match=r"loss\(\) returned a Tensor; return harness.workload.LossResult\(total="):
        engine.run(cfg)


def test_a_wrong_loss_is_refused_before_anything_runs(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    from harness.cli import main

    out = tmp_path / "run"
    assert main(["run", "tests.test_registry_checks:BareTensorLoss", "--repeats", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss() returned a Tensor" in err[0] and "LossResult(total=" in err[0]
    assert not out.exists()  # refused in the parent: no run started, nothing written


class VectorLoss(ToyWorkload):
    def loss(self, outputs: Any, batch: Any, cfg: Any) -> Any:
        from harness.workload import LossResult

        return LossResult(total=(outputs - batch[1]) ** 2)  # per element, not summed


def test_a_loss_total_that_is_not_a_scalar_is_named() -> None:
    from harness.config import resolve
    from harness.trainer import check_contract

    wl = VectorLoss()
    cfg = resolve(wl, {}, name="tests.test_registry_checks:VectorLoss")
    train, _ = wl.build_datasets(cfg)
    with pytest.raises(TypeError, match=r"LossResult\(total=<Tensor of shape \(2,\)>\); total must be a scalar"):
        check_contract(cfg, train)
