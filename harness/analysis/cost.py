"""Predicted vs measured cost: seed 004's "Component | Small | Large | Ratio" table, checked.

A workload that declares an analytic model (`Workload.flops_per_token`, e.g. 6N + 12·L·H·Q·T, and
`Workload.cost_components`, e.g. embedding params, layers) gets, for two configs, its size components,
parameter counts, predicted FLOPs per token, FLOPs per token from the counter, measured throughput, and
the predicted cost ratio beside the measured one. MFU uses a peak table with sources; "n/a" elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from harness.workload import Workload

# Dense (no structured sparsity) peak TFLOP/s by precision. Order matters: first substring match wins.
PEAK_TFLOPS: tuple[tuple[str, Mapping[str, float], str], ...] = (
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.0},
     "NVIDIA H100 Tensor Core GPU datasheet (PCIe; sparsity figures halved)"),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "tf32": 418.0, "fp32": 60.0},
     "NVIDIA H100 Tensor Core GPU datasheet (NVL; sparsity figures halved)"),
    ("H100", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
     "NVIDIA H100 Tensor Core GPU datasheet (SXM; sparsity figures halved)"),
    ("H200", {"bf16": 989.0, "fp16": 989.0, "tf32": 494.0, "fp32": 67.0},
     "NVIDIA H200 Tensor Core GPU datasheet (SXM; sparsity figures halved)"),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
     "NVIDIA A100 Tensor Core GPU datasheet (dense)"),
    ("L40S", {"bf16": 362.0, "fp16": 362.0, "tf32": 183.0, "fp32": 91.6},
     "NVIDIA L40S datasheet (sparsity figures halved)"),
    ("L4", {"bf16": 121.0, "fp16": 121.0, "tf32": 60.0, "fp32": 30.3},
     "NVIDIA L4 Tensor Core GPU datasheet (sparsity figures halved)"),
    ("A10", {"bf16": 125.0, "fp16": 125.0, "tf32": 62.5, "fp32": 31.2},
     "NVIDIA A10 Tensor Core GPU datasheet (dense)"),
    ("RTX 4090", {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
     "NVIDIA Ada Lovelace architecture whitepaper (FP32 accumulate, dense)"),
    ("V100", {"fp16": 125.0, "fp32": 15.7}, "NVIDIA V100 Tensor Core GPU datasheet (SXM2)"),
    ("T4", {"fp16": 65.0, "fp32": 8.1}, "NVIDIA T4 Tensor Core GPU datasheet"),
)


def precision(config: Mapping[str, Any]) -> str:
    """The matmul precision a run's knobs select: bf16 | fp16 | tf32 | fp32."""
    amp = config.get("amp", "off")
    if amp in ("bf16", "fp16"):
        return amp
    return "tf32" if config.get("tf32") else "fp32"


def peak_tflops(gpu_name: str | None, precision_name: str) -> tuple[float, str] | None:
    """(peak dense TFLOP/s, cited source) for a GPU name and precision; None when unknown (e.g. CPU)."""
    if not gpu_name:
        return None
    for key, peaks, source in PEAK_TFLOPS:
        if key.lower() in gpu_name.lower():
            return (peaks[precision_name], source) if precision_name in peaks else None
    return None


def mfu(achieved_flops_per_s: float | None, gpu_name: str | None, config: Mapping[str, Any]) -> float | None:
    """Model FLOPs utilisation (0-1) against the cited peak; None where the peak is unknown."""
    peak = peak_tflops(gpu_name, precision(config))
    if peak is None or achieved_flops_per_s is None or not math.isfinite(achieved_flops_per_s):
        return None
    return achieved_flops_per_s / (peak[0] * 1e12)


def _as_dict(cfg: Any) -> dict[str, Any]:
    return cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)


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


def cost_table(workload: Workload, small_cfg: Any, large_cfg: Any, *,
               measured: tuple[Mapping[str, Any], Mapping[str, Any]] = ({}, {}),
               labels: tuple[str, str] = ("Small", "Large"), gpu_name: str | None = None) -> pd.DataFrame | None:
    """The seed-004 table for two configs of a workload with an analytic FLOP model; None without one.

    `measured` holds each side's summary row / metrics (tokens_per_s, flops_per_step, real_tokens_per_step).
    Ratio is Large / Small in every row; the last rows set the predicted cost ratio beside the measured.
    """
    fpt = (workload.flops_per_token(small_cfg), workload.flops_per_token(large_cfg))
    if fpt[0] is None or fpt[1] is None:
        return None
    rows: list[tuple[str, str, str, str]] = []
    comps = (workload.cost_components(small_cfg), workload.cost_components(large_cfg))
    for name in dict.fromkeys([*comps[0], *comps[1]]):
        a, b = comps[0].get(name), comps[1].get(name)
        rows.append((name, _si(a), _si(b), _fmt_ratio(_ratio(a, b))))
    params = (workload.parameter_count(small_cfg), workload.parameter_count(large_cfg))
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
    for side, cfg in ((0, small_cfg), (1, large_cfg)):
        achieved = None if tps[side] is None else tps[side] * fpt[side]
        value = mfu(achieved, gpu_name, _as_dict(cfg))
        mfus.append("n/a" if value is None else f"{value:.1%}")
    peak = peak_tflops(gpu_name, precision(_as_dict(small_cfg)))
    rows.append(("MFU (formula FLOPs / peak)", mfus[0], mfus[1], peak[1] if peak else "no peak known for this device"))
    df = pd.DataFrame(rows, columns=["Component", labels[0], labels[1], "Ratio"])
    df.attrs.update(predicted_ratio=predicted, measured_ratio=observed)
    return df


def cost_tables(summary: pd.DataFrame, configs: Mapping[str, Any] | None = None) -> list[tuple[str, pd.DataFrame]]:
    """A cost table for each variant whose analytic FLOPs/token differ from the baseline's."""
    from harness import registry
    from harness.config import resolve

    baseline = summary.attrs.get("baseline", summary.index[0])
    workload_name = str(summary.at[baseline, "workload"])
    try:
        workload = registry.get(workload_name)
    except ValueError:
        return []  # an unregistered workload has no analytic model to consult
    configs = dict(configs or {})
    for v in summary.index:
        if v not in configs:
            try:
                configs[v] = resolve(workload_name, {k: x for k, x in summary.at[v, "config"].items()
                                                     if k != "workload"})
            except ValueError:
                continue
    gpu = (summary.at[baseline, "env"] or {}).get("gpu_name") if "env" in summary.columns else None
    out = []
    for v in summary.index:
        if v == baseline or v not in configs or baseline not in configs:
            continue
        fb, fv = workload.flops_per_token(configs[baseline]), workload.flops_per_token(configs[v])
        if fb is None or fv is None or math.isclose(fb, fv):
            continue
        pair = [(baseline, configs[baseline]), (v, configs[v])]
        if fv < fb:
            pair.reverse()  # smaller model on the left, as in seed 004
        table = cost_table(workload, pair[0][1], pair[1][1], labels=(pair[0][0], pair[1][0]), gpu_name=gpu,
                           measured=(summary.loc[pair[0][0]].to_dict(), summary.loc[pair[1][0]].to_dict()))
        if table is not None:
            out.append((f"{pair[0][0]} vs {pair[1][0]}", table))
    return out
