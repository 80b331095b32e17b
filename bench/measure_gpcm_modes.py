"""Deep-GPCM training steps in each forward mode (sequential / parallel / scan), measured through the engine.

The modes' trainers are built from the same seed and their optimizer steps interleaved step by step in
this process (`harness.jobs.run_group_here`: A B C, C B A, ...), so drift in a shared machine's load
hits every mode alike. Per mode it prints, from the records: the median, p10 and p90 wall ms of a full
optimizer step (fetch, forward, loss, backward, optimizer), the median CPU ms, the mean forward ms per
step (the engine's "forward" phase), samples/s, and the speedup over `sequential` with its 95% interval
(`harness.analysis.speedup.compare`). Then the one-step equivalence of each mode against `sequential`
(`harness.equivalence.check_equivalence`) in float32 and float64: the gpcm workload has no dtype knob,
but the check casts the model and the batches itself, and the model computes in its weights' dtype.

    python bench/measure_gpcm_modes.py --preset cpu
    python bench/measure_gpcm_modes.py --preset seed --device cuda --steps 10
    python bench/measure_gpcm_modes.py --preset cpu memory_size=50 value_dim=200

Measured steps per mode = --steps x --rounds (the engine interleaves single steps, so the two only
multiply); --warmup rounds run first, unmeasured. On a GPU the engine times steps with CUDA events.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import torch

from harness.analysis.speedup import CLOCKS, Comparison, compare
from harness.config import RunConfig, parse_overrides
from harness.equivalence import check_equivalence
from harness.jobs import run_group_here
from harness.registry import resolve
from harness.results import Record
from models.gpcm.model import FORWARD_MODES

BASELINE = "sequential"
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def configs(overrides: dict[str, str], modes: list[str]) -> dict[str, RunConfig]:
    """One speed-run config per mode (same seed, same data), in the order given."""
    unknown = [m for m in modes if m not in FORWARD_MODES]
    if unknown:
        raise ValueError(f"--modes: bad value {','.join(unknown)}; allowed: {', '.join(FORWARD_MODES)}")
    if BASELINE not in modes:
        modes = [BASELINE, *modes]  # speedups and equivalence are over sequential
    base = resolve("gpcm", overrides).replace(epochs=0)
    return {mode: base.replace(forward=mode) for mode in modes}


def measure(cfgs: dict[str, RunConfig], warmup_rounds: int, rounds: int) -> dict[str, Record]:
    """The modes' steps interleaved in this process: one record per mode."""
    records = run_group_here("gpcm-modes", cfgs, rounds=rounds, warmup_rounds=warmup_rounds)
    failed = [r for r in records if r.status != "ok"]
    if failed:
        raise RuntimeError(f"{failed[0].variant}: {failed[0].status}: {failed[0].error}")
    return {r.variant: r for r in records}


def speedups(records: dict[str, Record], clock: str) -> dict[str, Comparison]:
    """Each mode's speedup over sequential from the paired records."""
    base = records[BASELINE]
    return {mode: compare([base], [rec], clock=clock, label=f"gpcm forward={mode} vs {BASELINE}")
            for mode, rec in records.items() if mode != BASELINE}


