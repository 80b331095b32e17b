"""The report's first table: per variant, what it buys (speed in the unit the work calls for), what it costs
(quality, memory) and the verdict of the project's one decision rule (`decision.verdict`)."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from harness.analysis import decision
from harness.analysis.summary import quality_delta
from harness.report.cells import finite, fmt, speed_decision
from harness.report.tables import table

UNIT_LABEL = {"samples": "samples/s", "tokens": "real tokens/s"}


def unit_label(s: pd.DataFrame) -> str:
    """What the summary's speedups count: "samples/s" or "real tokens/s"."""
    return UNIT_LABEL[s.attrs.get("work_unit", "samples")]


def quality_metric(s: pd.DataFrame) -> str | None:
    """The quality metric the decision table shows: the primary one, unless it is 0 for every variant that ran
    quality (Sudoku's grid accuracy at 0 everywhere has no change to show), then the first other that is not; None
    without quality runs."""
    metrics = list(s.attrs.get("quality_metrics", []))
    primary = s.attrs.get("primary_metric")
    ordered = [primary, *[m for m in metrics if m != primary]] if primary else metrics
    for m in ordered:
        values = {float(x) for x in s[m] if finite(x)} if m in s.columns else set()
        if values - {0.0}:
            return m
    return None


@dataclass(frozen=True, slots=True)
class Row:
    """One variant's line of the decision table, with the decisions behind it (also written to report.json)."""

    variant: str
    speed: decision.Decision
    quality: decision.Decision | None
    quality_text: str
    memory_ratio: float | None
    memory_text: str
    verdict: decision.Verdict


def _quality(s: pd.DataFrame, v: str, metric: str | None) -> tuple[decision.Decision | None, str]:
    r, base = s.loc[v], s.loc[s.attrs["baseline"]]
    if metric is None:
        return None, "unmeasured"
    if not (finite(r[metric]) and finite(base[metric])):
        return None, "unmeasured"
    delta = quality_delta(r, metric)
    own = s.attrs.get("quality_margin") if metric == s.attrs.get("primary_metric") else None  # in its units
    d = decision.quality_decision(delta, float(base[metric]), margin=own,
                                  higher_is_better=bool(s.attrs.get("higher_is_better", True)))
    seeds = f"{delta.n} seed{'s' if delta.n != 1 else ''}"
    if r["reused_from"]:
        return d, f"{metric} {fmt(base[metric], 4)}: the baseline's runs (same function, not re-trained; {seeds})"
    return d, f"{metric} {fmt(base[metric], 4)} → {fmt(r[metric], 4)}: {d.label} {d.evidence()} ({seeds})"


def memory_change(s: pd.DataFrame, v: str) -> tuple[float | None, str]:
    """(variant / baseline of the memory that decides, its text): the CUDA peak on a GPU; on a CPU the bytes saved
    for backward (activations: what checkpointing saves) beside the peak RSS (which the allocator and the optimizer
    state blur)."""
    r, base = s.loc[v], s.loc[s.attrs["baseline"]]

    def ratio(col: str) -> float | None:
        a, b = r.get(col), base.get(col)
        return float(a) / float(b) if finite(a) and finite(b) and float(b) > 0 else None

    if finite(r.get("cuda_peak_allocated_gib")):
        x = ratio("cuda_peak_allocated_gib")
        text = f"CUDA peak {fmt(base['cuda_peak_allocated_gib'])} → {fmt(r['cuda_peak_allocated_gib'])} GiB"
        return x, text + (f" (x{x:.2f})" if x is not None else "")
    parts, x = [], ratio("saved_tensors_gib")
    if x is not None:
        parts.append(f"activations x{x:.2f} ({fmt(base['saved_tensors_gib'] * 1024)} → "
                     f"{fmt(r['saved_tensors_gib'] * 1024)} MiB)")
    if finite(r.get("peak_rss_gib")) and finite(base.get("peak_rss_gib")):
        parts.append(f"RSS {float(r['peak_rss_gib']) - float(base['peak_rss_gib']):+.2f} GiB")
    return x, "; ".join(parts) or "–"


