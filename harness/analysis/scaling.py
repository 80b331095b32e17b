"""Data-parallel scaling: throughput, speedup, scaling efficiency and communication share per rank count.

Read from a `summarize` DataFrame (records only). Ranks of a variant = ``ddp x nnodes`` of its config. Speedup is
the summary's paired samples/s ratio against the baseline, with its 95% interval; scaling efficiency = speedup /
(ranks / the baseline's ranks), so 1.0 is linear scaling and its interval is the speedup's, scaled. Communication
share = the all-reduce time that did not overlap compute, in percent of a step (the slowest rank's: what the
network cost; a straggler's cost is the rank skew beside it), as median and min-max over the repeats.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from harness.analysis import stats
from harness.knobs import global_batch, world_of


def efficiency(speedup: float, ranks: int, base_ranks: int) -> float:
    """Scaling efficiency: speedup / (ranks / base_ranks); 1.0 = linear."""
    return speedup * base_ranks / ranks if ranks else math.nan


def _min_max(records: Any, metric: str) -> tuple[float, float]:
    return stats.min_max([r.metrics.get(metric) for r in records])


def scaling_table(s: pd.DataFrame) -> pd.DataFrame | None:
    """One row per variant of an experiment whose variants differ in rank count; None when none does."""
    ranks = {v: world_of(row["config"]) for v, row in s.iterrows()}
    if len(set(ranks.values())) < 2:
        return None
    base = s.attrs["baseline"]
    base_ranks = ranks[base]
    rows = []
    for v, r in s.iterrows():
        n = ranks[v]
        cfg = r["config"]
        recs = r.get("speed_records", ()) or ()
        comm_lo, comm_hi = _min_max(recs, "communication_pct")
        is_base = v == base
        scaled = is_base or n != base_ranks  # same rank count (e.g. more threads): no scaling efficiency
        eff = efficiency(r["speedup"], n, base_ranks) if scaled else np.nan
        rows.append({
            "variant": v, "ranks": n, "global_batch": global_batch(cfg),
            "samples_per_s": r["samples_per_s"], "samples_per_s_min": r["samples_per_s_min"],
            "samples_per_s_max": r["samples_per_s_max"], "speedup": r["speedup"],
            # the throughput in the unit the speedups (and efficiencies) count (`summarize`'s rate columns)
            "rate": r.get("rate", np.nan), "rate_min": r.get("rate_min", np.nan), "rate_max": r.get("rate_max", np.nan),
            "speedup_ci_low": np.nan if is_base else r["speedup_ci_low"],
            "speedup_ci_high": np.nan if is_base else r["speedup_ci_high"],
            "efficiency": eff,
            "efficiency_ci_low": efficiency(r["speedup_ci_low"], n, base_ranks) if scaled and not is_base else np.nan,
            "efficiency_ci_high": efficiency(r["speedup_ci_high"], n, base_ranks) if scaled and not is_base else np.nan,
            "communication_pct": r.get("communication_pct", np.nan), "communication_pct_min": comm_lo,
            "communication_pct_max": comm_hi, "rank_skew_pct": r.get("rank_skew_pct", np.nan),
            "allreduce_busbw_gbps": r.get("allreduce_busbw_gbps", np.nan),
        })
    return pd.DataFrame(rows).set_index("variant").sort_values("ranks", kind="stable")
