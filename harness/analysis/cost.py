"""Predicted vs measured cost: seed 004's "Component | Small | Large | Ratio" table, checked.

A workload that declares an analytic model (`Workload.flops_per_token`, e.g. 6N + 12·L·H·Q·T, and
`Workload.cost_components`, e.g. embedding params, layers) gets, for two variants, their size components,
parameter counts, predicted FLOPs per token, FLOPs per token from the counter, measured throughput, and
the predicted cost ratio beside the measured one. The model's numbers come from the results directory's
`workload.json` (`harness.description`), never from the workload's code. MFU uses the cited peak table
of `harness.peaks`; "n/a" elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.peaks import PEAK_TFLOPS, mfu, peak_tflops, precision

if TYPE_CHECKING:
    from harness.description import VariantCost, WorkloadDescription

__all__ = ["PEAK_TFLOPS", "cost_table", "cost_tables", "mfu", "peak_tflops", "precision"]

def _si(x: float | None) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    for factor, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:.3g}{suffix}"
    return f"{x:.3g}"


def _ratio(a: float | None, b: float | None) -> float:
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or a == 0:
        return math.nan
    return b / a


def _fmt_ratio(r: float) -> str:
    return "n/a" if not math.isfinite(r) else f"{r:.3g}x"


def cost_table(small: VariantCost, large: VariantCost, *,
               configs: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
               measured: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
               labels: tuple[str, str] = ("Small", "Large"), gpu_name: str | None = None) -> pd.DataFrame | None:
    """The seed-004 table for two variants of a workload with an analytic FLOP model; None without one.

    `configs` are the two runs' knobs (their precision picks the MFU peak); `measured` holds each side's
    summary row / metrics (tokens_per_s, flops_per_step, real_tokens_per_step). Ratio is Large / Small
    in every row; the last rows set the predicted cost ratio beside the measured.
    """
    fpt = (small.flops_per_token, large.flops_per_token)
    if fpt[0] is None or fpt[1] is None:
        return None
    rows: list[tuple[str, str, str, str]] = []
    comps = (small.cost_components, large.cost_components)
    for name in dict.fromkeys([*comps[0], *comps[1]]):
        a, b = comps[0].get(name), comps[1].get(name)
        rows.append((name, _si(a), _si(b), _fmt_ratio(_ratio(a, b))))
    params = (small.parameter_count, large.parameter_count)
    rows.append(("Parameters (N)", _si(params[0]), _si(params[1]), _fmt_ratio(_ratio(*params))))
    rows.append(("FLOPs/token, formula (6N + 12·L·H·Q·T)", _si(fpt[0]), _si(fpt[1]), _fmt_ratio(_ratio(*fpt))))

    def get(side: int, key: str) -> float | None:
        value = measured[side].get(key)
        try:
            value = float(value)
        except (TypeError, ValueError):
            return None
        return value if math.isfinite(value) else None

    counted = []
    for side in (0, 1):
        flops, tokens = get(side, "flops_per_step"), get(side, "real_tokens_per_step")
        counted.append(flops / tokens if flops and tokens else None)
    rows.append(("FLOPs/token, counted", _si(counted[0]), _si(counted[1]), _fmt_ratio(_ratio(*counted))))
    tps = (get(0, "tokens_per_s"), get(1, "tokens_per_s"))
    rows.append(("Throughput, measured (tokens/s)", _si(tps[0]), _si(tps[1]), _fmt_ratio(_ratio(*tps))))
    predicted, observed = _ratio(*fpt), _ratio(tps[1], tps[0])  # cost per token = 1 / throughput
    rows.append(("**Cost per token: predicted (FLOPs)**", "", "", f"**{_fmt_ratio(predicted)}**"))
    rows.append(("**Cost per token: measured (1 / tokens/s)**", "", "", f"**{_fmt_ratio(observed)}**"))
    mfus = []
    for side in (0, 1):
        achieved = None if tps[side] is None else tps[side] * fpt[side]
        value = mfu(achieved, gpu_name, configs[side])
        mfus.append("n/a" if value is None else f"{value:.1%}")
    peak = peak_tflops(gpu_name, precision(configs[0]))
    rows.append(("MFU (formula FLOPs / peak)", mfus[0], mfus[1], peak[1] if peak else "no peak known for this device"))
    df = pd.DataFrame(rows, columns=["Component", labels[0], labels[1], "Ratio"])
    df.attrs.update(predicted_ratio=predicted, measured_ratio=observed)
    return df


def cost_tables(summary: pd.DataFrame, workload: WorkloadDescription | None) -> list[tuple[str, pd.DataFrame]]:
    """A cost table for each variant whose analytic FLOPs/token differ from the baseline's.

    `workload` is the results directory's description (`load_description`); without one, or for
    variants it does not describe, there is no analytic model to consult and no table.
    """
    if workload is None:
        return []
    baseline = summary.attrs.get("baseline", summary.index[0])
    costs = workload.variants
    gpu = (summary.at[baseline, "env"] or {}).get("gpu_name") if "env" in summary.columns else None
    out = []
    for v in summary.index:
        if v == baseline or v not in costs or baseline not in costs:
            continue
        fb, fv = costs[baseline].flops_per_token, costs[v].flops_per_token
        if fb is None or fv is None or math.isclose(fb, fv):
            continue
        pair = [baseline, v]
        if fv < fb:
            pair.reverse()  # smaller model on the left, as in seed 004
        table = cost_table(costs[pair[0]], costs[pair[1]], labels=(pair[0], pair[1]), gpu_name=gpu,
                           configs=(summary.at[pair[0], "config"], summary.at[pair[1], "config"]),
                           measured=(summary.loc[pair[0]].to_dict(), summary.loc[pair[1]].to_dict()))
        if table is not None:
            out.append((f"{pair[0]} vs {pair[1]}", table))
    return out