def quality_only(s: pd.DataFrame) -> bool:
    """An experiment of quality runs only (repeats = 0): its speed is another experiment's, its verdict quality's."""
    return not any(len(recs) for recs in s.get("speed_records", pd.Series(dtype=object)))


def decision_rows(s: pd.DataFrame, floor: float | None) -> list[Row]:
    """Every variant but the baseline, decided."""
    metric = quality_metric(s)
    only_quality = quality_only(s)
    rows = []
    for v, r in s.iterrows():
        if v == s.attrs["baseline"]:
            continue
        speed = speed_decision(r, floor)
        quality, quality_text = _quality(s, str(v), metric)
        same = {"pass": True, "fail": False}.get(str(r.get("equiv_status", "")))
        if same and quality is None:
            quality_text = "same function (equivalence check passed)"
        mem_ratio, mem_text = memory_change(s, str(v))
        verdict = decision.quality_only_verdict(quality) if only_quality else \
            decision.verdict(speed, same_function=same, quality=quality, memory_ratio=mem_ratio)
        rows.append(Row(str(v), speed, quality, quality_text, mem_ratio, mem_text, verdict))
    return rows


MARK = {decision.ADOPT: "✅ adopt", decision.REJECT: "❌ reject", decision.UNRESOLVED: "❔ unresolved"}


def quality_headline(s: pd.DataFrame, floor: float | None) -> str:
    """The headline of a quality-only experiment: each variant's quality decision against the baseline at equal
    epochs, in the file's order (a variant that reused the baseline's runs: the same function)."""
    base, metric = s.attrs["baseline"], quality_metric(s)
    if metric is None:
        return f"`{base}`: no quality run to compare against"
    parts = []
    for x in decision_rows(s, floor):
        if s.at[x.variant, "reused_from"]:
            parts.append(f"`{x.variant}` the same function (equivalence passed)")
        elif x.quality is None:
            parts.append(f"`{x.variant}` unmeasured")
        else:
            parts.append(f"`{x.variant}` {x.quality.label} {x.quality.evidence()}")
    seeds = len(s.at[base, "quality_runs"] or ())
    return (f"quality at equal epochs against `{base}` ({metric} {fmt(s.at[base, metric], 4)}, {seeds} "
            f"seed{'s' if seeds != 1 else ''}): " + "; ".join(parts))


def decision_section(s: pd.DataFrame, floor: float | None) -> list[str]:
    """The table that answers "what does it buy, what does it cost, do I take it" before any other."""
    rows = decision_rows(s, floor)
    if not rows:
        return []
    unit, only_quality = unit_label(s), quality_only(s)
    body = [[f"`{x.variant}`", ", ".join(f"{k}={fmt(new)}" for k, (_, new) in s.at[x.variant, "changed"].items()),
             "not measured here (quality runs only)" if only_quality else f"{x.speed.label}: {x.speed.evidence()}",
             x.quality_text, x.memory_text,
             f"**{MARK[x.verdict.word]}**: {x.verdict.why}"] for x in rows]
    why_unit = ("real tokens/s, because some variant changes the tokens a sample holds (a shorter chunk is more "
                "samples, not more work)" if s.attrs.get("work_unit") == "tokens" else "samples/s")
    return [f"Against `{s.attrs['baseline']}`. Speed in {why_unit}, with its 95% interval and the decision "
            f"(equivalent within ±{decision.EQUIVALENCE_MARGIN_PCT:g}% or the noise floor); quality: the change "
            "after equal epochs, or *unmeasured* where no quality run was made; memory: "
            "variant against baseline. Verdict: adopt when decided faster at no decided cost, reject when decided "
            "slower or worse, otherwise unresolved with what would resolve it.", "",
            *table(["Variant", "changes", f"speed ({unit})", "quality", "memory", "verdict"], body, "llllll")]
