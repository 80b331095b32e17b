"""The report's sections on what a variant keeps or costs: equivalence, quality, gates and the advisor."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.analysis import advisor, decision, gates
from harness.analysis.stats import MIN_REPEATS as MIN_SEEDS  # the fewest paired values with an interval
from harness.analysis.summary import quality_delta
from harness.report.cells import (
    equiv_mark,
    finite,
    fmt,
    fmt_delta,
)
from harness.report.tables import table


def equivalence_section(s: pd.DataFrame) -> list[str]:
    rows = []
    for v, r in s.iterrows():
        if v == s.attrs["baseline"]:
            continue
        decided = r["equiv_status"] in ("pass", "fail")
        rows.append([f"`{v}`", r["equiv_compared"] or "–", (r["equiv_dtype"] or "–") if decided else "–",
                     fmt(r["equiv_tolerance"]) if decided else "–", fmt(r["equiv_max_abs_err"]),
                     fmt(r["equiv_max_rel_err"]), equiv_mark(r), r["equiv_reason"] or "–"])
    if all(s["equiv_status"].isin(["not checked", "baseline"])):
        return ["No equivalence checks in this sweep (`equivalence = true` in the experiment runs them).", ""]
    return ["One optimizer step of each variant against the baseline from the same initial weights and batch; "
            "tolerance by dtype (float32 ~1e-5, bf16/fp16 ~1e-2).", "",
            *table(["Variant", "compared", "dtype", "tolerance", "max abs err", "max rel err", "result", "note"],
                   rows, "lllrrrll")]


def quality_section(s: pd.DataFrame) -> list[str]:
    metrics, primary = s.attrs.get("quality_metrics", []), s.attrs.get("primary_metric")
    has = s[[bool(s.at[v, "curve"]) or (bool(primary) and math.isfinite(float(s.at[v, primary])))
             for v in s.index]]
    if not metrics or has.empty:
        return ["No quality runs in this sweep (set `quality_epochs` in the experiment).", ""]
    target, equal_s = s.attrs.get("target"), s.attrs.get("equal_time_s")
    headers = ["Variant", "epochs", "best epoch", *metrics, f"Δ {primary}", "train s",
               (f"time to {primary} {'≥' if s.attrs.get('higher_is_better', True) else '≤'} {fmt(target)} (s)"
                if target is not None else "time to target (s)"),
               f"{primary} at {fmt(equal_s)} s"]
    rows = [[f"`{v}`", fmt(r["epochs_run"]), fmt(r["best_epoch"]), *(fmt(r[m], 4) for m in metrics),
             fmt_delta(r[f"{primary}_delta"]),
             fmt(r["train_wall_s"]), _time_to_target(r) if target is not None else "no target set",
             fmt(r["primary_at_equal_time"], 4)] for v, r in has.iterrows()]
    default = (f" The target, {primary} {fmt(target)}, is 95% of the baseline's final value (no `quality_target` "
               "set)." if s.attrs.get("target_is_default") else "")
    seeds = max((len(runs) for runs in s.get("quality_runs", pd.Series(dtype=object)) if runs), default=0)
    reused = [f"`{v}`" for v in has.index if has.at[v, "reused_from"]]
    same = ([f"{', '.join(reused)}: not re-trained. Each changes only exact knobs and passed its equivalence check "
             "(the baseline's function, outputs and gradients), so its quality records are the baseline's of the "
             "same seeds, marked as such in the records; its time is its speed runs' (no train s or time to target "
             "here).", ""] if reused else [])
    smoke = ([f"**A smoke of the quality path, not a comparison**: {seeds} seed{'s' if seeds != 1 else ''}, so no "
              "quality change below has an interval. The replicated comparisons (3 or more seeds, to a level that "
              "means something) are the experiments in `bench/experiments/quality/`.", ""]
             if seeds < MIN_SEEDS else [])
    return [*smoke, *metric_changes(s), *same,
            "Final metrics after equal epochs, the change of the primary metric vs the baseline, time-to-target "
            "(training seconds to first reach the target, interpolated between evaluations, evals excluded; the "
            "median over seeds with a 95% interval from 3 seeds (Student-t on log seconds), and how many seeds "
            "reached it), and the primary "
            f"metric at equal wall-clock time (the shortest run's training time).{default}", "",
            *table(headers, rows, "lrr" + "r" * len(metrics) + "rrrr")]


def _constant(s: pd.DataFrame, metric: str) -> float | None:
    """The metric's one value when every quality run of every variant has it (a property of the data, such as a
    generating model's own score), else None."""
    values = {q.get(metric) for runs in s.get("quality_runs", pd.Series(dtype=object)) if runs for q in runs.values()}
    return float(next(iter(values))) if len(values) == 1 and finite(next(iter(values))) else None


