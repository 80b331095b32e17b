"""Calibration of the sweep path: A/A coverage and how often planted slowdowns of known size are resolved.

Each repetition runs one experiment through `harness.runner.run_experiment` exactly as `trainbench
sweep` does (fresh process per run, interleaved repeats, contended runs re-run, repeats added until
the target half-width or the budget): the tiny LM as the baseline, the same config again (A/A), and
the same config with a planted 10% and 3% slowdown (`bench/planted.py`: `extra_ms` of CPU work per
forward, sized from a calibration run of the baseline's step time). Then per repetition:

- A/A: does the speedup's 95% interval contain 1 (it should, 95% of the time)?
- 10% / 3% slowdown: is it resolved (the interval's upper end below 1)?
- the half-width each interval reached.

    python bench/measure_precision.py [--trials 20] [--aa-only] [--busy] [key=value ...]

`--busy` runs one `python -c 'while True: pass'` beside the whole measurement (killed at the end); `--aa-only`
runs the baseline and its A/A copy only (half the runs: the coverage calibration). The last line reads ``A/A
coverage: X% [L, H] of N intervals contain 1; 10% slowdown resolved in Y% of N; 3% slowdown resolved in Z% of N;
median half-width W%``, [L, H] being the coverage's own 95% binomial (Wilson) interval.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))  # `planted:WORKLOAD`, here and (through PYTHONPATH) in every child
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(BENCH), os.environ.get("PYTHONPATH", "")]))

from simulate_coverage import binomial_interval  # noqa: E402

from harness.analysis import decision, summarize  # noqa: E402
from harness.analysis.stats import RatioEstimate  # noqa: E402
from harness.config import parse_overrides  # noqa: E402
from harness.engine import run  # noqa: E402
from harness.experiment import build  # noqa: E402
from harness.registry import resolve  # noqa: E402
from harness.results import load_records  # noqa: E402
from harness.runner import run_experiment  # noqa: E402

WORKLOAD = "planted:WORKLOAD"
SLOWDOWNS = {"slow10": 0.10, "slow3": 0.03}


def calibrate_step_ms(base: dict[str, object]) -> float:
    """The baseline's median step ms (in this process, through the engine): sizes the planted work."""
    return float(run(resolve(WORKLOAD, base)).metrics["step_ms_median"])


def one_repetition(base: dict[str, object], step_ms: float, out: Path, precision: dict[str, float],
                   slowdowns: dict[str, float] = SLOWDOWNS) -> dict:
    """Run the A/A + slowdown experiment once through the sweep path; per variant its interval."""
    variants = {"aa": {"seed": base.get("seed", 0)},
                **{name: {"extra_ms": frac * step_ms} for name, frac in slowdowns.items()}}
    exp = build("precision", WORKLOAD, base, variants, baseline_name="baseline", repeats=3, equivalence=False,
                allow_same=True, **precision)
    run_experiment(exp, out)
    s = summarize(load_records(out), "baseline")
    return {v: {"ratio": float(s.at[v, "speedup"]), "low": float(s.at[v, "speedup_ci_low"]),
                "high": float(s.at[v, "speedup_ci_high"]), "half": float(s.at[v, "speedup_half_width_pct"]),
                "n": int(s.at[v, "speedup_pairs"]), "reruns": int(s.at[v, "reruns"])} for v in variants}


def _estimate(x: dict) -> RatioEstimate:
    return RatioEstimate(x["ratio"], x["low"], x["high"], x["n"], "t")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", "--reps", dest="reps", type=int, default=20,
                        help="experiments to run (A/A intervals)")
    parser.add_argument("--aa-only", action="store_true", help="no planted slowdowns: the baseline and its copy")
    parser.add_argument("--busy", action="store_true", help="one busy-loop process beside the measurement")
    parser.add_argument("--target", type=float, default=3.0, help="target half-width, percent")
    parser.add_argument("--max-repeats", type=int, default=10)
    parser.add_argument("--budget-s", type=float, default=120.0, help="seconds of added runs per experiment")
    parser.add_argument("items", nargs="*", help="knob=value overrides of the tiny LM baseline")
    args = parser.parse_args(argv)
    # a window of ~0.5 s (300 steps of ~1.6 ms): the default sweep's windows are seconds long; a 0.1 s window
    # measures how one scheduler hiccup moves a tiny run, not what the sweep resolves
    base: dict[str, object] = {"preset": "tiny", "bench_warmup_steps": 10, "bench_steps": 300,
                               **parse_overrides(args.items)}
    slowdowns = {} if args.aa_only else SLOWDOWNS
    precision = {"target_half_width_pct": args.target, "max_repeats": args.max_repeats, "budget_s": args.budget_s}
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    start = time.perf_counter()
    try:
        step_ms = calibrate_step_ms(base)
        print(f"baseline step {step_ms:.2f} ms; planted: "
              + ", ".join(f"{v} = {f * step_ms:.3f} ms/forward" for v, f in SLOWDOWNS.items())
              + f"; machine {'with one busy process' if busy else 'as it is'}", flush=True)
        results = []
        with tempfile.TemporaryDirectory(prefix="trainbench-precision-") as tmp:
            for i in range(args.reps):
                r = one_repetition(base, step_ms, Path(tmp) / f"rep{i}", precision, slowdowns)
                results.append(r)
                print(f"rep {i + 1:>2}/{args.reps}: " + "; ".join(
                    f"{v} x{x['ratio']:.3f} [{x['low']:.3f}, {x['high']:.3f}] ±{x['half']:.1f}% n={x['n']}"
                    + (f" re-runs {x['reruns']}" if x["reruns"] else "") for v, x in r.items()), flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    aa = [r["aa"] for r in results]
    covered = sum(decision.contains(_estimate(x), 1.0) for x in aa)
    resolved = {v: sum(decision.decide(_estimate(r[v])).side == decision.BELOW for r in results) for v in slowdowns}
    halves = [x["half"] for r in results for x in r.values() if math.isfinite(x["half"])]
    repeats = [x["n"] for r in results for x in r.values()]
    n = len(results)
    low, high = binomial_interval(covered, n)
    print(f"{n} experiments in {time.perf_counter() - start:.0f} s; repeats per interval "
          f"{min(repeats)}-{max(repeats)} (median {statistics.median(repeats):g})")
    print(f"A/A coverage: {100 * covered / n:.1f}% [{low:.1f}, {high:.1f}] of {n} intervals contain 1; "
          + "".join(f"{100 * SLOWDOWNS[v]:g}% slowdown resolved in {100 * k / n:.0f}% of {n}; "
                    for v, k in resolved.items())
          + f"median half-width {statistics.median(halves) if halves else float('nan'):.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
