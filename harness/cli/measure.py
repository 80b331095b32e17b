"""The commands that measure: `run` (one config or a grid), `sweep` (experiment files), `fit`, `profile`."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

from harness import registry
from harness.cli.common import (
    CLI_START,
    SWEEP_ETA,
    experiments_dir,
    failed_runs,
    machine_text,
    one_workload,
    print_and_report,
    progress,
    split_args,
    validate_gates,
)
from harness.config import resolve_device, runtime_warnings
from harness.eta import MACHINE_CHECK, Eta, overhead_key
from harness.experiment import (
    Experiment,
    build,
    load_experiments,
)
from harness.jobs import plan
from harness.knobs import world_of
from harness.launch import Launcher, default_launcher, usable
from harness.registry import resolve
from harness.results import check_writable_dir, folder_name
from harness.runner import run_experiment


def grid_items(workload: str, overrides: dict[str, str]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """(fixed knobs, swept knobs): a value with commas sweeps the knob (``batch_size=8,16,32``) unless the knob
    is free text (a str knob without a list of allowed values keeps its commas)."""
    from harness.config import all_knobs

    knobs = all_knobs(registry.get(workload))
    fixed, grid = {}, {}
    for key, value in overrides.items():
        knob = knobs.get(key)
        if "," in value and not (knob is not None and knob.type is str and not knob.choices):
            grid[key] = [v.strip() for v in value.split(",")]
            if not all(grid[key]):
                raise ValueError(f"{key}={value}: an empty value in the list; write e.g. {key}=8,16,32")
        else:
            fixed[key] = value
    return fixed, grid


def cmd_run(args: argparse.Namespace) -> int:
    """Profile one config (or a grid: ``batch_size=8,16,32``): `repeats` fresh processes, summary table."""
    from harness.experiment import expand_grid, point_name

    positional, overrides = split_args(args.items)
    one_workload("run", positional)
    workload = positional[0]
    overrides, grid = grid_items(workload, overrides)
    points = expand_grid(grid) if grid else [{}]
    baseline_name = point_name(points[0]) if grid else workload
    epochs = resolve(workload, overrides, points[0]).epochs
    # --repeats N: exactly N runs per config (as `sweep --repeats`). Without it one run, or for a grid 3 and
    # then more, interleaved, until each point's interval against the first is tight (the sweep's rule).
    exact = args.repeats is not None
    repeats = args.repeats if exact else (3 if grid else 1)
    precision = {"target_half_width_pct": 0.0, "max_repeats": max(repeats, 1)} if exact else \
        {"max_repeats": max(repeats, 10)}
    # A speed run by default; with epochs=N each repeat trains for quality (and is timed as it trains).
    exp = build("run", workload, {**overrides, **points[0]}, {point_name(p): p for p in points[1:]},
                baseline_name=baseline_name, repeats=0 if epochs else repeats, timeout_s=args.timeout,
                quality_epochs=epochs, equivalence=False, **precision)
    if epochs and exact and args.repeats > 1:
        print("warning: --repeats applies to speed runs; a quality run trains once per config "
              "(same seed, same result)", file=sys.stderr)
    cfg = exp.configs[baseline_name]
    for w in runtime_warnings(cfg, resolve_device(cfg)):
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out or f"runs/{folder_name(workload)}-{time.strftime('%Y%m%d-%H%M%S')}")
    records = run_experiment(exp, out, resume=args.resume, progress=progress)
    print_and_report(out, None, exp, check=False)
    print(f"records: {out / 'records.jsonl'}")
    return 1 if failed_runs(records) else 0


def _sweep_experiments(args: argparse.Namespace, files: list[Path], overrides: dict[str, str]) -> list[Experiment]:
    """Every experiment of the files with the command's --repeats / --quick / --aa applied, validated before any
    runs (so a typo in the third file costs nothing)."""
    exps = []
    for exp in (e for f in files for e in load_experiments(f, overrides)):
        if args.repeats:  # exactly N repeats: no adaptive ones
            exp = _with(exp, repeats=args.repeats, max_repeats=max(args.repeats, exp.max_repeats),
                        target_half_width_pct=0.0)
        if args.quick:
            # a smoke run of every experiment: one repeat (no speedup intervals), one quality epoch
            exp = _with(exp, repeats=1, quality_epochs=min(exp.quality_epochs, 1), target_half_width_pct=0.0,
                        max_reruns=0)
        if args.aa:
            exp = build(exp.name + "-aa", exp.workload, exp.baseline_overrides | overrides,
                        {f"{exp.baseline_name}_aa": {"seed": exp.configs[exp.baseline_name].seed}},
                        baseline_name=exp.baseline_name, repeats=exp.repeats, timeout_s=exp.timeout_s,
                        equivalence=False, allow_same=True, **exp.precision)
        validate_gates(exp)
        exps.append(exp)
    return exps


def quick_set(exps: list[Experiment]) -> tuple[list[Experiment], list[str]]:
    """(what a `--quick` sweep of the bundled set runs, the names it leaves out): every experiment but those with a
    variant that launches torchrun ranks. Each such run starts a process group (torchrun, then every rank imports
    torch): seconds per run for milliseconds of work, which would double the smoke run."""
    out = [e.name for e in exps if any(world_of(c.values) > 1 for c in e.configs.values())]
    return [e for e in exps if e.name not in out], out


def _announce(args: argparse.Namespace, exps: list[Experiment], reports: Path, left_out: list[str]) -> None:
    """The sweep's first line: what it will run, how long that should take and where it writes."""
    clock = Eta([j for exp in exps for j in plan(exp)[0]],
                steps=[MACHINE_CHECK, *(overhead_key(exp.name, _preset(exp)) for exp in exps)])
    SWEEP_ETA[:] = [clock]
    budget = f", at most {args.budget_min:g} min with added repeats" if args.budget_min > 0 and not args.quick else ""
    print(f"sweep: {len(exps)} experiment(s), {clock.planned} runs planned; ETA ~{clock.remaining_s() / 60:.1f} min"
          f"{budget} (from {clock.basis()}); results -> {args.out or 'runs/'}, reports -> {reports}/",
          file=sys.stderr, flush=True)
    if left_out:
        print(f"--quick leaves out {', '.join(left_out)} (their runs launch torchrun ranks: seconds of process start "
              "each); name their file to include them, e.g. trainbench sweep --quick bench/experiments/ddp.toml",
              file=sys.stderr)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run experiment files (default: every bundled one) and write their reports."""
    positional, overrides = split_args(args.items)
    if args.budget_min < 0:
        raise ValueError(f"--budget-min {args.budget_min:g}: a time budget cannot be negative; "
                         "give minutes >= 0 (0 = no sweep-wide budget)")
    files = [Path(p) for p in positional] or sorted(experiments_dir().glob("*.toml"))
    if not files:
        raise ValueError(f"no experiment files given and none in {experiments_dir()}")
    exps = _sweep_experiments(args, files, {"preset": "tiny", **overrides} if args.quick else overrides)
    left_out: list[str] = []
    if args.quick and not positional:
        exps, left_out = quick_set(exps)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if args.quick and not args.out:
        args.out = f"runs/quick-{stamp}"  # a smoke run never lands in the committed reports
    # reports go beside the results of an --out sweep; reports/ (the committed examples) is the full sweep's
    reports = Path(args.reports or (Path(args.out) / "reports" if args.out else "reports"))
    if args.out:
        check_writable_dir(args.out)
    check_writable_dir(reports, "--reports")
    _announce(args, exps, reports, left_out)
    try:
        return _run_sweep(args, exps, reports, stamp, positional)
    finally:
        SWEEP_ETA.clear()  # a later command in this process (tests, the API) keeps its own progress line


def _run_sweep(args: argparse.Namespace, exps: list[Experiment], reports: Path, stamp: str,
               positional: list[str]) -> int:
    start = time.monotonic()
    print("machine check (trainbench doctor):\n" + machine_text(), file=sys.stderr)
    _step_done(MACHINE_CHECK, time.monotonic() - start)
    # The sweep-wide time budget: each experiment may add repeats and re-runs until its share of the
    # time left (what is left over / the experiments still to run) is spent, less what writing the
    # reports still to come is expected to take (1.5 x the slowest so far; 15 s before the first).
    end = CLI_START + args.budget_min * 60 if args.budget_min > 0 else None
    report_s, status = 15.0, 0
    upcoming: Launcher | None = None
    for i, exp in enumerate(exps):
        left = len(exps) - i
        deadline = None if end is None else \
            time.monotonic() + (end - time.monotonic() - 1.5 * report_s * left) / left
        out = Path(args.out) / exp.name if args.out and len(exps) > 1 else \
            Path(args.out or f"runs/{exp.name}-{stamp}")
        print(f"\n# {exp.name}: {len(exp.variants)} variants x {exp.repeats} repeats -> {out}", file=sys.stderr)
        began, jobs_s = time.monotonic(), _jobs_s()
        records = run_experiment(exp, out, resume=args.resume, progress=progress, deadline=deadline,
                                 launcher=usable(upcoming) if upcoming else None)
        # the next experiment's fork server imports while this report is written (nothing is measured then)
        upcoming = default_launcher(exps[i + 1], wait=False) if i + 1 < len(exps) else None
        start = time.monotonic()
        status = max(status, print_and_report(out, reports / exp.name, exp, check=args.check),
                     1 if failed_runs(records) else 0)
        report_s = max(report_s if i else 0.0, time.monotonic() - start)  # (the measured one replaces 15 s)
        _step_done(overhead_key(exp.name, _preset(exp)), time.monotonic() - began - (_jobs_s() - jobs_s))
    if not positional or args.index:
        from harness.report import write_index

        print(f"index: {write_index(reports)}")
    return status


def _preset(exp: Experiment) -> str:
    return str(exp.configs[exp.baseline_name].values.get("preset", "?"))


def _jobs_s() -> float:
    """Seconds the running sweep's jobs have taken so far (0 outside a sweep)."""
    return SWEEP_ETA[0].jobs_s if SWEEP_ETA else 0.0


