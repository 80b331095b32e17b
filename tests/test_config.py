"""Bad input: one line naming the key, the value and what is allowed; exit 2; nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.cli import main
from harness.config import parse_overrides
from harness.experiment import load_experiment
from harness.knobs import GENERIC_BY_NAME
from harness.registry import resolve


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"batch_sise": "4"}, "unknown knob 'batch_sise'"),
    ({"batch_size": "four"}, "knob 'batch_size': bad value 'four'; allowed: int in [1, inf]"),
    ({"batch_size": "0"}, "knob 'batch_size': bad value '0'"),
    ({"amp": "fp8"}, "allowed: off | bf16 | fp16"),
    ({"lr": "nan"}, "knob 'lr': bad value 'nan'"),
    ({"pin_memory": "maybe"}, "allowed: true | false"),
    ({"forward": "sideways"}, "allowed: per_sequence | batched"),
    ({"preset": "huge"}, "knob 'preset': bad value 'huge'"),
    ({"n_heads": "3"}, "knob 'n_heads': bad value 3: it must divide d_model"),
])
def test_bad_knob_values_name_key_value_and_allowed(overrides, fragment) -> None:
    with pytest.raises(ValueError) as info:
        resolve("lm", {"preset": "tiny", **overrides})
    assert fragment in str(info.value)
    assert "\n" not in str(info.value)


def test_unknown_knob_suggests_the_close_one() -> None:
    with pytest.raises(ValueError, match="did you mean 'batch_size'"):
        resolve("lm", {"batch_sise": 4})


def test_unknown_workload_lists_the_available_ones() -> None:
    with pytest.raises(ValueError, match="unknown workload 'gpt5'; available: .*lm"):
        resolve("gpt5", {})


def test_knob_not_supported_by_workload() -> None:
    with pytest.raises(ValueError, match="knob 'max_length' is not supported by workload 'toy'"):
        resolve("tests.toy:WORKLOAD", {"max_length": 64})


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_gpu() -> None:
    with pytest.raises(ValueError, match="knob 'device': bad value 'cuda': no CUDA GPU"):
        resolve("lm", {"device": "cuda"})


def test_override_without_equals() -> None:
    with pytest.raises(ValueError, match="override 'batch_size' is not key=value"):
        parse_overrides(["batch_size"])


def test_layers_resolve_in_order() -> None:
    cfg = resolve("lm", {"preset": "tiny"}, {"batch_size": 3})
    assert cfg.batch_size == 3 and cfg.d_model == 32 and cfg.lr == GENERIC_BY_NAME["lr"].default
    assert cfg.replace(batch_size=5).batch_size == 5
    assert cfg.diff(cfg.replace(amp="bf16")) == {"amp": ("off", "bf16")}


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.toml"
    path.write_text(text)
    return path


def test_malformed_toml(tmp_path) -> None:
    with pytest.raises(ValueError, match="malformed TOML in .*exp.toml"):
        load_experiment(_toml(tmp_path, "workload = 'lm'\n[baseline\n"))


def test_variant_that_overrides_nothing(tmp_path) -> None:
    text = "workload = 'lm'\n[baseline]\npreset = 'tiny'\n[variants.same]\npreset = 'tiny'\n"
    with pytest.raises(ValueError, match="variant 'same' overrides nothing"):
        load_experiment(_toml(tmp_path, text))
    with pytest.raises(ValueError, match="variant 'empty' overrides nothing"):
        load_experiment(_toml(tmp_path, "workload = 'lm'\n[variants.empty]\n"))


def test_bad_knob_inside_a_variant_names_the_file(tmp_path) -> None:
    text = "workload = 'lm'\n[variants.fast]\namp = 'fp8'\n"
    with pytest.raises(ValueError, match="exp.toml: knob 'amp': bad value 'fp8'"):
        load_experiment(_toml(tmp_path, text))


@pytest.mark.parametrize("argv", [
    ["run", "lm", "preset=tiny", "batch_size=-1"],
    ["run", "nosuch", "preset=tiny"],
    ["run", "lm", "preset=tiny", "colour=blue"],
    ["sweep", "missing.toml"],
])
def test_cli_usage_errors_exit_2_and_write_nothing(argv, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and len(err.splitlines()) == 1
    assert not out.exists()


def test_cli_error_end_to_end_in_a_subprocess(tmp_path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "harness.cli", "run", "lm", "amp=fp8", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: knob 'amp': bad value 'fp8'; allowed: off | bf16 | fp16"
    assert not out.exists()


def test_pointless_settings_warn_but_run() -> None:
    from harness.config import runtime_warnings

    cfg = resolve("lm", {"preset": "tiny", "pin_memory": True, "amp": "fp16", "num_workers": 64})
    warnings = runtime_warnings(cfg, torch.device("cpu"))
    assert any("pin_memory" in w for w in warnings)
    assert any("amp=fp16 on a CPU" in w for w in warnings)
    assert any("num_workers=64 exceeds" in w for w in warnings)


BUNDLED = sorted((Path(__file__).resolve().parent.parent / "bench" / "experiments").rglob("*.toml"))


@pytest.mark.parametrize("path", BUNDLED, ids=lambda p: p.name)
def test_every_bundled_experiment_loads_and_its_gates_parse(path: Path) -> None:
    from harness.cli.common import validate_gates
    from harness.experiment import load_experiments

    for exp in load_experiments(path):
        assert len(exp.variants) >= 2
        validate_gates(exp)
