"""The cited peak-FLOPs table and MFU (used by the trainer and the cost table)."""

import pytest

from harness import peaks


def test_peak_table_and_mfu():
    assert peaks.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.0
    assert peaks.peak_tflops("NVIDIA H100 PCIe", "bf16")[0] == 756.0
    assert "A100" in peaks.peak_tflops("NVIDIA A100-SXM4-40GB", "tf32")[1]
    assert peaks.peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 on Volta
    assert peaks.peak_tflops(None, "fp32") is None and peaks.peak_tflops("Some CPU", "fp32") is None
    assert peaks.precision({"amp": "off", "tf32": True}) == "tf32"
    assert peaks.mfu(989e12 / 2, "NVIDIA H100 80GB HBM3", {"amp": "bf16"}) == pytest.approx(0.5)
    assert peaks.mfu(1e12, None, {"amp": "off"}) is None