def metric_changes(s: pd.DataFrame) -> list[str]:
    """Per variant and quality metric, the change against the baseline paired by seed, its 95% interval and its
    decision: better/worse for the primary metric (the experiment's quality_margin), higher/lower for the others
    (their good direction is the workload's to know; margin 2% of the baseline's value); a metric with one value in
    every run (the data's, not the model's) is stated once below the table. Nothing below `MIN_SEEDS` seeds (no
    interval to show: the smoke note says so)."""
    metrics, primary = s.attrs.get("quality_metrics", []), s.attrs.get("primary_metric")
    baseline = s.attrs["baseline"]
    if baseline not in s.index or "quality_runs" not in s or len(s.at[baseline, "quality_runs"] or ()) < MIN_SEEDS:
        return []
    constant = {m: c for m in metrics if (c := _constant(s, m)) is not None}
    shown = [m for m in metrics if m not in constant]
    rows = []
    for v, r in s.iterrows():
        if v == baseline or not r["quality_runs"]:
            continue
        cells = []
        for m in shown:
            delta = quality_delta(r, m)
            if not finite(delta.ratio):
                cells.append("–")
                continue
            own = m == primary
            d = decision.quality_decision(delta, float(s.at[baseline, m]), higher_is_better=bool(
                s.attrs.get("higher_is_better", True)) if own else True,
                margin=s.attrs.get("quality_margin") if own else None,
                words=decision.QUALITY if own else ("higher", "lower"))
            cells.append(f"{d.evidence()} {d.label}")
        rows.append([f"`{v}`", str(int(quality_delta(r, shown[0]).n)) if shown else "–", *cells])
    if not rows:
        return []
    fixed = ("Same in every run (the data's, not a model's): "
             + ", ".join(f"{m} {fmt(c, 4)}" for m, c in constant.items()) + ".") if constant else ""
    return ["Each quality metric's change against the baseline, paired by seed (mean difference, Student-t 95% "
            f"interval), and what it decides: better/worse for {primary} (within ±"
            f"{fmt(s.attrs.get('quality_margin')) if s.attrs.get('quality_margin') is not None else '2%'}: no change),"
            " higher/lower for the others (within ±2% of the baseline's value: no change).", "",
            *table(["Variant", "seeds", *(f"Δ {m}" for m in shown)], rows, "lr" + "l" * len(shown)),
            *([fixed, ""] if fixed else [])]


def _time_to_target(r: pd.Series) -> str:
    reached = str(r.get("time_to_target_reached") or "")
    if not reached:
        return "–"
    if not math.isfinite(float(r["time_to_target_s"])):
        return f"not reached ({reached} seeds)"
    ci = ""
    if math.isfinite(float(r.get("time_to_target_ci_low", math.nan))):
        ci = f" [{fmt(r['time_to_target_ci_low'])}, {fmt(r['time_to_target_ci_high'])}]"
    return f"{fmt(r['time_to_target_s'])}{ci} ({reached})"


def gates_section(results: list[gates.GateResult], exp: Any) -> list[str]:
    """The experiment's gates as checked (`gates.check`), passed first-to-last in the file's order."""
    if exp is None or not exp.gates:
        return ["No gates defined (add `gates = [...]` to the experiment file)." if exp is not None else
                "No experiment file given, so no gates were checked.", ""]
    passed = sum(r.passed for r in results)
    lines = [f"{passed}/{len(results)} passed.", ""]
    for r in results:
        lines.append(f"- {'✅' if r.passed else '❌'} `{r.expr}` — {r.measured}"
                     + ("" if r.passed else f" — **{r.message}**"))
    return lines + [""]


def advice_section(s: pd.DataFrame) -> list[str]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for v, findings in advisor.advise_summary(s).items():
        for f in findings:
            grouped.setdefault((f.rule, f.message), []).append(f"`{v}`: {f.evidence}")
    if not grouped:
        return ["No rule fired: no input, launch, padding, duplicate-forward, AMP, batch-size, quality or memory "
                "problem detected.", ""]
    return [*(f"- **{rule}**: {msg}. Evidence: {'; '.join(evidence)}." for (rule, msg), evidence in grouped.items()),
            ""]
