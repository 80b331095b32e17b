"""Statistics over repeats: medians, spreads, paired ratios and their bootstrap confidence intervals.

Speed figures are ratios of throughputs, so the point estimate of a speedup is the geometric mean of
the per-pair ratios (repeat i of a variant over repeat i of the baseline, measured side by side in an
interleaved sweep, so drift hits both), and its interval is a percentile bootstrap of that statistic.
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


@dataclass(frozen=True, slots=True)
class RatioEstimate:
    """A ratio with its bootstrap confidence interval; the interval is NaN when fewer than 2 samples."""

    ratio: float
    ci_low: float
    ci_high: float
    n: int

    @property
    def straddles_one(self) -> bool:
        """True when the interval includes 1.0 (no resolvable difference)."""
        return bool(self.ci_low <= 1.0 <= self.ci_high)

    @property
    def significant(self) -> bool:
        """True when a finite interval excludes 1.0."""
        return bool(np.isfinite(self.ci_low) and not self.straddles_one)


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


def paired_ratio(numerator: dict[int, float], denominator: dict[int, float], **kw: float) -> RatioEstimate:
    """Ratio of two {repeat: value} series over the repeats both have (repeat i vs repeat i)."""
    keys = sorted(k for k in numerator.keys() & denominator.keys()
                  if _finite_positive(numerator[k]) and _finite_positive(denominator[k]))
    return bootstrap_ratio([numerator[k] / denominator[k] for k in keys], **kw)


def unpaired_ratio(numerator: Sequence[float], denominator: Sequence[float], *, n_boot: int = N_BOOT,
                   confidence: float = CONFIDENCE, seed: int = 0) -> RatioEstimate:
    """Ratio of medians of two independent samples with a bootstrap CI (each side resampled on its own).

    Used across result directories (`trainbench compare`), where runs cannot be paired.
    """
    num, den = _clean(numerator), _clean(denominator)
    if num.size == 0 or den.size == 0 or np.median(den) == 0:
        return RatioEstimate(float("nan"), float("nan"), float("nan"), int(min(num.size, den.size)))
    point = float(np.median(num) / np.median(den))
    if num.size < 2 and den.size < 2:
        return RatioEstimate(point, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    boot_num = np.median(num[rng.integers(0, num.size, size=(n_boot, num.size))], axis=1)
    boot_den = np.median(den[rng.integers(0, den.size, size=(n_boot, den.size))], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        boot = boot_num / boot_den
    lo, hi = _percentile_ci(boot[np.isfinite(boot)], confidence)
    return RatioEstimate(point, lo, hi, int(min(num.size, den.size)))


def _finite_positive(x: float | None) -> bool:
    return x is not None and np.isfinite(x) and x > 0


def instability_advice(*, ci: RatioEstimate | None, spreads_pct: dict[str, float], repeats: int,
                       bench_steps: int | None) -> str:
    """Empty when the result is stable; otherwise why it is not and what to do about it.

    `spreads_pct` names each run-to-run spread that matters (this variant's, the baseline's).
    """
    reasons = []
    if ci is not None and ci.n < 2:
        reasons.append(f"only {ci.n} paired repeat(s), no confidence interval")
    elif ci is not None and ci.straddles_one:
        reasons.append(f"the 95% CI [{ci.ci_low:.3f}, {ci.ci_high:.3f}] includes 1.0")
    for who, spread in spreads_pct.items():
        if np.isfinite(spread) and spread > UNSTABLE_SPREAD_PCT:
            reasons.append(f"{who} run-to-run spread {spread:.0f}% > {UNSTABLE_SPREAD_PCT:.0f}%")
    if not reasons:
        return ""
    todo = [f"more repeats (repeats={max(5, 2 * repeats)})"]
    if bench_steps:
        todo.append(f"a longer measure window (bench_steps={2 * bench_steps})")
    todo.append("a quieter machine (no other jobs, fixed clocks)")
    return "; ".join(reasons) + " -> try " + ", ".join(todo)
