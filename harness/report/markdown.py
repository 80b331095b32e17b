"""The experiment report: README.md plus PNGs in one directory, readable on GitHub.

Sections follow the source notes' tables, with measurements in place of estimates: header (what, where,
when, repeats), key changes (seed 003), speed, noise floor, equivalence, quality (seed 000) and
time-to-target, phase breakdown (seed 004), gates checklist (seed 003), advisor findings, the cost
table (seed 004), plots, failed runs. `write_index` links every report with its headline.

Everything comes from the results directory: the records, `experiment.json` and `workload.json` (knob
kinds, metric directions, the cost model). Nothing here imports a workload, the registry or the runner,
so a results directory copied to another machine renders the same report.

This module assembles the report; the sections live in `speed` and `quality`, the cells in `cells`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.analysis import gates
from harness.analysis.reproducibility import interfered_runs, run_state
from harness.analysis.stats import CALIBRATED_WINDOW_S, median
from harness.analysis.summary import summarize
from harness.description import load_description
from harness.experiment import load_saved_experiment
from harness.history import load_sessions
from harness.report.cells import resolved
from harness.report.quality import advice_section, equivalence_section, gates_section, quality_section
from harness.report.reproducibility import across_sessions, reproducibility_section
from harness.report.speed import (
    compile_section,
    costs_section,
    ddp_section,
    effective_batch_section,
    headline,
    key_changes_section,
    noise_section,
    phases_section,
    precision_section,
    speed_floor,
    speed_section,
)
from harness.report.tables import table
from harness.report.verdicts import decision_rows, decision_section, unit_label
from harness.results import BUNDLE_DIR, PRECISION_FILE, Record, bundle, load_records

if TYPE_CHECKING:
    from harness.experiment import Experiment, SavedExperiment


REPORT_FILE = "README.md"


META_FILE = "report.json"


def _env(records: Sequence[Record]) -> dict[str, Any]:
    """The environment of the first speed run that recorded one (planned-only records have none)."""
    with_env = [r for r in records if r.env]
    return dict(next((r.env for r in with_env if r.phase == "speed"), with_env[0].env if with_env else {}))


def _header(s: pd.DataFrame, records: Sequence[Record], exp: Any) -> list[str]:
    env = _env(records)
    base = s.attrs["baseline"]
    name = exp.name if exp is not None else records[0].experiment
    times = sorted(r.env.get("time", "") for r in records if r.env.get("time"))
    device = env.get("gpu_name") or "no GPU"
    n_quality = sum(r.phase == "quality" for r in records)
    n_equiv = sum(r.phase == "equivalence" for r in records)
    commit = commit_of(records)
    lines = [f"# {name}", ""]
    if exp is not None and exp.description:
        lines += [f"> {exp.description}", ""]
    lines += table(["", ""], [
        ["what", f"workload `{s.at[base, 'workload']}`, preset `{s.at[base, 'preset']}`, baseline `{base}`, "
                 f"{len(s) - 1} variant(s)"],
        ["where", f"{device}; CPU {env.get('cpu_model', '?')} ({env.get('cpu_cores', '?')} cores); "
                  f"{env.get('os', '?')}"],
        ["software", f"torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '–'}, "
                     f"Python {env.get('python', '?')}"],
        ["code", f"commit `{commit}`"],
        ["when", f"{times[0]} – {times[-1]}" if times else "unknown"],
        ["repeats", f"{int(s['repeats'].max())} speed repeats per variant, interleaved; {n_quality} quality "
                    f"run(s); {n_equiv} equivalence check(s)"],
        ["records", f"[`{BUNDLE_DIR}/`]({BUNDLE_DIR}/) beside this report ({len(records)} records, "
                    f"{sum(r.status != 'ok' for r in records)} failed): `trainbench report` and `compare` read it"],
    ])
    return lines


def commit_of(records: Sequence[Record]) -> str:
    """The commit the runs measured (10 hex digits, "(dirty)" when the tree had changes), or "unknown"."""
    env = _env(records)
    return (env.get("git_commit") or "unknown")[:10] + (" (dirty)" if env.get("git_dirty") else "")


def _windows(s: pd.DataFrame) -> list[str]:
    """Variants whose measured window is shorter than the intervals' calibration (`CALIBRATED_WINDOW_S`)."""
    windows = {v: median([x.window_totals.get("window_s") for x in r["speed_records"]]) for v, r in s.iterrows()}
    short = [(v, w) for v, w in windows.items() if math.isfinite(w) and w < CALIBRATED_WINDOW_S]
    if not short:
        return []
    return [f"⚠️ Measured windows shorter than the {CALIBRATED_WINDOW_S:g} s the intervals were calibrated on "
            "(`bench/measure_precision.py`): " + ", ".join(f"`{v}` {w:.2f} s" for v, w in short)
            + ". One scheduler hiccup weighs more in a short window; raise `bench_steps` for these variants.", ""]


