"""What every command shares: paths, arguments, the progress line, the plain summary, and the report step."""

from __future__ import annotations

import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from harness.config import parse_overrides
from harness.eta import Eta, job_key
from harness.experiment import (
    Experiment,
    SavedExperiment,
    load_saved_experiment,
)
from harness.jobs import Job
from harness.results import Record, load_records

REPO_ROOT = Path(__file__).resolve().parents[2]


def experiments_dir() -> Path:
    """bench/experiments of the current directory, else of the source tree."""
    local = Path("bench/experiments")
    return local if local.is_dir() else REPO_ROOT / "bench" / "experiments"


def split_args(items: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    positional = [i for i in items if "=" not in i]
    return positional, parse_overrides([i for i in items if "=" in i])


_STARTED: dict[str, Any] = {"t": 0.0, "experiment": "", "job": 0.0}


_WARNED: set[tuple[str, str]] = set()


CLI_START = time.monotonic()  # a sweep's time budget counts from here (imports and the machine check included)


SWEEP_ETA: list[Eta] = []
"""The running sweep's estimate (`harness.eta`), when a sweep set one: progress lines then say the sweep's time left."""


def progress(i: int, n: int, job: Job, rec: Record | None) -> None:
    if _STARTED["experiment"] != job.experiment or i == 1 and rec is None:
        _STARTED.update(t=time.perf_counter(), experiment=job.experiment)
    if SWEEP_ETA:
        clock = SWEEP_ETA[0]
        if rec is None:
            if clock.left.get(job_key(job), 0) == 0:
                clock.add(job)  # an added repeat or a contention re-run
            _STARTED["job"] = time.perf_counter()
        else:
            clock.done(job, time.perf_counter() - _STARTED["job"], typical=not rec.reused_from)
        eta = f" sweep ~{clock.remaining_s() / 60:.1f} min left"
    else:
        # Time left: the mean time of the jobs so far times the jobs still planned (added repeats and
        # contention re-runs raise the count as they are scheduled).
        elapsed = time.perf_counter() - _STARTED["t"]
        eta = f" ~{elapsed / (i - 1) * (n - i + 1) / 60:.1f} min left" if i > 1 and n >= i else ""
    again = f" (round re-run {job.attempt}: a run was contended or interfered)" if job.attempt else ""
    label = f"[{i:>3}/{n}{eta}] {job.experiment} {job.phase:<11} {job.variant:<24} #{job.repeat}{again}"
    if rec is None:
        print(f"{label} ...", end="", file=sys.stderr, flush=True)
        return
    detail = ""
    if rec.reused_from:
        detail = f" {rec.reused_from}'s run of this seed (same function: not re-trained)"
    elif rec.status == "ok" and rec.phase != "equivalence":
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


def one_workload(command: str, positional: list[str]) -> None:
    """`run` / `profile` take one workload and then key=value items; name what is wrong."""
    if not positional:
        raise ValueError(f"{command} needs a workload, e.g. `trainbench {command} lm preset=tiny` "
                         "(`trainbench list` shows them)")
    if len(positional) > 1:
        raise ValueError(f"{command}: '{positional[1]}' is not key=value; write it as {positional[1]}=VALUE "
                         f"(one workload, '{positional[0]}', then key=value knobs)")


def failed_runs(records: Sequence[Record]) -> list[Record]:
    """Runs that failed (a run skipped for a reason, e.g. no torch.compile on this machine, did not fail)."""
    return [r for r in records if r.status not in ("ok", "skipped")]


def validate_gates(exp: Experiment) -> None:
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


def print_and_report(results_dir: Path, report_dir: Path | None, exp: Experiment | SavedExperiment | None,
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
        summary = summarize(records, baseline, target=exp.quality_target, workload=load_description(results_dir),
                            quality_margin=exp.quality_margin)
        results = check_gates(exp.gates, summary, baseline, known_metrics=set(summary.columns))
        print("\ngates:")
        for g in results:
            print(f"  {'PASS' if g.passed else 'FAIL'}  {g.expr}   (measured: {g.measured})")
        if check and not all(g.passed for g in results):
            return 1
    return 0


def machine_text() -> str:
    """`doctor`'s measurement of the machine (also printed before a sweep)."""
    from harness.machine import check_machine

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
