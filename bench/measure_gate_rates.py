"""False-alarm and detection rates of the ratio gate (`train_bench.compare`) on this machine.

Each repetition builds fresh trainers and runs two interleaved comparisons, exactly as the gate does
(`harness.pytest_plugin.measure_speedup`, the engine's paired mode):

- A/A: the same config against itself; the true speedup is 1.0, so a gate that fails is a false alarm;
- A/A': the same config against a copy planted `--slowdown` (default 10%) slower: after every optimizer
  step the variant burns that fraction of the step's own CPU time in a busy loop (10% more compute,
  slowed by other jobs exactly as the step is); a gate that fails is a detection.

The gate under test is "the candidate is no slower than the reference beyond the noise":
``compare(baseline=A, variant=candidate, min_speedup=T)``. For every threshold T in a grid it prints
both rates under the gate's decision (`harness.analysis.gates.ratio_verdict`: the whole-interval rule,
fail when the 95% interval's upper end < T) and, for contrast only, under the point estimate alone
(fail when the speedup < T: the rule the gate does not use). Both clocks the gate can use are shown
(wall time; this process's CPU time, `clock="auto"` on a CPU without DataLoader workers), each
re-estimated from the same records by `harness.analysis.speedup.compare`; then the T the data lead to:
among the thresholds without a false alarm in the A/A runs, the lowest one with the best detection
rate (the most margin against false alarms at no cost in detection).

    python bench/measure_gate_rates.py                      # lm, tiny, 40 repetitions x 100 pairs
    python bench/measure_gate_rates.py --reps 20 --pairs 30 --workload gpcm forward=scan

The figures depend on the machine and on what else runs on it: quote them with the conditions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from harness.analysis.gates import ratio_verdict
from harness.analysis.speedup import Comparison, compare
from harness.config import RunConfig, parse_overrides
from harness.loads import burn_cpu_s
from harness.probes.timers import PhaseClock
from harness.pytest_plugin import DEFAULT_PAIRS, DEFAULT_WARMUP_PAIRS, measure_speedup
from harness.registry import resolve
from harness.trainer import Trainer
from harness.workload import BatchCounts

THRESHOLDS = (0.90, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 1.00)


class SlowedTrainer(Trainer):
    """A trainer whose every step takes `slowdown` longer: a planted regression of known size."""

    def __init__(self, cfg: RunConfig, slowdown: float) -> None:
        super().__init__(cfg)
        self.slowdown = slowdown

    def train_step(self, stream: Iterator[tuple[int, Any]], clock: PhaseClock,
                   keep_host: list[Any] | None = None) -> tuple[torch.Tensor, list[BatchCounts]]:
        """The normal step followed by `slowdown` x its own CPU time of busy work (10% more compute)."""
        # Not a measurement: the planted load is sized by the step's CPU time; the engine times the step.
        start = time.process_time()
        out = super().train_step(stream, clock, keep_host)
        burn_cpu_s(self.slowdown * (time.process_time() - start))  # slowed by other jobs exactly as compute is
        return out


def run(cfg: RunConfig, reps: int, pairs: int, warmup_pairs: int,
        slowdown: float) -> tuple[list[Comparison], list[Comparison]]:
    """`reps` A/A and A/A' comparisons, alternating which goes first."""
    same, slowed = [], []
    for rep in range(reps):
        jobs: list[tuple[str, Callable[[], Trainer]]] = [
            ("aa", lambda: Trainer(cfg)), ("slow", lambda: SlowedTrainer(cfg, slowdown))]
        for kind, variant in jobs if rep % 2 == 0 else jobs[::-1]:
            result = measure_speedup(Trainer(cfg), variant(), pairs=pairs, warmup_pairs=warmup_pairs)
            (same if kind == "aa" else slowed).append(result)
        a, s = same[-1].estimate, slowed[-1].estimate
        print(f"rep {rep + 1:3d}/{reps}: A/A {a.describe():<24s} A/A' {s.describe():<24s} ({same[-1].clock} clock)",
              flush=True)
    return same, slowed


def on_clock(results: list[Comparison], clock: str) -> list[Comparison]:
    """Every comparison re-estimated on one clock (same records, same step pairs)."""
    return [compare(list(r.baseline), list(r.variant), clock=clock, label=r.label) for r in results]


def gate_fails(c: Comparison, threshold: float) -> bool:
    """The gate's verdict: `ratio_verdict` (whole-interval rule) fails the comparison."""
    return not ratio_verdict(c, threshold)[0]


def point_fails(c: Comparison, threshold: float) -> bool:
    """For contrast only (no gate decides this way): the point estimate alone is below the threshold."""
    return not c.estimate.ratio >= threshold