def _warnings(records: Sequence[Record]) -> list[str]:
    """Each distinct warning the runs recorded (settings that do nothing or hurt here), with its variants."""
    seen: dict[str, list[str]] = {}
    for r in records:
        for w in r.warnings:
            names = seen.setdefault(w, [])
            if r.variant not in names:
                names.append(r.variant)
    if not seen:
        return []
    return table(["Warning", "variants"], [[w.replace("|", "\\|"), ", ".join(f"`{v}`" for v in names)]
                                            for w, names in seen.items()])


def _failures(records: Sequence[Record]) -> list[str]:
    failed = [r for r in records if r.status != "ok"]
    if not failed:
        return ["None: every run finished.", ""]
    return table(["Variant", "phase", "repeat", "status", "error (last line)"],
                 [[f"`{r.variant}`", r.phase, r.repeat, r.status,
                   f"`{(r.error.strip().splitlines() or [''])[-1][:200]}`"] for r in failed])


def _baseline_name(records: Sequence[Record], exp: Any) -> str:
    if exp is not None:
        return exp.baseline_name
    speed = [r.variant for r in records if r.phase == "speed"] or [r.variant for r in records]
    names = list(dict.fromkeys(speed))
    return "baseline" if "baseline" in names else names[0]  # the runner interleaves speed runs baseline first


