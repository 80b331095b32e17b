"""`trainbench run | sweep | report | compare | reference | fit | list | doctor | profile`.

User mistakes (bad knob, bad value, missing file, malformed TOML) print one ``error: ...`` line and
exit 2 before anything is written; failed runs or failed gates exit 1; success exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness import registry
from harness.against import MIN_CHANGE_PCT
from harness.config import knob_table, parse_overrides, resolve_device, runtime_warnings
from harness.experiment import (
    Experiment,
    SavedExperiment,
    build,
    load_experiments,
    load_saved_experiment,
)
from harness.registry import resolve
from harness.results import Record, check_writable_dir, folder_name, load_records
from harness.runner import Job, run_experiment

REPO_ROOT = Path(__file__).resolve().parent.parent


def experiments_dir() -> Path:
    """bench/experiments of the current directory, else of the source tree."""
    local = Path("bench/experiments")
    return local if local.is_dir() else REPO_ROOT / "bench" / "experiments"


def _split_args(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    positional = [i for i in items if "=" not in i]
    return positional, parse_overrides([i for i in items if "=" in i])


_STARTED = {"t": 0.0, "experiment": ""}
_WARNED: set[tuple[str, str]] = set()
_CLI_START = time.monotonic()  # a sweep's time budget counts from here (imports and the machine check included)


def _progress(i: int, n: int, job: Job, rec: Record | None) -> None:
    if _STARTED["experiment"] != job.experiment or i == 1 and rec is None:
        _STARTED.update(t=time.perf_counter(), experiment=job.experiment)
    elapsed = time.perf_counter() - _STARTED["t"]
    # Time left: the mean time of the jobs so far times the jobs still planned (added repeats and
    # contention re-runs raise the count as they are scheduled).
    eta = f" ~{elapsed / (i - 1) * (n - i + 1) / 60:.1f} min left" if i > 1 and n >= i else ""
    again = f" (round re-run {job.attempt}: a run was contended or interfered)" if job.attempt else ""
    label = f"[{i:>3}/{n}{eta}] {job.experiment} {job.phase:<11} {job.variant:<24} #{job.repeat}{again}"
    if rec is None:
        print(f"{label} ...", end="", file=sys.stderr, flush=True)
        return
    detail = ""
    if rec.status == "ok" and rec.phase != "equivalence":
        sps = rec.metrics.get("samples_per_s")
        detail = f" {sps:,.1f} samples/s" if sps else ""
    elif rec.phase == "equivalence" and rec.status == "ok":
        passed = rec.equivalence.get("passed")
        detail = " equivalent" if passed else (" NOT equivalent" if passed is False else " skipped")
    else:
        detail = f" {rec.error.splitlines()[0][:100] if rec.error else ''}"
    if rec.contention.get("verdict"):
        detail += f" CONTENDED: {rec.contention['verdict']}"
    print(f" {rec.status}{detail} ({rec.wall_s:.1f} s)", file=sys.stderr, flush=True)
    for w in rec.warnings:  # each distinct warning once per experiment (the report lists them all)
        if (job.experiment, w) not in _WARNED:
            _WARNED.add((job.experiment, w))
            print(f"      warning: {w}", file=sys.stderr, flush=True)


def _one_workload(command: str, positional: list[str]) -> None:
    """`run` / `profile` take one workload and then key=value items; name what is wrong."""
    if not positional:
        raise ValueError(f"{command} needs a workload, e.g. `trainbench {command} lm preset=tiny` "
                         "(`trainbench list` shows them)")
    if len(positional) > 1:
        raise ValueError(f"{command}: '{positional[1]}' is not key=value; write it as {positional[1]}=VALUE "
                         f"(one workload, '{positional[0]}', then key=value knobs)")


def _failed(records: Sequence[Record]) -> list[Record]:
    """Runs that failed (a run skipped for a reason, e.g. no torch.compile on this machine, did not fail)."""
    return [r for r in records if r.status not in ("ok", "skipped")]


def _validate_gates(exp: Experiment) -> None:
    if exp.gates:
        from harness.analysis.gates import known_metrics_for, validate

        validate(exp.gates, exp.variants, known_metrics_for(exp.configs[exp.baseline_name].get_workload()))


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(x: object, spec: str) -> str:
    return "-" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def _speedup_cell(row: Any, is_baseline: bool, timed: str) -> str:
    """The variant's speed decision against the baseline (`decision.decide`, the speed margin)."""
    from harness.analysis import decision
    from harness.analysis.stats import RatioEstimate

    if is_baseline or timed != "speed":
        text = "baseline" if is_baseline else "-"
    else:
        est = RatioEstimate(row["speedup"], row["speedup_ci_low"], row["speedup_ci_high"], int(row["speedup_pairs"]),
                            row["speedup_method"], int(row["speedup_need"]))
        text = decision.decide(est, margin=decision.EQUIVALENCE_MARGIN_PCT / 100).text()
    return text + (f" ({row['contended_runs']} contended run(s))" if row.get("contended_runs") else "")


