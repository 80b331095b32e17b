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
