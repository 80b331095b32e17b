"""The commands that read results: `report`, `compare` (two directories, or this tree against a revision),
`reference`."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import registry
from harness.cli.common import (
    print_and_report,
    split_args,
)
from harness.experiment import (
    load_saved_experiment,
)
from harness.registry import resolve
from harness.results import check_writable_dir, find_results, folder_name, load_records


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render the report of a results directory."""
    results = find_results(args.results)  # a results directory, or a report's folder with its results/
    load_records(results)  # ValueError (exit 2) when there is nothing to report
    exp = load_saved_experiment(results)
    # by default beside the others under reports/, named after the results directory: re-rendering one
    # run's results never overwrites another's report
    out = check_writable_dir(args.out or Path("reports") / Path(args.results).resolve().name)
    return print_and_report(results, out, exp, check=args.check)


def cmd_compare(args: argparse.Namespace) -> int:
    """Per variant and metric change between two result directories, or (`--against REF`) this tree's code
    measured against a base revision's."""
    if args.against is not None:
        return _compare_against(args)
    from harness.analysis.compare import InsufficientEvidence, compare

    if len(args.items) != 2:
        raise ValueError(f"compare takes two results directories (got {len(args.items)}: {' '.join(args.items)}); "
                         "or measure this tree against a revision: trainbench compare --against main [WORKLOAD ...]")
    if args.fail_on is None:
        args.fail_on = []
    try:
        text, failed = compare(Path(args.items[0]), Path(args.items[1]), args.fail_on)
    except InsufficientEvidence as exc:
        print(exc.text)  # the table, then the one-line error (exit 2)
        raise
    print(text)
    return 1 if failed else 0


def _compare_against(args: argparse.Namespace) -> int:
    from harness import against

    if args.fail_on:
        raise ValueError("--fail-on applies to two results directories; --against decides on the interval "
                         f"(--min-change, default {against.MIN_CHANGE_PCT:g}%)")
    positional, overrides = split_args(args.items)
    workloads = positional or sorted(registry.builtin())
    overrides = {"preset": "tiny", **overrides}
    for w in workloads:
        resolve(w, overrides)  # an unknown workload or knob: one line, before anything runs
    base = against.resolve_base(args.against)
    if not base.changed:
        print(f"no code change against {base.short} ({base.ref}) under {', '.join(against.CODE_PATHS)}: "
              "nothing to compare")
        return 0
    if not positional:  # every built-in workload whose code the change can reach
        untouched = [w for w in workloads if not base.touches(w)]
        workloads = [w for w in workloads if base.touches(w)]
        if untouched:
            print(f"skipped {', '.join(untouched)}: none of their code changed")
    out = check_writable_dir(args.out or f"runs/against-{base.short}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(f"old: {base.short} ({base.ref}); new: this working tree ({len(base.changed)} code files differ: "
          f"{', '.join(base.changed[:5])}{' ...' if len(base.changed) > 5 else ''})")
    failed = 0
    with against.exported(base) as root:
        against.check_imports_from(root)
        for w in workloads:
            res = against.against(w, overrides, base, root, out / folder_name(w), min_change_pct=args.min_change,
                                  budget_s=args.budget_s)
            print(("ok   " if res.passed else "FAIL ") + res.message)
            failed += not res.passed
    print(f"records: {out}")
    return 1 if failed else 0


def cmd_reference(args: argparse.Namespace) -> int:
    """Check (or with --update rewrite) each workload's stored training trajectory and counters."""
    from harness import reference

    workloads = args.workloads or sorted(registry.builtin())
    for w in workloads:
        registry.get(w)  # an unknown workload: one line, before anything runs
    if args.update:
        for line in reference.update(workloads):
            print(line)
        return 0
    failed = 0
    for w in workloads:
        passed, message = reference.check(w)
        print(("ok   " if passed else "FAIL ") + message)
        failed += not passed
    return 1 if failed else 0
