"""Measure what gradient checkpointing costs and saves on the doctrans workload, one setting per process.

For every micro-batch shape (batch x accumulation, effective batch 32 by default) and checkpointing
on/off, a fresh worker process (`harness.launch.Launcher`: ``python -m harness.worker``) builds the
trainer from the same seed and runs a speed run through the engine: `--warmup` optimizer steps, then
`--steps` measured ones. Settings are interleaved (A B C D A B C D ...) over `--repeats` so machine
drift hits all of them. Everything printed comes from the records: median step wall ms and CPU ms,
samples/s, `peak_rss_gib` (the engine's high-water mark of the process's RSS over the measured window;
the worker imports torch._dynamo before every run, so checkpointing's one-off import is paid by both
settings and the peaks differ by what training holds), the final training loss, and per shape the
throughput ratio of checkpointing on over off (`harness.analysis.speedup.compare`, paired by repeat;
an interval from 3 repeats) with the peak-RSS saving.

    python bench/measure_doctrans_checkpointing.py --preset cpu --shapes 1x32,8x4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from harness.analysis import stats
from harness.analysis.speedup import compare
from harness.config import RunConfig, parse_overrides
from harness.jobs import Job, records_from
from harness.launch import Launcher
from harness.registry import resolve
from harness.results import Record

EXPERIMENT = "doctrans-checkpointing"
MIB_PER_GIB = 1024
SETTINGS = ("on", "off")


def parse_shapes(text: str) -> list[tuple[int, int]]:
    """``1x32,8x4`` -> [(1, 32), (8, 4)]; ValueError naming a bad shape."""
    shapes = []
    for item in (s.strip() for s in text.split(",") if s.strip()):
        batch, _, accum = item.partition("x")
        if not (batch.isdigit() and accum.isdigit() and int(batch) > 0 and int(accum) > 0):
            raise ValueError(f"--shapes: bad value {item!r}; write BATCHxACCUM, e.g. 1x32,8x4")
        shapes.append((int(batch), int(accum)))
    if not shapes:
        raise ValueError("--shapes: empty; write BATCHxACCUM, e.g. 1x32,8x4")
    return shapes


def setting_config(base: dict[str, Any], shape: tuple[int, int], ckpt: str) -> RunConfig:
    """The speed-run config of one (shape, checkpointing) setting."""
    return resolve("doctrans", base, {"batch_size": shape[0], "grad_accum": shape[1],
                                      "grad_checkpointing": ckpt == "on", "epochs": 0})


def run_settings(base: dict[str, Any], shapes: list[tuple[int, int]], repeats: int, timeout_s: float,
                 progress: bool = True) -> list[Record]:
    """Every (repeat, shape, ckpt) in its own fresh process, interleaved; one record each."""
    launcher = Launcher()
    records: list[Record] = []
    with tempfile.TemporaryDirectory(prefix="trainbench-ckpt-") as tmp:
        for repeat in range(repeats):
            for shape in shapes:
                for ckpt in SETTINGS:
                    cfg = setting_config(base, shape, ckpt)
                    job = Job(experiment=EXPERIMENT, variant=_variant(shape, ckpt), phase="speed", repeat=repeat,
                              config=cfg.to_dict(), timeout_s=timeout_s)
                    (record,) = records_from(EXPERIMENT, job, launcher.launch(job, Path(tmp)))
                    if record.status != "ok":
                        raise RuntimeError(f"{job.variant} repeat {repeat}: {record.status}: {record.error}")
                    if progress:
                        print(f"  repeat {repeat + 1}/{repeats} {job.variant}: "
                              f"{record.metrics['step_ms_median']:.1f} ms/step", file=sys.stderr, flush=True)
                    records.append(record)
    launcher.close()
    return records


def _variant(shape: tuple[int, int], ckpt: str) -> str:
    return f"{shape[0]}x{shape[1]} ckpt={ckpt}"


def summarize(records: list[Record], shapes: list[tuple[int, int]]) -> list[dict[str, Any]]:
    """Per (shape, ckpt): the medians over repeats of each record's figures."""
    table = []
    for shape in shapes:
        for ckpt in SETTINGS:
            recs = [r for r in records if r.variant == _variant(shape, ckpt)]

            def med(metric: str, recs: list[Record] = recs) -> float:
                return stats.median([r.metrics.get(metric) for r in recs])

            table.append({"shape": f"{shape[0]}x{shape[1]}", "ckpt": ckpt, "step_ms_median": med("step_ms_median"),
                          "step_ms_repeats": [r.metrics.get("step_ms_median") for r in recs],
                          "step_cpu_ms_median": med("step_cpu_ms_median"), "samples_per_s": med("samples_per_s"),
                          "peak_rss_gib": med("peak_rss_gib"), "final_loss": med("final_loss"),
                          "contended": sum(bool(r.contention.get("verdict")) for r in recs)})
    return table


