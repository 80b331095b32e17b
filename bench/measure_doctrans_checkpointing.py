"""Measure what gradient checkpointing costs and saves on the doctrans workload, one setting per process.

For every micro-batch shape (batch x accumulation) and checkpointing on/off, a fresh Python process
builds the model from the same seed, runs `warmup` optimizer steps, then times `steps` more
(median wall time per optimizer step) and reads its own peak RSS (``ru_maxrss``: the high-water mark
of the whole process, so each setting needs its own process). Settings are interleaved
(A B C D A B C D ...) over `repeats` so machine drift hits all of them. The training loop is written
out here (no harness trainer) so the figure isolates the model: forward, summed loss divided by the
step's counted tokens, backward, Adam step.

    python bench/measure_doctrans_checkpointing.py --preset cpu --shapes 1x32,8x4 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

MIB = 1024**2


def child(args: argparse.Namespace) -> dict[str, Any]:
    """Train in this process for one setting; return its timings and memory."""
    import psutil
    import torch
    import torch.utils.checkpoint

    from harness.registry import resolve

    torch.set_num_threads(args.threads)
    cfg = resolve("doctrans", {"preset": args.preset, "batch_size": args.batch_size, "grad_accum": args.grad_accum,
                               "grad_checkpointing": args.ckpt == "on", "device": "cpu"})
    wl = cfg.get_workload()
    train, _ = wl.build_datasets(cfg)
    collate = wl.collate(cfg)
    torch.manual_seed(cfg.seed)
    model = wl.build_model(cfg).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    # The first non-reentrant checkpoint call imports torch._dynamo (~85 MiB RSS, ~2 s), whatever the
    # model size. Pay it in both settings before measuring, so the peaks differ by activations only;
    # its size is reported on its own.
    rss_pre_warm_mib = psutil.Process().memory_info().rss / MIB
    probe = torch.nn.Linear(2, 2)
    torch.utils.checkpoint.checkpoint(probe, torch.ones(1, 2, requires_grad=True), use_reentrant=False).sum().backward()
    rss_before_mib = psutil.Process().memory_info().rss / MIB
    step_ms, step_cpu_ms, first_loss, cursor = [], [], None, 0
    for _ in range(args.warmup + args.steps):
        micro = []
        for _ in range(cfg.grad_accum):  # consecutive pages, same order for every shape
            micro.append(collate([train[(cursor + i) % len(train)] for i in range(cfg.batch_size)]))
            cursor += cfg.batch_size
        elements = sum(wl.batch_counts(b, cfg).loss_elements for b in micro)
        start, start_cpu = time.perf_counter(), time.thread_time()
        step_loss = 0.0
        for batch in micro:
            loss = wl.loss(wl.forward(model, batch, cfg), batch, cfg).total / elements
            loss.backward()
            step_loss += loss.item()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step_ms.append((time.perf_counter() - start) * 1000)
        step_cpu_ms.append((time.thread_time() - start_cpu) * 1000)  # less sensitive to a busy machine
        first_loss = step_loss if first_loss is None else first_loss
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MIB  # Linux: KiB
    return {"shape": f"{args.batch_size}x{args.grad_accum}", "ckpt": args.ckpt, "step_ms": step_ms[args.warmup:],
            "step_cpu_ms": step_cpu_ms[args.warmup:], "first_step_loss": first_loss, "peak_rss_mib": peak_rss_mib,
            "rss_before_mib": rss_before_mib, "checkpoint_import_mib": rss_before_mib - rss_pre_warm_mib,
            "samples_per_step": cfg.batch_size * cfg.grad_accum}


def run_setting(args: argparse.Namespace, shape: str, ckpt: str) -> dict[str, Any]:
    """One fresh child process for one (shape, checkpointing) setting."""
    batch, accum = shape.split("x")
    cmd = [sys.executable, __file__, "--child", "--preset", args.preset, "--batch-size", batch, "--grad-accum", accum,
           "--ckpt", ckpt, "--steps", str(args.steps), "--warmup", str(args.warmup), "--threads", str(args.threads)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median over repeats per (shape, ckpt), plus checkpointing's cost and saving per shape."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        row = rows.setdefault((run["shape"], run["ckpt"]), {"step_ms": [], "cpu_ms": [], "peak": [], "delta": [],
                                                            "loss": set(), "samples": run["samples_per_step"]})
        row["step_ms"].append(statistics.median(run["step_ms"]))
        row["cpu_ms"].append(statistics.median(run["step_cpu_ms"]))
        row["peak"].append(run["peak_rss_mib"])
        row["delta"].append(run["peak_rss_mib"] - run["rss_before_mib"])
        row["loss"].add(round(run["first_step_loss"], 6))
    table = []
    for (shape, ckpt), row in rows.items():
        ms = statistics.median(row["step_ms"])
        table.append({"shape": shape, "ckpt": ckpt, "step_ms_median": ms, "step_ms_repeats": row["step_ms"],
                      "step_cpu_ms_median": statistics.median(row["cpu_ms"]),
                      "samples_per_s": row["samples"] / ms * 1000, "peak_rss_mib": statistics.median(row["peak"]),
                      "train_rss_increase_mib": statistics.median(row["delta"]),
                      "first_step_loss": sorted(row["loss"])})
    return table


def main() -> None:
    """Parse arguments; run as the parent (all settings) or as one child setting."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--shapes", default="1x32,8x4", help="micro-batch x accumulation, comma-separated")
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed optimizer steps first")
    parser.add_argument("--repeats", type=int, default=3, help="processes per setting, interleaved")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 = stable on a shared box)")
    parser.add_argument("--json", default="", help="also write the raw runs and the table here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch-size", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--grad-accum", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--ckpt", choices=("on", "off"), default="on", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    from harness.registry import resolve

    cfg = resolve("doctrans", {"preset": args.preset})
    cfg.get_workload().build_datasets(cfg)  # generate + cache once, outside every measured process
    shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    runs = [run_setting(args, shape, ckpt) for _ in range(args.repeats) for shape in shapes for ckpt in ("on", "off")]
    table = summarize(runs)
    print(f"preset={args.preset} threads={args.threads} steps={args.steps} warmup={args.warmup} "
          f"repeats={args.repeats}")
    print(f"{'shape':>6} {'ckpt':>4} {'step_ms':>9} {'cpu_ms':>9} {'samples/s':>9} {'peak_rss_MiB':>12} "
          f"{'train_dRSS_MiB':>14}  first-step loss")
    for r in table:
        print(f"{r['shape']:>6} {r['ckpt']:>4} {r['step_ms_median']:9.1f} {r['step_cpu_ms_median']:9.1f} "
              f"{r['samples_per_s']:9.1f} "
              f"{r['peak_rss_mib']:12.1f} {r['train_rss_increase_mib']:14.1f}  {r['first_step_loss']}")
    by_key = {(r["shape"], r["ckpt"]): r for r in table}
    for shape in shapes:
        on, off = by_key[(shape, "on")], by_key[(shape, "off")]
        time_pct = 100 * (on["step_ms_median"] / off["step_ms_median"] - 1)
        cpu_pct = 100 * (on["step_cpu_ms_median"] / off["step_cpu_ms_median"] - 1)
        saving = off["peak_rss_mib"] - on["peak_rss_mib"]
        loop_saving = off["train_rss_increase_mib"] - on["train_rss_increase_mib"]
        print(f"{shape}: checkpointing costs {time_pct:+.1f}% step time ({cpu_pct:+.1f}% CPU time) and saves "
              f"{saving:.1f} MiB peak RSS ({100 * saving / off['peak_rss_mib']:.1f}% of the process peak; "
              f"{loop_saving:.1f} MiB of the training-loop increase)")
    imports = [r["checkpoint_import_mib"] for r in runs if r["ckpt"] == "on"]
    print(f"one-off cost of the first checkpoint call (imports), paid before measuring: "
          f"{statistics.median(imports):.1f} MiB RSS (median over {len(imports)} processes)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "table": table}, f, indent=1)


if __name__ == "__main__":
    main()