def _summary_line(v: str, row: Any, records: Sequence[Record], baseline: str, timed: str) -> str:
    runs = [r for r in records if r.variant == v and r.phase == timed]
    ok = [r for r in runs if r.status == "ok"]
    sps = [r.metrics["samples_per_s"] for r in ok if r.metrics.get("samples_per_s")]

    def med(name: str) -> float | None:
        return _median([r.metrics[name] for r in ok if r.metrics.get(name) is not None])

    fails = sorted({r.status for r in runs if r.status != "ok"})
    sps_text = f"{_median(sps):,.1f} ({min(sps):,.1f}-{max(sps):,.1f})" if sps else "-"
    eq_text = {"pass": "yes", "fail": "NO", "skipped": "n/a", "baseline": "-", "not checked": "-"}.get(
        row["equiv_status"], row["equiv_status"])
    qual = [r for r in records if r.variant == v and r.phase == "quality" and r.status == "ok"]
    q_text = ", ".join(f"{k}={val:.4g}" for k, val in list(qual[0].quality.items())[:3]) if qual else "-"
    return (f"| {v} | {len(ok)}/{len(runs)}{' ' + ','.join(fails) if fails else ''} | {sps_text} "
            f"| {_fmt(med('step_ms_median'), '.1f')} | {_fmt(med('tokens_per_s'), ',.0f')} "
            f"| {_fmt(med('forward_calls_per_step'), '.2f')} | {_fmt(med('peak_rss_gib'), '.2f')} "
            f"| {_speedup_cell(row, v == baseline, timed)} | {eq_text} | {q_text} |")