def checkpointing_effect(records: list[Record], shape: tuple[int, int]) -> dict[str, Any]:
    """Throughput of checkpointing on over off (wall and CPU clock, paired by repeat) and the RSS saving."""
    on = [r for r in records if r.variant == _variant(shape, "on")]
    off = [r for r in records if r.variant == _variant(shape, "off")]
    peak_on = stats.median([r.metrics.get("peak_rss_gib") for r in on])
    peak_off = stats.median([r.metrics.get("peak_rss_gib") for r in off])
    return {"wall": compare(off, on, clock="wall").estimate, "cpu": compare(off, on, clock="cpu").estimate,
            "saving_gib": peak_off - peak_on, "saving_pct": 100 * (peak_off - peak_on) / peak_off}


def _cost(est: stats.RatioEstimate) -> str:
    # A throughput ratio r of on over off is a step-time cost of 1/r - 1 (the interval's ends swap).
    if not est.has_interval:
        return f"{100 * (1 / est.ratio - 1):+.1f}%"
    return f"{100 * (1 / est.ratio - 1):+.1f}% [{100 * (1 / est.ci_high - 1):+.1f}, {100 * (1 / est.ci_low - 1):+.1f}]"


def main(argv: list[str] | None = None) -> int:
    """Run every setting in its own process and print the table and checkpointing's effect per shape."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--shapes", default="1x32,8x4", help="micro-batch x accumulation, comma-separated")
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="unmeasured optimizer steps first")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting, interleaved (>= 3: intervals)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = stable on a shared box)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before a setting's process is killed")
    parser.add_argument("--json", default="", help="also write the records and the table here")
    parser.add_argument("overrides", nargs="*", help="knob=value for every setting, e.g. image_h=32")
    args = parser.parse_args(argv)
    try:
        shapes = parse_shapes(args.shapes)
        if min(args.steps, args.warmup, args.repeats) < 1:
            raise ValueError("--steps, --warmup and --repeats must be >= 1")
        base = {"preset": args.preset, "device": "cpu", "threads": args.threads, "bench_steps": args.steps,
                "bench_warmup_steps": args.warmup, **parse_overrides(args.overrides)}
        for shape in shapes:
            setting_config(base, shape, "on")  # a bad knob is a usage error before anything runs
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cfg = resolve("doctrans", base)
    cfg.get_workload().build_datasets(cfg)  # generate + cache once, outside every measured process
    try:
        records = run_settings(base, shapes, args.repeats, args.timeout)
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = summarize(records, shapes)
    print(f"preset={args.preset} threads={args.threads} steps={args.steps} warmup={args.warmup} "
          f"repeats={args.repeats} (medians over repeats; peak RSS = the engine's window high-water mark)")
    print(f"{'shape':>6} {'ckpt':>4} {'step_ms':>9} {'cpu_ms':>9} {'samples/s':>9} {'peak_rss_MiB':>12} "
          f"{'final_loss':>10}")
    for r in table:
        print(f"{r['shape']:>6} {r['ckpt']:>4} {r['step_ms_median']:9.1f} {r['step_cpu_ms_median']:9.1f} "
              f"{r['samples_per_s']:9.1f} {r['peak_rss_gib'] * MIB_PER_GIB:12.1f} {r['final_loss']:10.4f}"
              + (f"  ({r['contended']} contended)" if r["contended"] else ""))
    effects = {}
    for shape in shapes:
        e = effects[f"{shape[0]}x{shape[1]}"] = checkpointing_effect(records, shape)
        print(f"{shape[0]}x{shape[1]}: checkpointing costs {_cost(e['wall'])} step time ({_cost(e['cpu'])} CPU time) "
              f"and saves {e['saving_gib'] * MIB_PER_GIB:.1f} MiB peak RSS ({e['saving_pct']:.1f}% of the peak)")
    short = [e["wall"] for e in effects.values() if not e["wall"].has_interval]
    if short:
        print(f"(no intervals: on/off is paired by repeat; {short[0].n} pair(s), an interval needs >= {short[0].need})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "table": table, "records": [asdict(r) for r in records],
                       "effects": {k: {**v, "wall": asdict(v["wall"]), "cpu": asdict(v["cpu"])}
                                   for k, v in effects.items()}}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