RULES: dict[str, Callable[[Comparison, float], bool]] = {
    "CI upper < T (the gate)": gate_fails,
    "point < T (contrast)": point_fails,
}


def rates(same: list[Comparison], slowed: list[Comparison], threshold: float,
          rule: Callable[[Comparison, float], bool]) -> tuple[float, float]:
    """(false-alarm rate, detection rate) of a decision rule at a threshold."""
    return (float(np.mean([rule(c, threshold) for c in same])), float(np.mean([rule(c, threshold) for c in slowed])))


def report(same: list[Comparison], slowed: list[Comparison], clock: str) -> tuple[float, float] | None:
    """Print both rates per threshold and rule on one clock; returns (T, detection) of the gate's choice."""
    aa, ab = on_clock(same, clock), on_clock(slowed, clock)
    ea, eb = [c.estimate for c in aa], [c.estimate for c in ab]
    widths = [e.ci_high - e.ci_low for e in ea + eb if e.has_interval]
    print(f"\n{clock} clock: A/A speedup median {statistics.median(e.ratio for e in ea):.3f} "
          f"(min {min(e.ratio for e in ea):.3f}, max {max(e.ratio for e in ea):.3f}); A/A' median "
          f"{statistics.median(e.ratio for e in eb):.3f}; median 95% CI width "
          + (f"{statistics.median(widths):.3f} ({ea[0].method})" if widths else f"n/a ({ea[0].describe()})"))
    print("   T    " + "".join(f"{name:>34s}" for name in RULES))
    print("        " + "        false alarm  detection" * len(RULES))
    clean = []  # (T, detection) of the gate where it raised no false alarm
    for t in THRESHOLDS:
        cells = [rates(aa, ab, t, rule) for rule in RULES.values()]
        print(f"{t:6.2f}  " + "".join(f"{fa:19.0%}{det:11.0%}" for fa, det in cells))
        if cells[0][0] == 0.0:
            clean.append((t, cells[0][1]))
    if not clean:
        return None
    best = max(det for _, det in clean)
    return min(t for t, det in clean if det == best), best  # the best detection, farthest from false alarms


def main(argv: list[str] | None = None) -> int:
    """Parse, run the repetitions, print the per-clock tables and the threshold the data support."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workload", default="lm")
    parser.add_argument("--reps", type=int, default=40, help="repetitions of each of A/A and A/A' (>= 20)")
    parser.add_argument("--pairs", type=int, default=100,
                        help=f"interleaved step pairs per comparison (the gate's default is {DEFAULT_PAIRS})")
    parser.add_argument("--warmup-pairs", type=int, default=DEFAULT_WARMUP_PAIRS)
    parser.add_argument("--slowdown", type=float, default=0.10, help="planted slowdown of the A' variant")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: the harness's default)")
    parser.add_argument("overrides", nargs="*", help="knob=value for both sides (preset defaults to tiny)")
    args = parser.parse_args(argv)
    try:
        if args.reps < 1 or args.pairs < 2 or args.warmup_pairs < 0 or args.slowdown < 0:
            raise ValueError("--reps >= 1, --pairs >= 2, --warmup-pairs >= 0 and --slowdown >= 0 are required")
        threads = {"threads": args.threads} if args.threads else {}
        cfg = resolve(args.workload, {"preset": "tiny", **threads, **parse_overrides(args.overrides)})
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    same, slowed = run(cfg, args.reps, args.pairs, args.warmup_pairs, args.slowdown)
    wall_s = time.perf_counter() - start

    print(f"\n{args.workload} {' '.join(args.overrides) or 'preset=tiny'}: {args.reps} x (A/A, A/A'), "
          f"{args.pairs} pairs each, planted slowdown {args.slowdown:.0%} of the step's CPU time, torch threads "
          f"{same[0].baseline[0].metrics.get('torch_threads')}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}, {wall_s:.0f} s")
    for clock in ("wall", "cpu"):
        chosen = report(same, slowed, clock)
        if chosen is None:
            print(f"{clock}: no threshold in the grid is free of false alarms: too noisy for a "
                  f"{args.slowdown:.0%} gate")
        else:
            print(f"{clock}: threshold min_speedup={chosen[0]:.2f} (whole-interval rule, pairs={args.pairs}) -> "
                  f"false alarms 0/{len(same)}, detection {chosen[1]:.0%} ({round(chosen[1] * len(slowed))}/"
                  f"{len(slowed)}) of a {args.slowdown:.0%} slowdown")
    return 0


if __name__ == "__main__":
    sys.exit(main())