def write_report(results_dir: Path, out_dir: Path, experiment: Experiment | SavedExperiment | None = None, *,
                 plots: bool = True) -> Path:
    """Write out_dir/README.md and its PNGs from a results directory; returns the README path.

    `experiment` defaults to the one saved in the directory; knob kinds, metric directions and the cost
    model come from the directory's `workload.json` (a directory without one reports the records alone).
    """
    results_dir, out_dir = Path(results_dir), Path(out_dir)
    records = load_records(results_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results_dir = bundle(results_dir, out_dir / BUNDLE_DIR)  # the report carries what it was rendered from
    exp = experiment if experiment is not None else load_saved_experiment(results_dir)
    workload = load_description(results_dir)
    s = summarize(records, _baseline_name(records, exp), target=getattr(exp, "quality_target", None),
                  workload=workload, quality_margin=getattr(exp, "quality_margin", None))
    out_dir.mkdir(parents=True, exist_ok=True)
    from harness.report import plots as figures_module

    base = s.attrs["baseline"]
    floor = speed_floor(records, base)
    s.attrs["resolved"] = {v: resolved(r, floor) for v, r in s.iterrows() if v != base}
    name = exp.name if exp is not None else records[0].experiment
    figures = figures_module.write_all(s, out_dir, title=f"{name} @ {commit_of(records)}") if plots else {}
    notes_path = results_dir / PRECISION_FILE
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    sessions = load_sessions(results_dir)
    s.attrs["across_sessions"] = across_sessions(s, sessions)
    lines = _header(s, records, exp)
    lines += [f"**Headline:** {headline(s, floor)}.", ""]
    known = gates.known_metrics(s.attrs.get("quality_metrics", []))
    checked = gates.check(exp.gates, s, base, known) if exp is not None and exp.gates else []
    sections = [("What it buys, what it costs", decision_section(s, floor)),
                ("Key changes", key_changes_section(s, workload)), ("Warnings", _windows(s) + _warnings(records)),
                ("Speed", speed_section(s)), ("Same effective batch", effective_batch_section(s)),
                ("torch.compile", compile_section(s)), ("Precision and contention", precision_section(s, exp, notes)),
                ("Reproducibility", reproducibility_section(s, records, sessions)),
                ("Noise floor", noise_section(records, base)), ("Data-parallel scaling", ddp_section(s)),
                ("Equivalence", equivalence_section(s)), ("Quality", quality_section(s)),
                ("Phase breakdown", phases_section(s)), ("Gates", gates_section(checked, exp)),
                ("Advisor", advice_section(s)), ("Predicted vs measured cost", costs_section(s, workload))]
    for title, body in sections:
        if body:
            lines += [f"## {title}", "", *body]
    if figures:
        lines += ["## Plots", ""]
        captions = {"throughput": "Throughput and speedup", "phases": "Phase breakdown",
                    "quality": "Quality vs wall-clock time and epochs",
                    "resources": "Utilisation and memory per variant",
                    "scaling": "Scaling", "ddp_scaling": "Data-parallel scaling"}
        lines += [f"![{captions[k]}]({p.name})\n" for k, p in figures.items()]
    lines += ["## Failed and skipped runs", "", *_failures(records)]
    source = getattr(exp, "source", "")
    lines += ["## Reproduce", "", "```", *([f"trainbench sweep {_portable(source)}"] if source else []),
              f"trainbench report {BUNDLE_DIR}/ --out DIR   # this report again, from the records beside it", "```",
              ""]
    readme = out_dir / REPORT_FILE
    readme.write_text("\n".join(lines))
    env = _env(records)
    meta = {"experiment": name, "headline": headline(s, floor), "commit": commit_of(records),
            "when": env.get("time", ""), "device": env.get("gpu_name") or env.get("cpu_model", ""),
            "work_unit": unit_label(s), "gates": {"passed": sum(g.passed for g in checked), "total": len(checked),
                                                  "failed": [g.expr for g in checked if not g.passed]}}
    write_report_json(s, records, notes, out_dir / META_FILE, meta, floor)
    return readme


def _portable(source: str) -> str:
    """An experiment file's path as a reader can type it: relative to the project, never a machine's path."""
    path = Path(source)
    if not path.is_absolute():
        return source
    parts = path.parts
    return "/".join(parts[parts.index("bench"):]) if "bench" in parts else path.name


def _num(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _estimate_json(e: Any) -> dict[str, Any]:
    return {"estimate": _num(e.ratio), "ci_low": _num(e.ci_low), "ci_high": _num(e.ci_high), "n": e.n,
            "interval": e.method}


def write_report_json(s: pd.DataFrame, records: Sequence[Record], notes: Mapping[str, Any], path: Path,
                      meta: Mapping[str, Any], floor: float | None = None) -> None:
    """report.json: the header (commit, when, device, the unit, gates: read by the index) and, per variant, its
    config, every throughput and memory figure, the speedup with its interval and decision, quality with its
    change, the verdict, and the contention evidence of every speed run, for scripts."""
    variants = {}
    interfered = {id(x): why for x, why in interfered_runs(records)}
    decided = {x.variant: x for x in decision_rows(s, floor)}
    metrics = s.attrs.get("quality_metrics", [])
    for v, r in s.iterrows():
        runs = [{"repeat": x.repeat, "attempt": x.attempt, "samples_per_s": _num(x.metrics.get("samples_per_s")),
                 "contention": dict(x.contention), "state_ms": run_state(x), "interfered": interfered.get(id(x), "")}
                for x in records if x.variant == v and x.phase == "speed"]
        pooled = s.attrs.get("across_sessions", {}).get(v)
        row = decided.get(str(v))
        variants[v] = {
            "config": dict(r["config"]), "changed": {k: [a, b] for k, (a, b) in r["changed"].items()},
            "speedup": _num(r["speedup"]), "ci_low": _num(r["speedup_ci_low"]), "ci_high": _num(r["speedup_ci_high"]),
            "n": int(r.get("speedup_pairs", 0) or 0), "interval": r.get("speedup_method"),
            "half_width_pct": _num(r.get("speedup_half_width_pct")), "clock": r.get("speedup_clock", ""),
            "resolved": bool(s.attrs.get("resolved", {}).get(v, False)),
            **{m: _num(r.get(m)) for m in ("samples_per_s", "tokens_per_s", "padded_tokens_per_s", "it_per_s",
                                           "step_ms", "train_wall_s", "peak_rss_gib", "cuda_peak_allocated_gib",
                                           "saved_tensors_gib", "energy_j_per_sample", "forward_calls_per_step")},
            "quality": {m: _num(r.get(m)) for m in metrics},
            "quality_delta": {m: {"delta": _num(r.get(f"{m}_delta")), "ci_low": _num(r.get(f"{m}_delta_ci_low")),
                                  "ci_high": _num(r.get(f"{m}_delta_ci_high"))} for m in metrics},
            "decision": None if row is None else {
                "speed": row.speed.outcome, "speed_text": row.speed.text(),
                "quality": None if row.quality is None else row.quality.outcome, "quality_text": row.quality_text,
                "memory_ratio": _num(row.memory_ratio), "memory_text": row.memory_text,
                "verdict": row.verdict.word, "why": row.verdict.why},
            "window_s": _num(median([x.window_totals.get("window_s") for x in r["speed_records"]])),
            "repeats": int(r["repeats"]),
            "reruns": int(r.get("reruns", 0)), "contended_runs": int(r.get("contended_runs", 0)),
            "still_contended": int(r.get("still_contended", 0)), "interfered_runs": int(r.get("interfered_runs", 0)),
            "equivalence": r.get("equiv_status"), "runs": runs,
            "across_sessions": None if pooled is None else {
                "sessions": pooled.sessions, "ratio": _num(pooled.ratio), "prediction_low": _num(pooled.pred_low),
                "prediction_high": _num(pooled.pred_high), "between_session_sd_pct": _num(pooled.tau_pct),
                "within_session_half_width_pct": _num(pooled.within_pct)}}
    path.write_text(json.dumps({**meta, "baseline": s.attrs["baseline"], "precision": dict(notes),
                                "variants": variants}, indent=1, default=str))


def write_index(reports_dir: Path) -> Path:
    """reports_dir/README.md linking every report below it with its headline, gates, commit and date."""
    reports_dir = Path(reports_dir)
    rows = []
    for readme in sorted(reports_dir.glob(f"*/{REPORT_FILE}")):
        meta_path = readme.parent / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        name = meta.get("experiment", readme.parent.name)
        g = meta.get("gates") or {}
        gate_text = "–" if not g.get("total") else f"{g['passed']}/{g['total']}" + (" ✅" if not g.get("failed")
                                                                                    else " ❌")
        rows.append([f"[{name}]({readme.parent.name}/{REPORT_FILE})", meta.get("headline", "–"), gate_text,
                     f"`{meta['commit']}`" if meta.get("commit") else "–", meta.get("when", "–"),
                     meta.get("device", "–")])
    commits = {r[3] for r in rows if r[3] != "–"}
    lines = ["# trainbench reports", "", "Generated by `trainbench sweep`; each report links its plots, its raw "
             "numbers (`report.json`) and the records it was rendered from (`results/`)."
             + (f" Every report here measured commit {next(iter(commits))}." if len(commits) == 1 else ""), ""]
    lines += table(["Experiment", "Headline", "gates", "commit", "when", "device"], rows) if rows else \
        ["No reports yet.", ""]
    index = reports_dir / REPORT_FILE
    reports_dir.mkdir(parents=True, exist_ok=True)
    index.write_text("\n".join(lines))
    return index
