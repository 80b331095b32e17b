"""The instrument's own overhead: the same training steps bare vs under the full instrument.

Both go through the engine (`harness.engine.run`): bare = `instrument=False` (the trainer's step and a
window clock around the whole loop: no per-step clock marks, CPU-time reads, forward hook, sampler
thread or contention probe); instrumented = every probe on. The FLOP-counted step is a warmup step
and is excluded. Runs alternate bare / instrumented so drift hits both; each run is one process-local
window of `bench_steps` steps. Each bare/instrumented pair gives a ratio; the figure is their geometric
mean with a 95% Student-t interval (`harness.analysis.stats.repeat_ratio`), so an overhead below the
run-to-run noise shows as an interval around 0, not as a number that looks exact.

    python bench/measure_overhead.py [key=value ...]      (default: lm preset=tiny batch_size=48 threads=1)

The last line reads ``overhead: X.X% of a Y.Y ms step (bare Z.Z ms)``.
"""

from __future__ import annotations

import os
import statistics
import sys

from harness.analysis.stats import repeat_ratio
from harness.config import parse_overrides
from harness.engine import run
from harness.registry import resolve

REPEATS = int(os.environ.get("REPEATS", 15))


def ms_per_step(cfg, instrument: bool) -> float:
    """Window ms per optimizer step of one run (measured by the engine)."""
    m = run(cfg, instrument=instrument).metrics
    return m["train_wall_s"] * 1e3 / m["measured_steps"]


def main(argv: list[str]) -> None:
    # batch 48 makes the tiny LM's step ~5 ms on one thread: the step size the 1% goal is set at.
    overrides = {"preset": "tiny", "batch_size": 48, "threads": 1, "bench_warmup_steps": 5, "bench_steps": 300,
                 **parse_overrides(argv)}
    cfg = resolve(overrides.pop("workload", "lm"), overrides)
    bare, inst = [], []
    for _ in range(REPEATS):
        bare.append(ms_per_step(cfg, False))
        inst.append(ms_per_step(cfg, True))
    b, i = statistics.median(bare), statistics.median(inst)
    est = repeat_ratio([x / y for x, y in zip(inst, bare, strict=True)])
    print(f"config: {cfg.workload} preset={cfg.preset} batch_size={cfg.batch_size} threads={cfg.threads} "
          f"steps={cfg.bench_steps} x {REPEATS} alternating runs")
    print(f"bare          {b:8.3f} ms/step  (runs: {', '.join(f'{x:.3f}' for x in bare)})")
    print(f"instrumented  {i:8.3f} ms/step  (runs: {', '.join(f'{x:.3f}' for x in inst)})")
    print(f"instrumented / bare, paired by run: {est.describe()} "
          f"(overhead {100 * (est.ci_low - 1):+.1f}% to {100 * (est.ci_high - 1):+.1f}%)")
    print(f"overhead: {100 * (est.ratio - 1):.1f}% of a {i:.1f} ms step (bare {b:.1f} ms)")


if __name__ == "__main__":
    main(sys.argv[1:])