def equivalence(cfgs: dict[str, RunConfig], dtypes: list[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """mode -> dtype -> `check_equivalence` result against sequential (one optimizer step)."""
    base = cfgs[BASELINE]
    return {mode: {d: check_equivalence(base, cfg, DTYPES[d]) for d in dtypes}
            for mode, cfg in cfgs.items() if mode != BASELINE}


def _fmt(x: float | None, width: int, digits: int = 1) -> str:
    return f"{x:{width}.{digits}f}" if x is not None else f"{'n/a':>{width}}"


def print_report(cfg: RunConfig, records: dict[str, Record], comps: dict[str, Comparison],
                 equiv: dict[str, dict[str, dict[str, Any]]], warmup_rounds: int) -> None:
    """The header, the per-mode table, the equivalence lines and any contention warning."""
    first = next(iter(records.values()))
    clock = next(iter(comps.values())).clock if comps else "n/a"
    print(f"gpcm preset={cfg.preset} batch={cfg.batch_size} N={cfg.memory_size} d_k={cfg.key_dim} "
          f"d_v={cfg.value_dim} lengths={cfg.min_seq_len}..{cfg.max_seq_len} device={cfg.device} "
          f"threads={first.metrics.get('torch_threads')} measured steps/mode={first.metrics.get('measured_steps')} "
          f"(interleaved, after {warmup_rounds} warmup rounds); speedup on the {clock} clock")
    print(f"{'mode':<11} {'step ms':>9} {'p10':>8} {'p90':>8} {'cpu ms':>8} {'fwd ms':>8} {'samples/s':>10}  "
          f"speedup [95% CI]")
    for mode, rec in records.items():
        m = rec.metrics
        speed = "x1 (baseline)" if mode == BASELINE else comps[mode].estimate.describe()
        print(f"{mode:<11} {_fmt(m.get('step_ms_median'), 9)} {_fmt(m.get('step_ms_p10'), 8)} "
              f"{_fmt(m.get('step_ms_p90'), 8)} {_fmt(m.get('step_cpu_ms_median'), 8)} "
              f"{_fmt(rec.phase_ms.get('forward'), 8)} {_fmt(m.get('samples_per_s'), 10)}  {speed}")
    for mode, by_dtype in equiv.items():
        cells = [f"{d} {'pass' if r['passed'] else 'FAIL'} (rel err {r.get('max_rel_err', float('nan')):.1e}, "
                 f"abs {r.get('max_abs_err', float('nan')):.1e})" for d, r in by_dtype.items()]
        print(f"equivalence {mode} vs {BASELINE}: " + "; ".join(cells))
    for mode, rec in records.items():
        if rec.contention.get("verdict"):
            print(f"warning: {mode} contended while measuring: {rec.contention['verdict']}")


def main(argv: list[str] | None = None) -> int:
    """Command line: preset, modes, steps, device, then knob=value overrides."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--modes", default=",".join(FORWARD_MODES))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured rounds (one step per mode each)")
    parser.add_argument("--steps", type=int, default=3, help="measured steps per mode per round")
    parser.add_argument("--rounds", type=int, default=4, help="rounds; measured steps per mode = steps x rounds")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = the harness's default)")
    parser.add_argument("--clock", default="auto", choices=CLOCKS,
                        help="clock of the speedups (auto: this process's CPU time on a CPU, else wall time)")
    parser.add_argument("--dtypes", default="float32,float64", help="dtypes of the equivalence check ('' = skip)")
    parser.add_argument("overrides", nargs="*", help="knob=value, e.g. memory_size=50")
    args = parser.parse_args(argv)
    try:
        overrides = {"preset": args.preset, "device": args.device, **parse_overrides(args.overrides)}
        if args.threads:
            overrides["threads"] = str(args.threads)
        dtypes = [d for d in args.dtypes.split(",") if d]
        if bad := [d for d in dtypes if d not in DTYPES]:
            raise ValueError(f"--dtypes: bad value {','.join(bad)}; allowed: {', '.join(DTYPES)}")
        if min(args.steps, args.rounds) < 1 or args.warmup < 0:
            raise ValueError("--steps and --rounds must be >= 1, --warmup >= 0")
        cfgs = configs(overrides, [m.strip() for m in args.modes.split(",") if m.strip()])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        records = measure(cfgs, args.warmup, args.steps * args.rounds)
    except RuntimeError as exc:  # a failed run (NaN loss, out of memory): its record's error, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    comps = speedups(records, args.clock)
    equiv = equivalence(cfgs, dtypes)
    print_report(cfgs[BASELINE], records, comps, equiv, args.warmup)
    return 0


if __name__ == "__main__":
    sys.exit(main())
