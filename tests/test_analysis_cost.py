"""Predicted vs measured cost: the seed-004 table from a workload's analytic FLOP model, and MFU."""

import math

import pytest

from harness.analysis import cost, summarize
from harness.config import resolve
from tests.fixtures.synthetic import speed_record

TOY = "tests.fixtures.toy_workload:WORKLOAD"


def toy_params(vocab: int, d: int, layers: int) -> int:
    return vocab * d + layers * (d * d + d) + d * vocab + vocab  # embed + layers + head


@pytest.fixture(scope="module")
def configs():
    small = resolve(TOY, {"preset": "tiny"})                        # V=64, d=16, L=1, T=12
    large = resolve(TOY, {"preset": "tiny", "d_model": 64, "n_layers": 2})
    return small, large


def test_formula_rows_hand_computed(configs):
    small, large = configs
    wl = small.get_workload()
    fpt_small = 6 * toy_params(64, 16, 1) + 12 * 1 * 16 * 12       # 6N + 12·L·(H·Q)·T = 16,608
    fpt_large = 6 * toy_params(64, 64, 2) + 12 * 2 * 64 * 12       # 117,888
    assert wl.flops_per_token(small) == fpt_small == 16_608
    table = cost.cost_table(wl, small, large, measured=({"tokens_per_s": 1000.0}, {"tokens_per_s": 200.0}))
    rows = dict(zip(table["Component"], table["Ratio"], strict=True))
    assert list(table.columns) == ["Component", "Small", "Large", "Ratio"]
    assert rows["Embedding params"] == "4x" and rows["Layers"] == "2x" and rows["Hidden dimension"] == "4x"
    assert table.attrs["predicted_ratio"] == pytest.approx(fpt_large / fpt_small)
    assert table.attrs["measured_ratio"] == pytest.approx(5.0)
    assert rows["**Cost per token: measured (1 / tokens/s)**"] == "**5x**"
    mfu_row = table[table["Component"].str.startswith("MFU")].iloc[0]
    assert mfu_row["Small"] == "n/a" and "no peak known" in mfu_row["Ratio"]  # a CPU: no cited peak


def test_counted_flops_beside_formula(configs):
    small, large = configs
    measured = ({"flops_per_step": 2e6, "real_tokens_per_step": 100.0}, {"flops_per_step": 1.2e7,
                                                                         "real_tokens_per_step": 100.0})
    table = cost.cost_table(small.get_workload(), small, large, measured=measured)
    row = table[table["Component"] == "FLOPs/token, counted"].iloc[0]
    assert (row["Small"], row["Large"], row["Ratio"]) == ("20k", "120k", "6x")


def test_peak_table_and_mfu():
    assert cost.peak_tflops("NVIDIA H100 80GB HBM3", "bf16")[0] == 989.0
    assert cost.peak_tflops("NVIDIA H100 PCIe", "bf16")[0] == 756.0
    assert "A100" in cost.peak_tflops("NVIDIA A100-SXM4-40GB", "tf32")[1]
    assert cost.peak_tflops("Tesla V100-SXM2-16GB", "bf16") is None  # no bf16 on Volta
    assert cost.peak_tflops(None, "fp32") is None and cost.peak_tflops("Some CPU", "fp32") is None
    assert cost.precision({"amp": "off", "tf32": True}) == "tf32"
    assert cost.mfu(989e12 / 2, "NVIDIA H100 80GB HBM3", {"amp": "bf16"}) == pytest.approx(0.5)
    assert cost.mfu(1e12, None, {"amp": "off"}) is None


def test_cost_tables_from_a_summary(configs):
    small, large = configs
    records = []
    for rep in range(2):
        records.append(speed_record("baseline", rep, config=small.to_dict(), workload=TOY))
        records.append(speed_record("wide", rep, speedup=0.25, config=large.to_dict(), workload=TOY))
        records.append(speed_record("bs8", rep, speedup=1.5, config=small.replace(batch_size=8).to_dict(),
                                    workload=TOY))
    s = summarize(records, "baseline")
    tables = cost.cost_tables(s)
    assert [title for title, _ in tables] == ["baseline vs wide"]  # bs8 has the same FLOPs/token
    table = tables[0][1]
    assert table.attrs["measured_ratio"] == pytest.approx(4.0, rel=0.05)
    assert math.isfinite(table.attrs["predicted_ratio"])