def _step_done(key: str, seconds: float) -> None:
    if SWEEP_ETA:
        SWEEP_ETA[0].finish(key, seconds)


def _with(exp: Experiment, **changes: object) -> Experiment:
    # Repeats and budgets do not touch the resolved configs, so no re-resolution is needed.
    return dataclasses.replace(exp, **changes)


def cmd_fit(args: argparse.Namespace) -> int:
    """The largest batch_size (or --knob) within a memory budget."""
    from harness import fit

    positional, overrides = split_args(args.items)
    one_workload("fit", positional)
    workload = positional[0]
    cfg = resolve(workload, overrides)  # bad knobs stop here
    memory = args.memory
    if memory is None:
        device = resolve_device(cfg)
        if device.type != "cuda":
            raise ValueError("fit on a CPU needs --memory GiB (there is no device memory to default to), "
                             "e.g. trainbench fit lm --memory 0.5")
        import torch

        memory = torch.cuda.get_device_properties(device).total_memory / 1024**3
    effective = args.effective_batch
    if effective is not None:
        from harness.experiment import effective_batch_points

        if args.knob != "batch_size":
            raise ValueError(f"--effective-batch ranks batch_size x grad_accum; drop --knob {args.knob}")
        effective_batch_points(effective, where="--effective-batch")  # a bad value stops here
        if args.repeats is not None and args.repeats < 1:
            raise ValueError(f"--repeats {args.repeats}: measure each split at least once; use --repeats 1 or more")
        out = Path(args.out or f"runs/{folder_name(workload)}-effective{effective}-{time.strftime('%Y%m%d-%H%M%S')}")
        check_writable_dir(out)
    probe_knobs = {**overrides, "grad_accum": 1} if effective is not None else overrides
    result = fit.fit(workload, probe_knobs, memory, knob=args.knob, timeout_s=args.timeout, limit=effective)
    if result.answer is None:
        first = result.probes[-1]
        raise ValueError(f"nothing fits in {memory:g} GiB ({result.memory}): even {args.knob}=1 peaked at "
                         f"{first.peak_gib if first.peak_gib is not None else '?'} GiB ({first.why}); raise --memory")
    print(fit.describe(result, workload))
    if effective is None:
        return 0
    print(f"\nranking every batch_size x grad_accum = {effective} with batch_size <= {result.answer} (fits) ...",
          file=sys.stderr)
    exp, records = fit.rank_effective_batch(workload, overrides, effective, result.answer, out,
                                            timeout_s=args.timeout, repeats=args.repeats, progress=progress)
    print_and_report(out, out / "report", exp, check=False)
    print(f"records: {out / 'records.jsonl'}")
    return 1 if failed_runs(records) else 0


def cmd_profile(args: argparse.Namespace) -> int:
    """A few steps under torch.profiler: traces, top operators, advisor findings."""
    from harness.profiler import profile

    positional, overrides = split_args(args.items)
    one_workload("profile", positional)
    cfg = resolve(positional[0], overrides)  # bad knobs (or a missing data file) stop here: nothing written
    out = check_writable_dir(args.out or f"runs/profile-{folder_name(positional[0])}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(profile(cfg, out, steps=args.steps))
    return 0
