"""Predicted vs measured cost: the seed-004 table from a workload's analytic FLOP model, as described in
`workload.json`."""

import math

import pytest

from harness.analysis import cost, summarize
from harness.description import describe
from harness.registry import resolve
from tests.fixtures.synthetic import speed_record

TOY = "tests.fixtures.toy_workload:WORKLOAD"


def toy_params(vocab: int, d: int, layers: int) -> int:
    return vocab * d + layers * (d * d + d) + d * vocab + vocab  # embed + layers + head


@pytest.fixture(scope="module")
def configs():
    small = resolve(TOY, {"preset": "tiny"})                        # V=64, d=16, L=1, T=12
    large = resolve(TOY, {"preset": "tiny", "d_model": 64, "n_layers": 2})
    return small, large


def costs(small, large):
    desc = describe(small.get_workload(), {"small": small, "large": large})
    return desc.variants["small"], desc.variants["large"]


def test_formula_rows_hand_computed(configs):
    small, large = configs
    fpt_small = 6 * toy_params(64, 16, 1) + 12 * 1 * 16 * 12       # 6N + 12·L·(H·Q)·T = 16,608
    fpt_large = 6 * toy_params(64, 64, 2) + 12 * 2 * 64 * 12       # 117,888
    small_cost, large_cost = costs(small, large)
    assert small_cost.flops_per_token == fpt_small == 16_608
    assert small_cost.parameter_count == toy_params(64, 16, 1)
    table = cost.cost_table(small_cost, large_cost, configs=(small.to_dict(), large.to_dict()),
                            measured=({"tokens_per_s": 1000.0}, {"tokens_per_s": 200.0}))
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
    table = cost.cost_table(*costs(small, large), measured=measured)
    row = table[table["Component"] == "FLOPs/token, counted"].iloc[0]
    assert (row["Small"], row["Large"], row["Ratio"]) == ("20k", "120k", "6x")


def test_cost_tables_from_a_summary(configs):
    small, large = configs
    records = []
    for rep in range(2):
        records.append(speed_record("baseline", rep, config=small.to_dict(), workload=TOY))
        records.append(speed_record("wide", rep, speedup=0.25, config=large.to_dict(), workload=TOY))
        records.append(speed_record("bs8", rep, speedup=1.5, config=small.replace(batch_size=8).to_dict(),
                                    workload=TOY))
    s = summarize(records, "baseline")
    assert cost.cost_tables(s, None) == []  # no workload.json: no analytic model to consult
    desc = describe(small.get_workload(), {"baseline": small, "wide": large, "bs8": small.replace(batch_size=8)})
    tables = cost.cost_tables(s, desc)
    assert [title for title, _ in tables] == ["baseline vs wide"]  # bs8 has the same FLOPs/token
    table = tables[0][1]
    assert table.attrs["measured_ratio"] == pytest.approx(4.0, rel=0.05)
    assert math.isfinite(table.attrs["predicted_ratio"])
