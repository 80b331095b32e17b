"""False-alarm and detection rates of the ratio gate (`train_bench.compare`) on this machine.

Each repetition builds fresh trainers and runs two interleaved comparisons, exactly as the gate does
(`harness.pytest_plugin.measure_speedup`):

- A/A: the same config against itself; the true speedup is 1.0, so a gate that fails is a false alarm;
- A/A': the same config against a copy planted `--slowdown` (default 10%) slower: after every step the
  variant burns that fraction of the step's own CPU time in a busy loop (10% more compute, slowed by
  other jobs exactly as the step is); a gate that fails is a detection.

The gate under test is "the candidate is no slower than the reference beyond the noise":
``compare(baseline=A, variant=candidate, min_speedup=T)``. For every threshold T in a grid it prints
both rates under the plugin's decision rule (fail when the 95% CI's upper end < T) and, for
comparison, under the point estimate alone (fail when the speedup < T), on both clocks the gate can
use (wall time; this process's CPU time, `clock="auto"` on a CPU without DataLoader workers), then
the T the data lead to: among the thresholds without a false alarm in the A/A runs, the lowest one
with the best detection rate (the most margin against false alarms at no cost in detection).

    python bench/measure_gate_rates.py                      # lm, tiny, 40 repetitions x 100 pairs
    python bench/measure_gate_rates.py --reps 20 --pairs 30 --workload gpcm forward=scan

The figures depend on the machine and on what else runs on it: quote them with the conditions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from harness.analysis.stats import RatioEstimate, bootstrap_ratio
from harness.config import parse_overrides
from harness.pytest_plugin import DEFAULT_PAIRS, DEFAULT_WARMUP_PAIRS, Speedup, measure_speedup
from harness.registry import resolve
from harness.trainer import Trainer
from harness.workload import BatchCounts

THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.00)


class SlowedTrainer(Trainer):
    """A trainer whose every step takes `slowdown` longer: a planted regression of known size."""

    slowdown = 0.10

    def stepper(self) -> Callable[[], list[BatchCounts]]:
        """The normal step followed by `slowdown` x its own CPU time of busy work (10% more compute)."""
        inner = super().stepper()

        def step() -> list[BatchCounts]:
            start = time.process_time()
            counts = inner()
            until = time.process_time() + self.slowdown * (time.process_time() - start)
            while time.process_time() < until:  # burns CPU: slowed by other jobs exactly as compute is
                pass
            return counts
        return step


def run(workload: str, overrides: dict[str, str], reps: int, pairs: int, warmup_pairs: int,
        slowdown: float) -> tuple[list[Speedup], list[Speedup]]:
    """`reps` A/A and A/A' comparisons, alternating which goes first."""
    cfg = resolve(workload, {"preset": "tiny", **overrides})
    SlowedTrainer.slowdown = slowdown
    same, slowed = [], []
    for rep in range(reps):
        jobs = [("aa", Trainer), ("slow", SlowedTrainer)]
        for kind, variant_cls in jobs if rep % 2 == 0 else jobs[::-1]:
            result = measure_speedup(Trainer(cfg), variant_cls(cfg), pairs=pairs, warmup_pairs=warmup_pairs)
            (same if kind == "aa" else slowed).append(result)
        a, s = same[-1].estimate, slowed[-1].estimate
        print(f"rep {rep + 1:3d}/{reps}: A/A {a.ratio:.3f} [{a.ci_low:.3f}, {a.ci_high:.3f}]   "
              f"A/A' {s.ratio:.3f} [{s.ci_low:.3f}, {s.ci_high:.3f}]", flush=True)
    return same, slowed


def estimates(results: list[Speedup], clock: str) -> list[RatioEstimate]:
    """The speedup of every comparison re-estimated on one clock (same steps, same bootstrap)."""
    return [bootstrap_ratio(np.asarray(r.baseline_ms[clock]) / np.asarray(r.variant_ms[clock])) for r in results]


def rates(same: list[RatioEstimate], slowed: list[RatioEstimate], threshold: float,
          rule: Callable[[RatioEstimate, float], bool]) -> tuple[float, float]:
    """(false-alarm rate, detection rate) of a decision rule at a threshold."""
    return (float(np.mean([rule(e, threshold) for e in same])), float(np.mean([rule(e, threshold) for e in slowed])))


RULES: dict[str, Callable[[RatioEstimate, float], bool]] = {
    "CI upper < T (the gate)": lambda e, t: e.ci_high < t,
    "point < T": lambda e, t: e.ratio < t,
}


def report(same: list[Speedup], slowed: list[Speedup], clock: str) -> tuple[float, float] | None:
    """Print both rates per threshold and rule on one clock; returns (T, detection) of the CI rule's choice."""
    aa, ab = estimates(same, clock), estimates(slowed, clock)
    print(f"\n{clock} clock: A/A speedup median {statistics.median(e.ratio for e in aa):.3f} "
          f"(min {min(e.ratio for e in aa):.3f}, max {max(e.ratio for e in aa):.3f}); A/A' median "
          f"{statistics.median(e.ratio for e in ab):.3f}; median 95% CI width "
          f"{statistics.median(e.ci_high - e.ci_low for e in aa + ab):.3f}")
    print("   T    " + "".join(f"{name:>34s}" for name in RULES))
    print("        " + "        false alarm  detection" * len(RULES))
    clean = []  # (T, detection) of the CI rule where it raised no false alarm
    for t in THRESHOLDS:
        cells = [rates(aa, ab, t, rule) for rule in RULES.values()]
        print(f"{t:6.2f}  " + "".join(f"{fa:19.0%}{det:11.0%}" for fa, det in cells))
        if cells[0][0] == 0.0:
            clean.append((t, cells[0][1]))
    if not clean:
        return None
    best = max(det for _, det in clean)
    return min(t for t, det in clean if det == best), best  # the best detection, farthest from false alarms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="lm")
    parser.add_argument("--reps", type=int, default=40, help="repetitions of each of A/A and A/A' (>= 20)")
    parser.add_argument("--pairs", type=int, default=100,
                        help=f"interleaved step pairs per comparison (the gate's default is {DEFAULT_PAIRS})")
    parser.add_argument("--warmup-pairs", type=int, default=DEFAULT_WARMUP_PAIRS)
    parser.add_argument("--slowdown", type=float, default=0.10, help="planted slowdown of the A' variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default)")
    parser.add_argument("overrides", nargs="*", help="knob=value for both sides (preset defaults to tiny)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    same, slowed = run(args.workload, parse_overrides(args.overrides), args.reps, args.pairs,
                       args.warmup_pairs, args.slowdown)
    wall_s = time.perf_counter() - start

    print(f"\n{args.workload} {' '.join(args.overrides) or 'preset=tiny'}: {args.reps} x (A/A, A/A'), "
          f"{args.pairs} pairs each, planted slowdown {args.slowdown:.0%} of the step's CPU time, torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, {wall_s:.0f} s")
    for clock in ("wall", "cpu"):
        chosen = report(same, slowed, clock)
        if chosen is None:
            print(f"{clock}: no threshold in the grid is free of false alarms: too noisy for a 10% gate")
        else:
            print(f"{clock}: threshold min_speedup={chosen[0]:.2f} (CI rule, pairs={args.pairs}) -> false alarms "
                  f"0/{len(same)}, detection "
                  f"{chosen[1]:.0%} ({round(chosen[1] * len(slowed))}/{len(slowed)}) of a {args.slowdown:.0%} slowdown")


if __name__ == "__main__":
    main()
