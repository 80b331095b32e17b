"""Coverage of the sweep's interval under its own stopping rule, by simulation.

A sweep runs 3 interleaved rounds, then adds rounds until the speedup's 95% interval is within the target
half-width (3%) or the variant has 10 repeats (`harness.runner._Sweep.adapt`). Stopping on a narrow interval
stops exactly when the spread came out small, so the interval it stops on covers less than it says. Here the
real functions decide (`stats.repeat_ratio` for the interval, `stats.precise_enough` for the stop) on simulated
A/A runs, where the true ratio is 1:

- iid: each round's log-ratio is normal with SD = the noise;
- autocorrelated: each *run's* log-throughput follows an AR(1) series in launch order (phi = 0.5 or 0.75; the
  LM study's sessions measured lag-1 correlations of 0.20-0.74 between consecutive runs), the rounds hold
  `k` runs in the runner's rotated order (round r starts at variant r), and the ratio pairs variant `j` with
  the baseline of the same round.

    python bench/simulate_coverage.py [--trials 20000] [--min-stop 5] [--widen 1.25]

prints, per condition, the coverage of the rule as it was (stop from 3 processes, plain t) and as it is
(`stats.MIN_STOP_REPEATS`, `stats.SEQUENTIAL_WIDEN`, or the rule `--min-stop`/`--widen` name), with the median
repeats and half-width.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass

import numpy as np

from harness.analysis import decision, stats

NOISES_PCT = (1.0, 2.0, 3.0, 5.0)
CONDITIONS = {"iid": (0.0, 2, 1), "AR(0.5), 2 variants": (0.5, 2, 1),
              "AR(0.75), 6 variants, 4th": (0.75, 6, 3)}
"""name -> (phi, runs per round, which variant of the round is compared with the baseline)."""
START, MAX_REPEATS, TARGET_PCT = 3, 10, 3.0


@dataclass(frozen=True, slots=True)
class Coverage:
    """Share of A/A intervals containing 1, with the repeats and half-widths they stopped at."""

    trials: int
    covered: int
    median_repeats: float
    median_half_width_pct: float

    @property
    def pct(self) -> float:
        return 100.0 * self.covered / self.trials


def log_ratios(rng: np.random.Generator, noise_pct: float, trials: int, phi: float, k: int, j: int) -> np.ndarray:
    """(trials, MAX_REPEATS) per-round log-ratios of an A/A comparison with the given noise structure."""
    sigma = math.log1p(noise_pct / 100.0)
    if phi == 0.0:
        return rng.normal(0.0, sigma, (trials, MAX_REPEATS))
    run_sd = sigma / math.sqrt(2.0)  # a difference of two runs has the round's SD
    e = np.empty((trials, k * MAX_REPEATS))
    x = rng.normal(0.0, run_sd, trials)
    for t in range(e.shape[1]):
        x = phi * x + math.sqrt(1.0 - phi * phi) * rng.normal(0.0, run_sd, trials)
        e[:, t] = x
    out = np.empty((trials, MAX_REPEATS))
    for r in range(MAX_REPEATS):
        order = [(r + i) % k for i in range(k)]
        out[:, r] = e[:, r * k + order.index(j)] - e[:, r * k + order.index(0)]
    return out


def simulate(noise_pct: float, trials: int, *, phi: float = 0.0, k: int = 2, j: int = 1,
             min_stop: int = stats.MIN_STOP_REPEATS, widen: float = stats.SEQUENTIAL_WIDEN,
             seed: int = 0) -> Coverage:
    """Run the stopping rule on `trials` simulated A/A comparisons; count intervals that contain 1."""
    logs = log_ratios(np.random.default_rng(seed), noise_pct, trials, phi, k, j)
    covered, repeats, halves = 0, [], []
    for row in np.exp(logs):
        n = START
        while True:
            est = stats.repeat_ratio(row[:n], widen=widen)
            if n >= MAX_REPEATS or stats.precise_enough(est, TARGET_PCT, min_n=min_stop):
                break
            n += 1
        covered += decision.contains(est, 1.0)
        repeats.append(n)
        halves.append(est.half_width_pct)
    return Coverage(trials, covered, float(np.median(repeats)), float(np.median(halves)))


def binomial_interval(k: int, n: int) -> tuple[float, float]:
    """Wilson 95% interval of a proportion k/n, in percent."""
    z = 1.959963984540054
    p = k / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100 * (mid - half), 100 * (mid + half)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20_000)
    parser.add_argument("--min-stop", type=int, default=stats.MIN_STOP_REPEATS, help="the rule's fewest repeats")
    parser.add_argument("--widen", type=float, default=stats.SEQUENTIAL_WIDEN, help="the rule's factor on t")
    args = parser.parse_args(argv)
    name = "as it is" if (args.min_stop, args.widen) == (stats.MIN_STOP_REPEATS, stats.SEQUENTIAL_WIDEN) else "tried"
    print(f"| noise | runs | as it was: stop from {START}, plain t | {name}: stop from {args.min_stop}, "
          f"t x{args.widen:g} | repeats (median) | half-width (median) |")
    print("|---|---|---:|---:|---:|---:|")
    for name, (phi, k, j) in CONDITIONS.items():
        for noise in NOISES_PCT:
            old = simulate(noise, args.trials, phi=phi, k=k, j=j, min_stop=START, widen=1.0)
            new = simulate(noise, args.trials, phi=phi, k=k, j=j, min_stop=args.min_stop, widen=args.widen)
            print(f"| {noise:g}% | {name} | {old.pct:.1f}% | **{new.pct:.1f}%** | {old.median_repeats:g} -> "
                  f"{new.median_repeats:g} | {old.median_half_width_pct:.1f}% -> {new.median_half_width_pct:.1f}% |",
                  flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
