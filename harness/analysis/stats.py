"""Statistics over repeats: medians, spreads, paired ratios and their bootstrap confidence intervals.

Speed figures are ratios of throughputs, so the point estimate of a speedup is the geometric mean of
the per-pair ratios. Two kinds of pairs, two intervals:

- across processes (repeat i of a variant over repeat i of the baseline, interleaved in a sweep): the
  process is the unit, its log-ratios are independent, and the interval is Student's t on their mean
  (`repeat_ratio`). A percentile bootstrap over 2-5 values cannot reach its nominal coverage (over 2
  pairs it has at most 3 distinct values), so below `MIN_REPEATS` there is no interval: "insufficient";
- within one process (the engine's paired mode, steps interleaved A B, B A): neighbouring steps share
  caches, clocks and bursts of load, so the pairs are resampled in contiguous blocks (a moving-block
  bootstrap, `block_bootstrap_ratio`); below `MIN_STEP_PAIRS` pairs there is no interval.

Everything is seeded: the same records give the same intervals.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

N_BOOT = 10_000
CONFIDENCE = 0.95
UNSTABLE_SPREAD_PCT = 10.0
"""Run-to-run spread (max-min over median) above which a result is flagged unstable (pyperf uses 10%)."""


MIN_REPEATS = 3
"""Fewest paired processes an interval across processes is computed from."""
MIN_STEP_PAIRS = 10
"""Fewest step pairs a within-process (block bootstrap) interval is computed from."""
CALIBRATED_WINDOW_S = 0.5
"""The measured window the A/A calibration ran (`bench/measure_precision.py`: 300 steps of the tiny LM); a report
warns about variants measured over shorter windows, whose intervals that calibration does not vouch for."""
MIN_STOP_REPEATS = 5
"""Fewest processes per side before a sweep may stop adding repeats because the interval is narrow enough."""
SEQUENTIAL_WIDEN = 1.25
"""Factor on Student's t half-width of an interval across processes.

A sweep adds repeats until the half-width reaches its target, so it stops early exactly when the spread happened
to come out small, and the interval it stops on is too narrow: simulated (`bench/simulate_coverage.py`, 20,000
A/A trials per condition) the plain t interval with stopping from 3 processes covered 89.2-95.5% for a nominal 95%
at 1-5% noise, iid or with run-to-run autocorrelation. Stopping no earlier than `MIN_STOP_REPEATS` and widening the
t quantile by this factor held 95.4-97.9% in every condition (tests/test_coverage.py holds >= 94.5% over 2,000
trials each; x1.2 left the worst condition at 95.5%, too close to that bound). At a fixed number of repeats the
widened interval covers about 98%. An alpha-spending bound over the rule's up to 8 looks would widen more (x1.7 at
4 degrees of freedom) for the same guarantee."""


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """A ratio with its confidence interval; the interval is NaN when the samples cannot support one."""

    ratio: float
    ci_low: float
    ci_high: float
    n: int
    method: str = "bootstrap"
    """How the interval was made: "t" (across processes), "block bootstrap" (steps in one process),
    "bootstrap", or "insufficient" (no interval: too few samples)."""
    need: int = 2
    """Samples the method needs for an interval."""
    widen: float = 1.0
    """The factor on the method's half-width (`SEQUENTIAL_WIDEN` for "t"; 1 otherwise)."""

    @property
    def has_interval(self) -> bool:
        """True when the interval is finite."""
        return bool(np.isfinite(self.ci_low) and np.isfinite(self.ci_high))

    @property
    def half_width_pct(self) -> float:
        """Half the interval's width relative to the ratio, in percent (NaN without an interval)."""
        if not self.has_interval or not self.ratio > 0:
            return float("nan")
        return float((self.ci_high - self.ci_low) / 2.0 / self.ratio * 100.0)

    def describe(self) -> str:
        """``x1.23 [1.20, 1.26]`` or ``x1.23 (insufficient: n=2; need >= 3)``."""
        if not np.isfinite(self.ratio):
            return f"no estimate (n={self.n})"
        if not self.has_interval:
            return f"x{self.ratio:.3g} (insufficient: n={self.n}; need >= {self.need})"
        return f"x{self.ratio:.3g} [{self.ci_low:.3g}, {self.ci_high:.3g}]"


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.asarray([np.nan if v is None else v for v in values], dtype=float)
    return arr[np.isfinite(arr)]


