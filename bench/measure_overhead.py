"""The instrument's own overhead: the same training steps bare vs under the full trainer.

Bare = the plain loop a user would write (fetch, forward, loss, backward, optimizer step) with no
clock marks, no forward hook, no sampler thread. Instrumented = `Trainer.run()` with every probe on
(phase clock, forward counter, NVML/psutil sampler; the FLOP-counted step is a warmup step and is
excluded from both). Runs alternate bare / instrumented so drift hits both; prints the medians
and the overhead in percent of a step.

    python bench/measure_overhead.py [key=value ...]      (default: lm preset=tiny)
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from harness.config import parse_overrides
from harness.data import batches_forever
from harness.registry import resolve
from harness.trainer import Trainer

REPEATS = int(os.environ.get("REPEATS", 7))


def bare_ms_per_step(cfg, steps: int, warmup: int) -> float:
    """The plain loop: ms per optimizer step over `steps` after `warmup`."""
    trainer = Trainer(cfg)
    wl, model, opt = trainer.wl, trainer.model, trainer.opt
    stream = batches_forever(trainer.loader)
    model.train()
    start = 0.0
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        batches = [next(stream)[1] for _ in range(cfg.grad_accum)]
        total = sum(wl.batch_counts(b, cfg).loss_elements for b in batches)
        for batch in batches:
            loss = wl.loss(wl.forward(model, batch, cfg), batch, cfg).total / total
            loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (time.perf_counter() - start) * 1e3 / steps


def instrumented_ms_per_step(cfg) -> float:
    """ms per optimizer step of the measured window of a full trainer run."""
    metrics = Trainer(cfg).run().metrics
    return metrics["train_wall_s"] * 1e3 / metrics["measured_steps"]


def main(argv: list[str]) -> None:
    overrides = {"preset": "tiny", "bench_warmup_steps": 5, "bench_steps": 200, **parse_overrides(argv)}
    cfg = resolve(overrides.pop("workload", "lm"), overrides)
    bare, inst = [], []
    for _ in range(REPEATS):
        bare.append(bare_ms_per_step(cfg, cfg.bench_steps, cfg.bench_warmup_steps))
        inst.append(instrumented_ms_per_step(cfg))
    b, i = statistics.median(bare), statistics.median(inst)
    print(f"config: {cfg.workload} preset={cfg.preset} steps={cfg.bench_steps} x {REPEATS} alternating runs")
    print(f"bare          {b:8.3f} ms/step  (runs: {', '.join(f'{x:.3f}' for x in bare)})")
    print(f"instrumented  {i:8.3f} ms/step  (runs: {', '.join(f'{x:.3f}' for x in inst)})")
    print(f"overhead      {100 * (i - b) / b:+.2f}% of a step")


if __name__ == "__main__":
    main(sys.argv[1:])
