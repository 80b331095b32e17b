"""`trainbench run | sweep | report | compare | reference | fit | list | doctor | profile`.

User mistakes (bad knob, bad value, missing file, malformed TOML) print one ``error: ...`` line and
exit 2 before anything is written; failed runs or failed gates exit 1; success exits 0.

Each command group has its room: `measure` (run, sweep, fit, profile), `read` (report, compare,
reference), `info` (list, doctor); `common` holds what they share.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from harness.against import MIN_CHANGE_PCT
from harness.cli.info import cmd_doctor, cmd_list
from harness.cli.measure import cmd_fit, cmd_profile, cmd_run, cmd_sweep
from harness.cli.read import cmd_compare, cmd_reference, cmd_report


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="trainbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="workloads, presets, knobs, experiments")
    s.add_argument("workload", nargs="?")
    s.add_argument("--all-knobs", action="store_true", help="repeat the generic knobs under every workload")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("run", help="profile one config (WORKLOAD key=value ...), or a grid (key=a,b,c)")
    s.add_argument("items", nargs="*", metavar="WORKLOAD|key=value")
    s.add_argument("--repeats", type=int, metavar="N",
                   help="exactly N fresh-process runs per config (default: 1; a grid: 3, then more until each "
                        "point's interval is within ±3%%, at most 10)")
    s.add_argument("--out")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds per run before it is killed")
    s.add_argument("--resume", action="store_true")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("sweep", help="run experiment TOML files (default: all in bench/experiments)")
    s.add_argument("items", nargs="*", metavar="FILE.toml|key=value")
    s.add_argument("--out", help="results directory (default runs/<experiment>-<time>)")
    s.add_argument("--reports", help="where reports go (default: reports/, the committed examples; OUT/reports with "
                   "--out; runs/quick-TIME/reports with --quick)")
    s.add_argument("--resume", action="store_true", help="continue a killed sweep in --out")
    s.add_argument("--check", action="store_true", help="exit 1 when a gate fails")
    s.add_argument("--quick", action="store_true",
                   help="smoke run: tiny presets, 1 repeat, 1 quality epoch; without files, the bundled experiments "
                        "that launch no torchrun ranks")
    s.add_argument("--budget-min", type=float, default=10.0, metavar="M",
                   help="the sweep's time budget in minutes (default 10): added repeats and contention re-runs stop "
                        "so that it ends in time, each experiment taking its share of what is left; the planned "
                        "runs always run; 0 = only each experiment's own budget_s")
    s.add_argument("--aa", action="store_true", help="A/A: the baseline against itself (noise floor)")
    s.add_argument("--repeats", type=int, help="override every experiment's repeats")
    s.add_argument("--index", action="store_true", help="also rewrite reports/README.md")
    s.set_defaults(fn=cmd_sweep)

    s = sub.add_parser("report", help="write the report of a results directory")
    s.add_argument("results")
    s.add_argument("--out")
    s.add_argument("--check", action="store_true")
    s.set_defaults(fn=cmd_report)

    s = sub.add_parser("compare", help="compare two results directories, or this tree's code against a revision")
    s.add_argument("items", nargs="*", metavar="OLD NEW | WORKLOAD key=value",
                   help="two results directories; with --against: workloads (default: all, preset=tiny) and knobs")
    s.add_argument("--fail-on", action="append", metavar="METRIC:-10%")
    s.add_argument("--against", metavar="REF", nargs="?", const="auto",
                   help="measure this working tree's code against revision REF (default: the merge base with main), "
                        "old and new interleaved; exit 1 on a resolved slowdown")
    s.add_argument("--min-change", type=float, default=MIN_CHANGE_PCT, metavar="PCT",
                   help=f"with --against: smallest slowdown that fails (default {MIN_CHANGE_PCT:g}%%)")
    s.add_argument("--out", help="with --against: results directory (default runs/against-SHA-TIME)")
    s.add_argument("--budget-s", type=float, default=120.0, metavar="S",
                   help="with --against: seconds of added repeats and re-runs per workload (default 120)")
    s.set_defaults(fn=cmd_compare)

    s = sub.add_parser("reference", help="check each workload's stored loss trajectory, quality and counters "
                                         "(bench/references/); --update rewrites them and prints what changed")
    s.add_argument("workloads", nargs="*", metavar="WORKLOAD", help="default: every built-in workload")
    s.add_argument("--update", action="store_true", help="measure and rewrite the references")
    s.set_defaults(fn=cmd_reference)

    s = sub.add_parser("doctor", help="what this machine can measure; --mde: the smallest slowdown it detects")
    s.add_argument("--mde", action="store_true",
                   help="run an A/A experiment of WORKLOAD (default lm) and print the slowdown detected with 80%% "
                        "power at a sweep's repeats and the gate's")
    s.add_argument("--repeats", type=int, default=8, help="--mde: A/A repeats (default 8)")
    s.add_argument("items", nargs="*", metavar="WORKLOAD|key=value", help="--mde: the workload and its knobs")
    s.set_defaults(fn=cmd_doctor)

    s = sub.add_parser("fit", help="the largest batch_size (or --knob) whose run stays within --memory GiB")
    s.add_argument("items", nargs="*", metavar="WORKLOAD|key=value")
    s.add_argument("--memory", type=float, metavar="GiB",
                   help="the budget (default on a GPU: its memory; required on a CPU, compared with peak RSS)")
    s.add_argument("--knob", default="batch_size", help="the integer knob to search (default batch_size)")
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per probe before it is killed")
    s.add_argument("--effective-batch", type=int, metavar="B",
                   help="then measure every batch_size x grad_accum = B that fits, ranked by samples/s")
    s.add_argument("--out", help="results of the --effective-batch ranking (report in OUT/report)")
    s.add_argument("--repeats", type=int, help="--effective-batch: exactly N repeats per split, none added "
                   "(default: 3, then more until each interval is within ±3%%)")
    s.set_defaults(fn=cmd_fit)

    s = sub.add_parser("profile", help="torch.profiler traces and top operators for one config")
    s.add_argument("items", nargs="*", metavar="WORKLOAD|key=value")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--out")
    s.set_defaults(fn=cmd_profile)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `trainbench` command."""
    # `trainbench run mymodels:WORKLOAD` finds mymodels.py in the working directory, as `python -m` would
    # (an installed console script puts only its own directory on sys.path; each run's process gets the
    # working directory on PYTHONPATH from `harness.launch.child_env`)
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are in records.jsonl; continue with --resume", file=sys.stderr)
        return 130
