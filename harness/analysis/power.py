"""What "no regression" is worth on a machine: the smallest slowdown its comparisons detect.

An A/A experiment (the same config as baseline and as variant, each repeat in its own process, interleaved as a
sweep runs them) measures the spread of the per-repeat log-ratio, `sd`. A comparison over `n` repeats decides
"slower" when the whole widened t interval lies below 1 (`harness.analysis.decision`), so a true slowdown `delta`
(on the log scale) is detected with 80% power when

    delta = (SEQUENTIAL_WIDEN * t_0.975(n-1) + t_0.80(n-1)) * sd / sqrt(n)

(the usual power calculation for a one-sample t test, with the interval's own quantile). `trainbench doctor --mde`
runs the A/A experiment and prints this for the repeats a sweep stops at and for the old-against-new gate's.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from harness.analysis import stats
from harness.results import Record

POWER = 0.80
_Z80 = 0.8416212335729143


def t_quantile_80(df: int) -> float:
    """Student's t 0.80 quantile (Cornish-Fisher in 1/df about the normal's; within 0.1% of the tabled quantile
    from 2 degrees of freedom on)."""
    if df < 1:
        return float("nan")
    z = _Z80
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def detectable_log(sd: float, n: int, widen: float = stats.SEQUENTIAL_WIDEN) -> float:
    """The log-ratio shift detected with 80% power over `n` repeats with per-repeat log-ratio SD `sd`."""
    if n < stats.MIN_REPEATS or not math.isfinite(sd):
        return float("nan")
    return (widen * stats.t_quantile_975(n - 1) + t_quantile_80(n - 1)) * sd / math.sqrt(n)


def detectable_slowdown_pct(sd: float, n: int, widen: float = stats.SEQUENTIAL_WIDEN) -> float:
    """`detectable_log` as a slowdown of throughput, in percent."""
    return 100.0 * (1.0 - math.exp(-detectable_log(sd, n, widen)))


def aa_log_ratios(records: Sequence[Record], baseline: str, copy: str) -> list[float]:
    """Per repeat, log(copy's samples/s / baseline's), from the latest attempt of each run."""
    from harness.analysis.summary import latest_attempts

    ok = [r for r in latest_attempts(records) if r.phase == "speed" and r.status == "ok"]
    by = {(r.variant, r.repeat): r.metrics.get("samples_per_s") for r in ok}
    out = []
    for (v, k), x in sorted(by.items()):
        y = by.get((baseline, k))
        if v == copy and x and y and x > 0 and y > 0:
            out.append(math.log(x / y))
    return out


@dataclass(frozen=True, slots=True)
class Detectable:
    """The A/A spread of one workload on one machine and the slowdowns it lets a comparison detect."""

    workload: str
    repeats: int
    sd_pct: float
    """The per-repeat log-ratio SD, in percent."""
    aa_ratio: float
    slowdown_pct: dict[int, float]
    """Repeats -> the slowdown detected with 80% power."""

    @classmethod
    def from_log_ratios(cls, workload: str, logs: Sequence[float], at: Sequence[int]) -> Detectable:
        arr = np.asarray(logs, dtype=float)
        if arr.size < stats.MIN_REPEATS:
            raise ValueError(f"the A/A experiment gave {arr.size} usable repeat(s); it needs >= {stats.MIN_REPEATS}")
        sd = float(arr.std(ddof=1))
        return cls(workload, int(arr.size), 100.0 * sd, float(np.exp(arr.mean())),
                   {n: detectable_slowdown_pct(sd, n) for n in at})

    def describe(self) -> str:
        at = ", ".join(f"{p:.1f}% at {n} repeats" for n, p in self.slowdown_pct.items())
        return (f"{self.workload}: A/A spread {self.sd_pct:.1f}% per repeat (A/A ratio x{self.aa_ratio:.3f} over "
                f"{self.repeats} repeats); slowdowns detected with {100 * POWER:.0f}% power: {at}")