def plain_summary(records: Sequence[Record], baseline: str) -> str:
    """The plain markdown table printed after `run` and `sweep`: one row per variant, its figures from
    `harness.analysis.summarize` (the speedup is the same paired estimate the report and gates use, decided by
    the same rule)."""
    from harness.analysis import summarize

    summary = summarize(list(records), baseline)
    head = ("| variant | runs ok | samples/s (median, min-max) | step ms | tokens/s | fwd calls/step "
            "| peak RSS GiB | speedup [95% CI] | equivalent | quality |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    timed = "speed" if any(r.phase == "speed" for r in records) else "quality"  # quality runs are timed too
    lines += [_summary_line(str(v), row, records, baseline, timed) for v, row in summary.iterrows()]
    for r in (r for r in records if r.status != "ok"):
        lines.append(f"\n{r.variant} {r.phase} #{r.repeat}: {r.status}: {r.error.splitlines()[0] if r.error else ''}")
    warned = dict.fromkeys(w for r in records for w in r.warnings)
    if warned:
        lines.append("\nwarnings:\n" + "\n".join(f"- {w}" for w in warned))
    return "\n".join(lines)


def _report(results_dir: Path, report_dir: Path | None, exp: Experiment | SavedExperiment | None,
            check: bool) -> int:
    """Print the summary, write the report, evaluate gates; returns 1 if a gate failed under --check."""
    records = load_records(results_dir)
    exp = exp or load_saved_experiment(results_dir)
    baseline = exp.baseline_name if exp else next((r.variant for r in records if r.phase == "speed"),
                                                  records[0].variant)
    print(plain_summary(records, baseline))
    if report_dir is None and not (exp and exp.gates):
        return 0
    from harness.analysis import summarize
    from harness.analysis.gates import check as check_gates
    from harness.description import load_description
    from harness.report import write_report

    if report_dir is not None:
        print(f"report: {write_report(results_dir, report_dir, exp)}")
    if exp and exp.gates:
        summary = summarize(records, baseline, target=exp.quality_target, workload=load_description(results_dir))
        results = check_gates(exp.gates, summary, baseline, known_metrics=set(summary.columns))
        print("\ngates:")
        for g in results:
            print(f"  {'PASS' if g.passed else 'FAIL'}  {g.expr}   (measured: {g.measured})")
        if check and not all(g.passed for g in results):
            return 1
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    """Workloads, presets (with parameter counts), knobs and bundled experiments."""
    workloads = registry.builtin()
    names = [args.workload] if args.workload else sorted(workloads)
    shown_generic = False
    for name in names:
        wl = registry.get(name)
        print(f"## {wl.name}: {wl.description}\n")
        print("| preset | parameters | for | description |\n|---|---|---|---|")
        for pname, preset in wl.presets.items():
            try:
                params = f"{wl.parameter_count(resolve(name, {'preset': pname})):,}"
            except ValueError as exc:
                params = f"n/a ({exc})"
            default = " (default)" if pname == wl.default_preset else ""
            print(f"| {pname}{default} | {params} | {preset.device_hint} | {preset.doc} |")
        rows = [r for r in knob_table(wl) if args.all_knobs or not shown_generic or
                r["knob"] in {k.name for k in wl.knobs}]
        shown_generic = True
        print("\n| knob | type | allowed | default | kind | what it does |\n|---|---|---|---|---|---|")
        for r in rows:
            allowed = r["allowed"].replace("|", "\\|") if r["knob"] != "preset" else "a preset above"
            default = str(r["default"]).lower() if isinstance(r["default"], bool) else r["default"]
            print(f"| {r['knob']} | {r['type']} | {allowed} | {default} | {r['kind']} | {r['doc']} |")
        print()
    print("kinds: exact = same function; approx = same within dtype tolerance; quality = changes training; "
          "budget = how long it runs")
    exps = sorted(experiments_dir().glob("*.toml"))
    if exps:
        print("\nexperiments: " + ", ".join(str(p) for p in exps))
    return 0


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

    positional, overrides = _split_args(args.items)
    _one_workload("run", positional)
    workload = positional[0]
    overrides, grid = grid_items(workload, overrides)
    points = expand_grid(grid) if grid else [{}]
    baseline_name = point_name(points[0]) if grid else workload
    epochs = resolve(workload, overrides, points[0]).epochs
    # A speed run by default; with epochs=N each repeat trains for quality (and is timed as it trains).
    exp = build("run", workload, {**overrides, **points[0]}, {point_name(p): p for p in points[1:]},
                baseline_name=baseline_name, repeats=0 if epochs else args.repeats, timeout_s=args.timeout,
                quality_epochs=epochs, equivalence=False, max_repeats=max(args.repeats, 10))
    if epochs and args.repeats > 1:
        print("warning: --repeats applies to speed runs; a quality run trains once per config "
              "(same seed, same result)", file=sys.stderr)
    cfg = exp.configs[baseline_name]
    for w in runtime_warnings(cfg, resolve_device(cfg)):
        print(f"warning: {w}", file=sys.stderr)
    out = Path(args.out or f"runs/{folder_name(workload)}-{time.strftime('%Y%m%d-%H%M%S')}")
    records = run_experiment(exp, out, resume=args.resume, progress=_progress)
    _report(out, None, exp, check=False)
    print(f"records: {out / 'records.jsonl'}")
    return 1 if _failed(records) else 0


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run experiment files (default: every bundled one) and write their reports."""
    positional, overrides = _split_args(args.items)
    if args.budget_min < 0:
        raise ValueError(f"--budget-min {args.budget_min:g}: a time budget cannot be negative; "
                         "give minutes >= 0 (0 = no sweep-wide budget)")
    files = [Path(p) for p in positional] or sorted(experiments_dir().glob("*.toml"))
    if not files:
        raise ValueError(f"no experiment files given and none in {experiments_dir()}")
    if args.quick:
        overrides = {"preset": "tiny", **overrides}
    # Validate every experiment before running any, so a typo in the third file costs nothing.
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
        _validate_gates(exp)
        exps.append(exp)
    if args.out:
        check_writable_dir(args.out)
    check_writable_dir(args.reports, "--reports")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    status = 0
    print("machine check (trainbench doctor):\n" + _machine_text(), file=sys.stderr)
    # The sweep-wide time budget: each experiment may add repeats and re-runs until its share of the
    # time left (what is left over / the experiments still to run) is spent, less what writing the
    # reports still to come is expected to take (1.5 x the slowest so far; 15 s before the first).
    end = _CLI_START + args.budget_min * 60 if args.budget_min > 0 else None
    report_s = 15.0
    for i, exp in enumerate(exps):
        left = len(exps) - i
        deadline = None if end is None else \
            time.monotonic() + (end - time.monotonic() - 1.5 * report_s * left) / left
        out = Path(args.out) / exp.name if args.out and len(exps) > 1 else \
            Path(args.out or f"runs/{exp.name}-{stamp}")
        print(f"\n# {exp.name}: {len(exp.variants)} variants x {exp.repeats} repeats -> {out}", file=sys.stderr)
        records = run_experiment(exp, out, resume=args.resume, progress=_progress, deadline=deadline)
        report_dir = Path(args.reports) / exp.name
        start = time.monotonic()
        status = max(status, _report(out, report_dir, exp, check=args.check), 1 if _failed(records) else 0)
        report_s = max(report_s if i else 0.0, time.monotonic() - start)  # (the measured one replaces 15 s)
    if not positional or args.index:
        from harness.report import write_index

        print(f"index: {write_index(Path(args.reports))}")
    return status


def _with(exp: Experiment, **changes: object) -> Experiment:
    # Repeats and budgets do not touch the resolved configs, so no re-resolution is needed.
    return dataclasses.replace(exp, **changes)


def cmd_report(args: argparse.Namespace) -> int:
    """Re-render the report of a results directory."""
    results = Path(args.results)
    load_records(results)  # ValueError (exit 2) when there is nothing to report
    exp = load_saved_experiment(results)
    # by default beside the others under reports/, named after the results directory: re-rendering one
    # run's results never overwrites another's report
    out = check_writable_dir(args.out or Path("reports") / results.resolve().name)
    return _report(results, out, exp, check=args.check)


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
    positional, overrides = _split_args(args.items)
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


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine can measure; with --mde, the smallest slowdown its comparisons detect."""
    if args.mde:
        return _doctor_mde(args)
    if args.items:
        raise ValueError(f"doctor: {' '.join(args.items)}: a workload and knobs go with --mde "
                         "(trainbench doctor --mde WORKLOAD [key=value ...])")
    import platform

    import psutil
    import torch

    from harness.probes.sampler import ResourceSampler
    from harness.results import collect_env

    env = collect_env()
    print("| fact | value |\n|---|---|")
    for key in ("python", "os", "cpu_model", "cpu_cores", "torch", "cuda", "cudnn", "gpu_name", "gpu_driver",
                "git_commit", "git_dirty"):
        print(f"| {key} | {env.get(key)} |")
    print(f"| memory | {psutil.virtual_memory().total / 1024**3:.1f} GiB |")
    print(f"| machine | {platform.machine()} |")
    cuda = torch.cuda.is_available()
    sampler = ResourceSampler(0 if cuda else None)
    bf16_cpu = torch.backends.mkldnn.is_available()
    print("\nwill be measured here:")
    print(f"  step timing: {'CUDA events' if cuda else 'host clock (perf_counter)'}")
    print("  phase breakdown, forward calls, FLOPs (torch.utils.flop_counter), peak RSS incl. workers, CPU util")
    print(f"  CUDA memory peaks: {'yes' if cuda else 'no (no CUDA device)'}")
    print(f"  NVML GPU util / memory / power / energy: {sampler.nvml_status}")
    print(f"  amp=bf16: {'yes' if cuda or bf16_cpu else 'no'}; amp=fp16: "
          f"{'yes, with GradScaler' if cuda else 'runs on CPU but is usually slower (warned)'}")
    print(f"  DataLoader workers: up to {os.cpu_count()} (more are capped with a warning)")
    print("\nthe machine now:")
    print(_machine_text())
    return 0


MDE_AT = (5, 10)
"""Repeats `doctor --mde` quotes: the fewest a sweep stops on (`stats.MIN_STOP_REPEATS`) and the most a sweep or the
old-against-new gate adds (their default `max_repeats`)."""


def _doctor_mde(args: argparse.Namespace) -> int:
    """Run an A/A experiment of WORKLOAD (default: lm) through the sweep path and print the slowdown detected with
    80% power at a sweep's and the gate's repeats; the figure goes to the history, where reports quote it."""
    import tempfile

    from harness import history
    from harness.analysis.power import Detectable, aa_log_ratios
    from harness.results import collect_env, load_records

    names, knobs = _split_args(args.items)
    if len(names) > 1:
        raise ValueError(f"doctor --mde: one workload, got {' '.join(names)}; e.g. trainbench doctor --mde lm")
    if args.repeats < 3:
        raise ValueError(f"doctor --mde --repeats {args.repeats}: use 3 or more (an interval needs 3 per side)")
    workload = names[0] if names else "lm"
    seed = registry.resolve(workload, knobs).seed
    exp = build(f"mde-{workload}", workload, knobs, {"aa": {"seed": seed}}, repeats=args.repeats, equivalence=False,
                allow_same=True, target_half_width_pct=0.0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainbench-mde-") as tmp:
        run_experiment(exp, Path(tmp) / "aa", progress=_progress)
        records = load_records(Path(tmp) / "aa")
    took = time.perf_counter() - start
    label = " ".join([workload, *(f"{k}={v}" for k, v in knobs.items())])
    found = Detectable.from_log_ratios(label, aa_log_ratios(records, "baseline", "aa"), MDE_AT)
    env = next((r.env for r in records if r.env), collect_env())
    entry = {"machine": history.machine_fingerprint(env), "workload": label, "repeats": found.repeats,
             "sd_pct": found.sd_pct, "aa_ratio": found.aa_ratio,
             "slowdown_pct": {str(n): p for n, p in found.slowdown_pct.items()},
             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": env.get("git_commit"), "seconds": took}
    history.append_history(entry, history.mde_path())
    print(found.describe())
    print(f"  a sweep stopping at {MDE_AT[0]} repeats resolves a slowdown of {found.slowdown_pct[MDE_AT[0]]:.1f}% "
          f"4 times in 5; at its maximum of {MDE_AT[1]} (and the old-against-new gate's), "
          f"{found.slowdown_pct[MDE_AT[1]]:.1f}%")
    print(f"  smaller changes are not \"no regression\" on this machine, only undetected; measured in {took:.0f} s, "
          f"recorded in {history.mde_path()}")
    return 0


def _machine_text() -> str:
    """`doctor`'s measurement of the machine (also printed before a sweep)."""
    from harness.probes.contention import check_machine

    m = check_machine()
    lines = [f"  {m.usable_cores} usable cores; other processes keep {m.other_busy_cores:.2f} busy; "
             f"load average {m.load_avg_1m:.2f}",
             f"  fixed 256x256 matmul: {m.matmul_ms_1_thread:.3f} ms with 1 thread, {m.matmul_ms_all_threads:.3f} ms "
             f"with {m.usable_cores}"]
    lines += [f"  busy: {p}" for p in m.busy_processes]
    lines.append(_state_text())
    lines += [f"  -> {a}" for a in m.advice()]
    return "\n".join(lines)


def _state_text() -> str:
    """The machine-state index now (one thread), against the best this machine showed in the session history."""
    from harness.history import best_state, machine_fingerprint, read_history
    from harness.probes.state import KERNELS, measure
    from harness.results import collect_env

    now = measure(1)
    best = best_state(read_history(), machine_fingerprint(collect_env())).get("t1", {})
    parts = [f"{k} {now[k]:.3f} ms" + (f" ({(now[k] / best[k] - 1) * 100:+.0f}% vs best {best[k]:.3f})"
                                       if best.get(k) else "") for k in KERNELS]
    return "  machine state (1 thread): " + ", ".join(parts) + ("" if best else " (no earlier session recorded)")


def cmd_fit(args: argparse.Namespace) -> int:
    """The largest batch_size (or --knob) within a memory budget."""
    from harness import fit

    positional, overrides = _split_args(args.items)
    _one_workload("fit", positional)
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
                                            timeout_s=args.timeout, repeats=args.repeats, progress=_progress)
    _report(out, out / "report", exp, check=False)
    print(f"records: {out / 'records.jsonl'}")
    return 1 if _failed(records) else 0


def cmd_profile(args: argparse.Namespace) -> int:
    """A few steps under torch.profiler: traces, top operators, advisor findings."""
    from harness.profiler import profile

    positional, overrides = _split_args(args.items)
    _one_workload("profile", positional)
    cfg = resolve(positional[0], overrides)  # bad knobs (or a missing data file) stop here: nothing written
    out = check_writable_dir(args.out or f"runs/profile-{folder_name(positional[0])}-{time.strftime('%Y%m%d-%H%M%S')}")
    print(profile(cfg, out, steps=args.steps))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    p = argparse.ArgumentParser(prog="trainbench", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("list", help="workloads, presets, knobs, experiments")
    s.add_argument("workload", nargs="?")
    s.add_argument("--all-knobs", action="store_true", help="repeat the generic knobs under every workload")
    s.set_defaults(fn=cmd_list)

    s = sub.add_parser("run", help="profile one config (WORKLOAD key=value ...)")
    s.add_argument("items", nargs="*", metavar="WORKLOAD|key=value")
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--out")
    s.add_argument("--timeout", type=float, default=900.0, help="seconds per run before it is killed")
    s.add_argument("--resume", action="store_true")
    s.set_defaults(fn=cmd_run)

    s = sub.add_parser("sweep", help="run experiment TOML files (default: all in bench/experiments)")
    s.add_argument("items", nargs="*", metavar="FILE.toml|key=value")
    s.add_argument("--out", help="results directory (default runs/<experiment>-<time>)")
    s.add_argument("--reports", default="reports", help="where reports go (default reports/)")
    s.add_argument("--resume", action="store_true", help="continue a killed sweep in --out")
    s.add_argument("--check", action="store_true", help="exit 1 when a gate fails")
    s.add_argument("--quick", action="store_true", help="smoke run: tiny presets, 1 repeat, 1 quality epoch")
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
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are in records.jsonl; continue with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