def median(values: Sequence[float]) -> float:
    """Median of the finite values; NaN when there is none."""
    arr = _clean(values)
    return float(np.median(arr)) if arr.size else float("nan")


def min_max(values: Sequence[float]) -> tuple[float, float]:
    """(min, max) of the finite values; NaNs for none."""
    arr = _clean(values)
    return (float(arr.min()), float(arr.max())) if arr.size else (float("nan"), float("nan"))


def spread_pct(values: Sequence[float]) -> float:
    """(max - min) / median in percent across repeats; 0 for one value, NaN for none."""
    arr = _clean(values)
    if arr.size == 0:
        return float("nan")
    mid = float(np.median(arr))
    return float((arr.max() - arr.min()) / mid * 100.0) if mid else float("nan")


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) of the finite values; NaN for none."""
    arr = _clean(values)
    return float(np.percentile(arr, q)) if arr.size else float("nan")


def _percentile_ci(boot: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def geometric_mean(values: Sequence[float]) -> float:
    """Geometric mean of positive values (NaN for none)."""
    arr = _clean(values)
    if arr.size == 0 or (arr <= 0).any():
        return float("nan")
    return float(np.exp(np.log(arr).mean()))


def bootstrap_ratio(ratios: Sequence[float], *, n_boot: int = N_BOOT, confidence: float = CONFIDENCE,
                    seed: int = 0) -> RatioEstimate:
    """Geometric mean of paired ratios with a percentile-bootstrap CI (resampling the pairs)."""
    arr = _clean(ratios)
    if arr.size == 0 or (arr <= 0).any():
        return RatioEstimate(float("nan"), float("nan"), float("nan"), int(arr.size))
    logs = np.log(arr)
    point = float(np.exp(logs.mean()))
    if arr.size < 2:
        return RatioEstimate(point, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, arr.size, size=(n_boot, arr.size))
    boot = np.exp(logs[idx].mean(axis=1))
    lo, hi = _percentile_ci(boot, confidence)
    return RatioEstimate(point, lo, hi, int(arr.size))


# Two-sided 97.5% quantiles of Student's t for 1-30 degrees of freedom (scipy is not a dependency).
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    """Student's t 0.975 quantile: the table to 30 degrees of freedom, then the Cornish-Fisher expansion in 1/df
    (Abramowitz & Stegun 26.7.5; within 0.01% of the exact quantile beyond 30)."""
    if 1 <= df <= len(_T975):
        return _T975[df - 1]
    if df < 1:
        return float("nan")
    z = 1.959963984540054
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    return z + g1 / df + g2 / df ** 2 + g3 / df ** 3


def repeat_ratio(ratios: Sequence[float], *, min_n: int = MIN_REPEATS,
                 widen: float = SEQUENTIAL_WIDEN) -> RatioEstimate:
    """Geometric mean of per-process ratios with a 95% Student-t interval on the log scale, its half-width
    widened by `widen` (`SEQUENTIAL_WIDEN`: what keeps 95% under the sweep's stopping rule).

    Each ratio comes from its own process (the unit of a cross-process comparison); below `min_n`
    there is no interval (method "insufficient").
    """
    arr = _clean(ratios)
    if arr.size == 0 or (arr <= 0).any():
        return RatioEstimate(float("nan"), float("nan"), float("nan"), int(arr.size), "insufficient", min_n)
    logs = np.log(arr)
    point = float(np.exp(logs.mean()))
    if arr.size < min_n:
        return RatioEstimate(point, float("nan"), float("nan"), int(arr.size), "insufficient", min_n)
    half = widen * t_quantile_975(arr.size - 1) * float(logs.std(ddof=1)) / np.sqrt(arr.size)
    return RatioEstimate(point, float(np.exp(logs.mean() - half)), float(np.exp(logs.mean() + half)),
                         int(arr.size), "t", min_n, widen)


def precise_enough(est: RatioEstimate, target_pct: float, *, min_n: int = MIN_STOP_REPEATS) -> bool:
    """The sequential stopping rule: True once the interval rests on >= `min_n` processes and its half-width is
    within `target_pct` (then no more repeats are added)."""
    return est.has_interval and est.n >= min_n and est.half_width_pct <= target_pct


def block_bootstrap_ratio(ratios: Sequence[float], *, block: int | None = None, n_boot: int = N_BOOT,
                          confidence: float = CONFIDENCE, seed: int = 0,
                          min_n: int = MIN_STEP_PAIRS) -> RatioEstimate:
    """Geometric mean of step-pair ratios from one process with a moving-block bootstrap interval.

    Blocks of ~n^(1/3) consecutive pairs (at least 2) keep the autocorrelation of neighbouring steps
    inside each resample, so the interval is not narrowed by pretending the steps are independent.
    """
    arr = _clean(ratios)
    if arr.size == 0 or (arr <= 0).any():
        return RatioEstimate(float("nan"), float("nan"), float("nan"), int(arr.size), "insufficient", min_n)
    logs = np.log(arr)
    point = float(np.exp(logs.mean()))
    n = int(arr.size)
    if n < min_n:
        return RatioEstimate(point, float("nan"), float("nan"), n, "insufficient", min_n)
    block = block or max(2, round(n ** (1 / 3)))
    starts = n - block + 1
    per = int(np.ceil(n / block))
    rng = np.random.default_rng(seed)
    idx = (rng.integers(0, starts, size=(n_boot, per))[:, :, None] + np.arange(block)).reshape(n_boot, -1)[:, :n]
    boot = np.exp(logs[idx].mean(axis=1))
    lo, hi = _percentile_ci(boot, confidence)
    return RatioEstimate(point, lo, hi, n, "block bootstrap", min_n)


def paired_ratio(numerator: dict[int, float], denominator: dict[int, float], *,
                 min_n: int = MIN_REPEATS) -> RatioEstimate:
    """Ratio of two {repeat: value} series over the repeats both have (repeat i vs repeat i)."""
    keys = sorted(k for k in numerator.keys() & denominator.keys()
                  if _finite_positive(numerator[k]) and _finite_positive(denominator[k]))
    return repeat_ratio([numerator[k] / denominator[k] for k in keys], min_n=min_n)


def paired_difference(a: dict[int, float | None], b: dict[int, float | None], *,
                      min_n: int = MIN_REPEATS) -> RatioEstimate:
    """Mean of a[k] - b[k] over the keys (seeds) both have, with a 95% Student-t interval from `min_n` pairs on
    (`RatioEstimate.ratio` holds the difference). Quality runs are a fixed number of seeds, so no widening."""
    keys = sorted(k for k in a.keys() & b.keys() if a[k] is not None and b[k] is not None
                  and np.isfinite(a[k]) and np.isfinite(b[k]))
    diffs = np.asarray([float(a[k]) - float(b[k]) for k in keys])  # type: ignore[arg-type]
    if diffs.size == 0:
        return RatioEstimate(float("nan"), float("nan"), float("nan"), 0, "insufficient", min_n)
    mean = float(diffs.mean())
    if diffs.size < min_n:
        return RatioEstimate(mean, float("nan"), float("nan"), int(diffs.size), "insufficient", min_n)
    half = t_quantile_975(diffs.size - 1) * float(diffs.std(ddof=1)) / np.sqrt(diffs.size)
    return RatioEstimate(mean, mean - half, mean + half, int(diffs.size), "t", min_n)


def unpaired_ratio(numerator: Sequence[float], denominator: Sequence[float], *, n_boot: int = N_BOOT,
                   confidence: float = CONFIDENCE, seed: int = 0, min_n: int = MIN_REPEATS) -> RatioEstimate:
    """Ratio of medians of two independent samples with a bootstrap CI (each side resampled on its own).

    Used across result directories (`trainbench compare`), where runs cannot be paired. Below `min_n` values on
    *either* side there is no interval ("insufficient"): a bootstrap of 1 or 2 values has 1-3 distinct medians.
    """
    num, den = _clean(numerator), _clean(denominator)
    n = int(min(num.size, den.size))
    if num.size == 0 or den.size == 0 or np.median(den) == 0:
        return RatioEstimate(float("nan"), float("nan"), float("nan"), n, "insufficient", min_n)
    point = float(np.median(num) / np.median(den))
    if n < min_n:
        return RatioEstimate(point, float("nan"), float("nan"), n, "insufficient", min_n)
    rng = np.random.default_rng(seed)
    boot_num = np.median(num[rng.integers(0, num.size, size=(n_boot, num.size))], axis=1)
    boot_den = np.median(den[rng.integers(0, den.size, size=(n_boot, den.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = boot_num / boot_den
    lo, hi = _percentile_ci(boot[np.isfinite(boot)], confidence)
    return RatioEstimate(point, lo, hi, n, "bootstrap", min_n)


def _finite_positive(x: float | None) -> bool:
    return x is not None and np.isfinite(x) and x > 0
