"""The report's sections on what a variant keeps or costs: equivalence, quality, gates and the advisor."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from harness.analysis import advisor, gates
from harness.analysis.stats import MIN_REPEATS as MIN_SEEDS  # the fewest paired values with an interval
from harness.report.cells import (
    equiv_mark,
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
    smoke = ([f"**A smoke of the quality path, not a comparison**: {seeds} seed{'s' if seeds != 1 else ''}, so no "
              "quality change below has an interval. The replicated comparisons (3 or more seeds, to a level that "
              "means something) are the experiments in `bench/experiments/quality/`.", ""]
             if seeds < MIN_SEEDS else [])
    return [*smoke,
            "Final metrics after equal epochs, the change of the primary metric vs the baseline, time-to-target "
            "(training seconds to first reach the target, interpolated between evaluations, evals excluded; the "
            "median over seeds with a 95% interval from 3 seeds (Student-t on log seconds), and how many seeds "
            "reached it), and the primary "
            f"metric at equal wall-clock time (the shortest run's training time).{default}", "",
            *table(headers, rows, "lrr" + "r" * len(metrics) + "rrrr")]


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
