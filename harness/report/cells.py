"""How a report's cells read: numbers, percentages, deltas, a speedup with its interval and its decision."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.analysis import decision
from harness.analysis.stats import RatioEstimate
from harness.description import WorkloadDescription
from harness.knobs import GENERIC_BY_NAME


def finite(x: object) -> bool:
    """True for a finite number (or a value that converts to one)."""
    try:
        return math.isfinite(float(x))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def fmt(x: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands separated); '–' for missing."""
    if x is None or isinstance(x, str):
        return x or "–"
    if isinstance(x, bool):
        return str(x).lower()
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return "–"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_pct(x: Any) -> str:
    """A percentage with one decimal ('–' for missing)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return f"{x:.1f}" if math.isfinite(x) else "–"


def fmt_delta(x: Any) -> str:
    """A signed change ('±0' for none, '–' for missing)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(x):
        return "–"
    return "±0" if x == 0 else f"{x:+.3g}"


def estimate(row: pd.Series) -> RatioEstimate:
    return RatioEstimate(float(row["speedup"]), float(row["speedup_ci_low"]), float(row["speedup_ci_high"]),
                         int(row.get("speedup_pairs", 0) or 0), str(row.get("speedup_method", "t")),
                         int(row.get("speedup_need", 3) or 3))


def ci_text(row: pd.Series) -> str:
    """``x1.23 [1.20, 1.26]``, or ``x1.23 (insufficient: n=2; need >= 3)`` where no interval is supported."""
    return estimate(row).describe()


def speed_decision(row: pd.Series, floor: float | None = None) -> decision.Decision:
    """The row's speedup decided (`decision.decide`) with the speed margin, widened to the measured noise floor
    when there is one: faster, slower, equivalent within the margin, or unresolved."""
    margin = decision.EQUIVALENCE_MARGIN_PCT / 100
    if floor is not None and math.isfinite(floor):
        margin = max(margin, floor - 1.0)
    return decision.decide(estimate(row), margin=margin)


def resolved(row: pd.Series, floor: float | None) -> bool:
    """A speedup is a finding only when it is decided faster or slower (not equivalent, not unresolved)."""
    return speed_decision(row, floor).resolved


def peak_memory(row: pd.Series) -> float:
    """The peak the tables show: CUDA allocated on a GPU, else the process's peak RSS (GiB)."""
    gpu = float(row["cuda_peak_allocated_gib"])
    return gpu if math.isfinite(gpu) else row["peak_rss_gib"]


def equiv_mark(row: pd.Series) -> str:
    status = row.get("equiv_status", "")
    return {"pass": "✅ equivalent", "fail": "❌ differs", "skipped": "skipped (quality knob)",
            "error": "⚠️ check failed", "baseline": "(baseline)"}.get(status, "not checked")


def knob_kind(name: str, workload: WorkloadDescription | None) -> str:
    if workload is not None and name in workload.knob_kinds:
        return workload.knob_kind(name)
    return GENERIC_BY_NAME[name].kind if name in GENERIC_BY_NAME else "?"
