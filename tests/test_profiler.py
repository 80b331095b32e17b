"""`trainbench profile`: traces written, top-operator table, CPU-only statement, advisor findings."""

import json

import pytest
import torch

from harness.profiler import CHROME_TRACE, TENSORBOARD_DIR, profile
from harness.registry import resolve

TOY = "tests.fixtures.toy_workload:WORKLOAD"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only path")
def test_profile_cpu_writes_traces_and_reports(tmp_path):
    cfg = resolve(TOY, {"preset": "tiny", "duplicate_forward": True, "grad_accum": 2})
    text = profile(cfg, tmp_path, steps=2)
    trace = json.loads((tmp_path / CHROME_TRACE).read_text())
    names = {e.get("name", "") for e in trace["traceEvents"]}
    assert "aten::mm" in names or "aten::addmm" in names
    assert any(n.startswith("enumerate(DataLoader)") for n in names)  # the data wait is visible
    assert list((tmp_path / TENSORBOARD_DIR).glob("*.pt.trace.json"))
    assert "CPU only: no kernel launches counted" in text
    assert "| operator | calls/step | self CPU ms/step | share |" in text
    assert "forward calls per micro-step: 2" in text  # duplicate forward: 2 calls in each of 2 micro-steps
    assert "- duplicate_forward:" in text
    assert "- padding_waste:" in text  # the toy pads variable-length sequences (~1.5x)


def test_profile_rejects_zero_steps(tmp_path):
    with pytest.raises(ValueError, match="steps=0"):
        profile(resolve(TOY, {"preset": "tiny"}), tmp_path, steps=0)


def test_kineto_usdt_lines_are_dropped_and_other_stderr_kept(capfd):
    import os

    from harness.profiler import _without_usdt_lines

    with _without_usdt_lines():
        os.write(2, b"USDT:2026 SyncActivityProfilerHandler.cpp:52] profiler_start\n")
        os.write(2, b"a real warning\n")
    err = capfd.readouterr().err
    assert "USDT" not in err and "a real warning" in err
