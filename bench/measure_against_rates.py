"""False-alarm and detection rates of the old-against-new gate (`harness.against`), measured.

Both trees are exported from HEAD (`git archive`); the "new" one optionally carries a planted slowdown
of known size: `extra_ms` of CPU work after every forward of the LM workload, sized as a fraction of the
tiny LM's step (measured here first). Each repetition is one full `against` run, exactly as
`trainbench compare --against` and `pytest bench --trainbench-against` make it: fresh processes
alternating old/new, contended runs re-run, repeats added to the target half-width, and the verdict
(fail = new resolved slower by more than the threshold).

    python bench/measure_against_rates.py [--reps 10] [--busy] [--max-repeats 10] [key=value ...]

The last line reads ``old == new: false alarms in X% of N; 10% slowdown caught in Y% of N; 5% slowdown
caught in Z% of N; median half-width W%``.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import against
from harness.config import parse_overrides
from harness.engine import run
from harness.registry import resolve

KNOBS = {"preset": "tiny"}
SLOWDOWNS = {"same": 0.0, "slow10": 0.10, "slow5": 0.05}
PLANT = '''

# planted by bench/measure_against_rates.py: {ms} ms of CPU work after every forward
import time as _planted_time

_planted_forward = LMWorkload.forward


def _slower_forward(self, model, batch, cfg):
    out = _planted_forward(self, model, batch, cfg)
    until = _planted_time.process_time() + {ms} / 1e3  # self-contained (harness.loads.burn_cpu_s): it runs
    while _planted_time.process_time() < until:  # in the base revision's tree, which may predate harness.loads
        pass
    return out


LMWorkload.forward = _slower_forward
'''


def one(base: against.Base, old: Path, frac: float, step_ms: float, tmp: Path, i: int, knobs: dict,
        max_repeats: int, budget_s: float = 120.0) -> against.AgainstResult:
    with against.exported(base) as new:
        if frac:
            path = new / "models" / "lm" / "workload.py"
            path.write_text(path.read_text() + PLANT.format(ms=f"{frac * step_ms:.4f}"))
        return against.against("lm", knobs, base, old, tmp / f"{frac}-{i}", new_root=new, max_repeats=max_repeats,
                               budget_s=budget_s)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=10, help="against runs per condition")
    parser.add_argument("--busy", action="store_true", help="one busy-loop process beside the measurement")
    parser.add_argument("--max-repeats", type=int, default=10, help="repeats per against run, at most")
    parser.add_argument("--budget-s", type=float, default=120.0,
                        help="seconds of added repeats and re-runs per against run (0: the planned 3 only)")
    parser.add_argument("items", nargs="*", help="knob=value overrides of the tiny LM (default: windows of ~0.5 s)")
    args = parser.parse_args(argv)
    if args.reps < 1 or args.max_repeats < 3:
        print(f"error: --reps {args.reps} / --max-repeats {args.max_repeats}: use --reps >= 1 and --max-repeats >= 3 "
              "(an interval needs 3 repeats)", file=sys.stderr)
        sys.exit(2)
    knobs = {**KNOBS, **parse_overrides(args.items)}
    head = against.resolve_base("HEAD")
    base = against.Base(ref="HEAD", sha=head.sha, changed=("models/lm/workload.py (planted)",))
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    start = time.perf_counter()
    caught: dict[str, list[bool]] = {k: [] for k in SLOWDOWNS}
    halves: list[float] = []
    try:
        step_ms = float(run(resolve("lm", {**knobs, "bench_steps": 200})).metrics["step_ms_median"])
        print(f"tiny LM step {step_ms:.2f} ms; machine {'with one busy process' if busy else 'as it is'}", flush=True)
        with against.exported(base) as old, tempfile.TemporaryDirectory(prefix="trainbench-rates-") as tmp:
            for i in range(args.reps):
                for name, frac in SLOWDOWNS.items():  # conditions alternate, so drift hits all alike
                    res = one(base, old, frac, step_ms, Path(tmp), i, knobs, args.max_repeats, args.budget_s)
                    caught[name].append(not res.passed)
                    if res.wall is not None:
                        halves.append(res.wall.estimate.half_width_pct)
                    e = res.wall.estimate if res.wall is not None else None
                    print(f"rep {i + 1:>2}/{args.reps} {name}: " + (f"x{e.ratio:.3f} [{e.ci_low:.3f}, {e.ci_high:.3f}]"
                          f" n={e.n}" if e else res.message) + (" -> FAIL" if not res.passed else " -> pass"),
                          flush=True)
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    n = args.reps

    def pct(k: str) -> str:
        return f"{100 * sum(caught[k]) / n:.0f}% of {n}"
    half = statistics.median(halves) if halves else float("nan")
    print(f"{3 * n} against runs in {time.perf_counter() - start:.0f} s")
    print(f"old == new: false alarms in {pct('same')}; 10% slowdown caught in {pct('slow10')}; "
          f"5% slowdown caught in {pct('slow5')}; median half-width {half:.1f}%")


if __name__ == "__main__":
    main(sys.argv[1:])
