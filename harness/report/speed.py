"""The report's speed sections: the headline, key changes, the speed table, precision, effective batch,
compile, noise floor, phases, DDP scaling and the cost model."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from harness.analysis import cost, decision
from harness.analysis.reproducibility import INTERFERED_PCT
from harness.analysis.scaling import scaling_table
from harness.analysis.summary import noise_floor, same_effective_batch
from harness.description import WorkloadDescription
from harness.experiment import BATCH_SPLIT_KNOBS
from harness.knobs import global_batch
from harness.report.cells import (
    ci_text,
    equiv_mark,
    fmt,
    fmt_delta,
    fmt_pct,
    knob_kind,
    peak_memory,
    speed_decision,
)
from harness.report.tables import table
from harness.report.verdicts import decision_rows, quality_headline, quality_only, unit_label
from harness.results import PHASE_NAMES, Record


def headline(s: pd.DataFrame, floor: float | None = None) -> str:
    """One line that decides: the fastest variant to adopt (decided faster at no decided cost), in the unit the work
    calls for; else why none is, naming the fastest decided-faster variant and what it still lacks (a quality knob
    without a quality run is never headlined as a win)."""
    base = s.attrs["baseline"]
    if quality_only(s):
        return quality_headline(s, floor)
    rows = [x for x in decision_rows(s, floor) if math.isfinite(x.speed.estimate.ratio)]
    if not rows:
        return f"`{base}`: {fmt(s.at[base, 'samples_per_s'])} samples/s (no variant measured against it)"
    unit = unit_label(s)
    faster = sorted((x for x in rows if x.speed.outcome == decision.BETTER), key=lambda x: -x.speed.estimate.ratio)
    adopted = [x for x in faster if x.verdict.word == decision.ADOPT]
    if adopted:
        best = adopted[0]
        text = f"adopt `{best.variant}`: {best.speed.label} than `{base}`, {best.speed.evidence()} its {unit}, " \
               f"{best.verdict.why.split(', ', 1)[-1]}"
    elif faster:
        best = faster[0]
        text = f"nothing to adopt yet: `{best.variant}` is {best.speed.label} ({best.speed.evidence()} the {unit} " \
               f"of `{base}`), verdict {best.verdict.word}: {best.verdict.why}"
    else:
        return (f"no variant is decided faster than `{base}` here (each is slower, equivalent within the margin, or "
                "unresolved); see the decision table")
    if s.at[best.variant, "unstable"]:
        text += " (unstable: see the speed table)"
    pooled = s.attrs.get("across_sessions", {}).get(best.variant)
    if pooled is not None and pooled.sessions >= 3:
        text += f"; {pooled.describe()}"
    elif pooled is not None:
        text += f" (this session; {pooled.sessions} session(s) of this code on this machine so far)"
    return text


def key_changes_section(s: pd.DataFrame, workload: WorkloadDescription | None) -> list[str]:
    rows = []
    primary = s.attrs.get("primary_metric")
    for v, row in s.iterrows():
        changed = row["changed"]
        impact = f"{unit_label(s)} {ci_text(row)}" if math.isfinite(float(row["speedup"])) else "no successful run"
        if primary and math.isfinite(float(row.get(f"{primary}_delta", math.nan))):
            impact += f"; {primary} {fmt_delta(row[f'{primary}_delta'])}"
        impact += f"; {equiv_mark(row)}"
        if len(changed) > 1:
            impact += " (all knobs together)"
        base_cfg = s.at[s.attrs["baseline"], "config"]
        for knob, (old, new) in changed.items():
            kind = knob_kind(knob, workload)
            if knob in BATCH_SPLIT_KNOBS:  # exact only at the same global batch (the same gradient)
                before, after = global_batch(base_cfg), global_batch(row["config"])
                kind = "exact: same global batch" if before == after else f"quality: global batch {before} → {after}"
            rows.append([f"`{v}`", f"**{knob}** ({kind})", fmt(old), fmt(new), impact])
    if not rows:
        return ["No variant changes a knob.", ""]
    return table(["Variant", "Knob (kind)", "Baseline", "Variant", "Measured impact (95% CI)"], rows)


def speed_section(s: pd.DataFrame) -> list[str]:
    rows = []
    for v, r in s.iterrows():
        mem = peak_memory(r)
        rows.append([
            f"`{v}`", f"{fmt(r['samples_per_s'])} ({fmt(r['samples_per_s_min'])}–{fmt(r['samples_per_s_max'])})",
            fmt(r["tokens_per_s"]), fmt(r["padded_tokens_per_s"]), fmt(r["it_per_s"]),
            f"{fmt(r['step_ms'])} ({fmt(r['step_ms_p10'])}–{fmt(r['step_ms_p90'])})",
            "baseline" if v == s.attrs["baseline"] else ci_text(r), fmt(mem),
            fmt(float(r.get("saved_tensors_gib", math.nan)) * 1024), fmt(r["gpu_util_pct"]),
            fmt(r["energy_j_per_sample"]), fmt(r["forward_calls_per_step"]), equiv_mark(r),
            ("⚠️ " if r["unstable"] else "") + r["status"]])
    lines = table(["Variant", "samples/s (min–max)", "tokens/s", "padded tokens/s", "it/s", "step ms (p10–p90)",
                   f"speedup ({unit_label(s)}) [95% CI]", "peak mem GiB", "saved MiB", "GPU util %", "J/sample",
                   "fwd calls/step", "equivalence", "runs (all phases)"], rows, "lrrrrrlrrrrrll")
    lines += ["samples/s: median of per-run medians (min–max across repeats); step ms: median, p10–p90 over every "
              f"measured step; speedup: geometric mean of paired {unit_label(s)} ratios (repeat i vs repeat i of the "
              "baseline, each a fresh process) with a Student-t 95% interval across the repeats (\"insufficient\" "
              "below 3 pairs); peak mem: CUDA allocated, else the process's peak RSS over the measured window; "
              "saved MiB: what autograd keeps for backward (activations), the largest micro-step of the warmup steps.",
              ""]
    kernels = {v: next((rec.env.get("note_attention_kernels", "") for rec in r["speed_records"]), "")
               for v, r in s.iterrows()}
    if any(kernels.values()):
        lines += ["Attention kernels torch's scaled_dot_product_attention ran (seen in the FLOP-counted step): " +
                  "; ".join(f"`{v}`: {k or 'none (no SDPA call)'}" for v, k in kernels.items()), ""]
    for v, r in s.iterrows():
        if r["unstable"]:
            lines.append(f"- ⚠️ `{v}` is unstable: {r['advice']}")
    return lines + [""] if s["unstable"].any() else lines


def precision_section(s: pd.DataFrame, exp: Any, notes: Mapping[str, Any]) -> list[str]:
    """What each speedup's interval reached against the target, and what was re-run for contention, why."""
    precision = dict(getattr(exp, "precision", {}) or {})
    target = precision.get("target_half_width_pct", notes.get("target_half_width_pct"))
    rows = []
    for v, r in s.iterrows():
        if v == s.attrs["baseline"]:
            reached = "(baseline)"
        else:
            hw = float(r.get("speedup_half_width_pct", math.nan))
            reached = f"±{fmt(hw)}%" if math.isfinite(hw) else "no interval"
            if target and math.isfinite(hw):
                reached += " ✅" if hw <= float(target) else " (target not reached)"
        rows.append([f"`{v}`", r["repeats"], reached, r.get("reruns", 0), r.get("contention", "") or "none",
                     r.get("interference", "") or "none"])
    lines = [f"Target: 95% interval half-width ≤ ±{fmt(target)}% of each speedup, within "
             f"{fmt(precision.get('max_repeats'))} repeats and {fmt(precision.get('budget_s'))} s of added runs; a "
             "speed run whose steps waited for a CPU (contended), or whose machine-state kernels ran more than "
             f"{INTERFERED_PCT:g}% slower than the session's median (interfered), is re-run (at most "
             f"{fmt(precision.get('max_reruns'))} re-runs)." if target else
             "No precision target (a fixed number of repeats).", ""]
    lines += table(["Variant", "repeats", "half-width reached", "re-runs", "contended runs (evidence)",
                    "interfered runs (evidence)"], rows, "lrrrll")
    lines += [f"- {n}" for n in notes.get("notes", [])]
    return lines + [""]


def effective_batch_section(s: pd.DataFrame) -> list[str]:
    """The ranking of every batch_size x grad_accum at one effective batch, with intervals and equivalence."""
    ranked = same_effective_batch(s)
    if not ranked:
        return []
    base = s.attrs["baseline"]
    cfg = s.at[base, "config"]
    rows = []
    for i, v in enumerate(ranked, 1):
        r = s.loc[v]
        mem = peak_memory(r)
        rows.append([i, f"`{v}`", r["config"].get("batch_size"), r["config"].get("grad_accum", 1),
                     f"{fmt(r['samples_per_s'])} ({fmt(r['samples_per_s_min'])}–{fmt(r['samples_per_s_max'])})",
                     "baseline" if v == base else ci_text(r), fmt(mem), equiv_mark(r), r["status"]])
    effective = global_batch(cfg)
    best = ranked[0]
    if best == base:
        verdict = f"the baseline `{base}` is the fastest measured"
    elif speed_decision(s.loc[best]).outcome == decision.BETTER:
        verdict = f"`{best}` is the fastest, {ci_text(s.loc[best])} against `{base}`"
    else:
        verdict = f"`{best}` measured fastest, but against `{base}` it is {speed_decision(s.loc[best]).text()}"
    lines = [f"Every batch_size x grad_accum = {effective} that ran, ranked by samples/s: the same gradient each "
             f"(checked against the baseline), so only speed and memory differ. **{verdict}.**", ""]
    return lines + table(["rank", "variant", "batch_size", "grad_accum", "samples/s (min–max)", "speedup [95% CI]",
                          "peak mem GiB", "equivalence", "runs"], rows, "rlrrrlrll") + [""]


def compile_section(s: pd.DataFrame) -> list[str]:
    """Variants that ran torch.compile: what compiling cost, outside the window, and when it pays off."""
    rows = []
    base = s.loc[s.attrs["baseline"]]
    for v, r in s.iterrows():
        if not math.isfinite(float(r.get("compile_s", math.nan))):
            continue
        steps = float(r["break_even_steps"])
        faster = speed_decision(r).outcome == decision.BETTER
        even = "(baseline)" if v == s.attrs["baseline"] else \
            f"after {math.ceil(steps):,} steps" if faster and math.isfinite(steps) else \
            "never (no resolved per-step saving)" if math.isfinite(float(r["speedup_ci_high"])) or steps == math.inf \
            else "-"
        rows.append([f"`{v}`", r["config"].get("compile_mode", "default"), fmt(r["compile_s"]), fmt(r["compile_s_max"]),
                     fmt(r["recompiles"]), fmt(r["compile_in_window_s"]), fmt(r["step_ms"]), fmt(base["step_ms"]),
                     "baseline" if v == s.attrs["baseline"] else ci_text(r), even])
    if not rows:
        return []
    lines = table(["Variant", "mode", "compile s (median)", "compile s (max)", "recompiles", "compile s in window",
                   "step ms", "baseline step ms", "speedup [95% CI]", "break-even"], rows, "llrrrrrrll")
    return lines + ["compile s: torch.compile's own frame-compilation time (dynamo, AOT autograd, inductor) in the "
                    "warmup, excluded from the measured window (importing the compiler, once per process, is not "
                    "in it); the max is usually the first run's, with cold "
                    "caches. recompiles: frames compiled again after the first step. break-even: compile seconds "
                    "over the seconds each optimizer step saves against the baseline's median step, when the "
                    "speedup's interval is above 1.", ""]


def noise_section(records: Sequence[Record], base: str) -> list[str]:
    try:
        nf = noise_floor(list(records), base)
    except ValueError as exc:
        return [f"Not available: {exc}", ""]
    return [f"{nf['message']} — method: {nf['method']}; baseline run-to-run spread "
            f"{fmt(nf['baseline_spread_pct'])}%. Speedups inside x{fmt(1 / nf['min_resolvable_speedup'])}–"
            f"x{fmt(nf['min_resolvable_speedup'])} are within noise here.", ""]


def phases_section(s: pd.DataFrame) -> list[str]:
    # communication is a phase of data-parallel runs only: its column is shown where some run has it
    names = [p for p in PHASE_NAMES if p != "communication" or (s["phase_ms_communication"].fillna(0) > 0).any()]
    rows = [[f"`{v}`", *(fmt_pct(r[f"phase_pct_{p}"]) for p in names), fmt(r["step_ms"])]
            for v, r in s.iterrows() if math.isfinite(float(r["phase_pct_forward"]))]
    if not rows:
        return ["No phase timings recorded.", ""]
    return table(["Variant", *(f"{p} %" for p in names), "step ms"], rows, "l" + "r" * (len(names) + 1))


def ddp_section(s: pd.DataFrame) -> list[str]:
    """The data-parallel scaling table (`harness.analysis.scaling`), when the variants differ in rank count."""
    t = scaling_table(s)
    if t is None:
        return []
    rows = []
    for v, r in t.iterrows():
        is_base = v == s.attrs["baseline"]
        eff = "–" if not math.isfinite(float(r["efficiency"])) else fmt(r["efficiency"]) \
            if is_base or not math.isfinite(r["efficiency_ci_low"]) else \
            f"{fmt(r['efficiency'])} [{fmt(r['efficiency_ci_low'])}, {fmt(r['efficiency_ci_high'])}]"
        comm = "–" if not math.isfinite(float(r["communication_pct"])) else \
            f"{fmt_pct(r['communication_pct'])} ({fmt_pct(r['communication_pct_min'])}–" \
            f"{fmt_pct(r['communication_pct_max'])})"
        rows.append([f"`{v}`", int(r["ranks"]), int(r["global_batch"]),
                     f"{fmt(r['samples_per_s'])} ({fmt(r['samples_per_s_min'])}–{fmt(r['samples_per_s_max'])})",
                     "baseline" if is_base else ci_text(s.loc[v]), eff, comm, fmt_pct(r["rank_skew_pct"]),
                     fmt(r["allreduce_busbw_gbps"])])
    lines = table(["Variant", "ranks", "global batch", "samples/s (min–max)", "speedup [95% CI]",
                   "efficiency [95% CI]", "communication % (min–max)", "rank skew %", "all-reduce GB/s"], rows,
                  "lrrrllrrr")
    return lines + [
        "samples/s: every rank's samples / the slowest rank's measured window; efficiency = speedup / (ranks / the "
        "baseline's ranks), 1 = linear; communication: the gradient all-reduce time that did not overlap compute, "
        "% of a step, of the slowest rank (median, min–max over repeats); rank skew: slowest minus fastest rank's "
        "compute per step, % of a step (what stragglers cost); all-reduce GB/s: bus bandwidth of a gradient-sized "
        "all-reduce, measured after the window.", ""]


def costs_section(s: pd.DataFrame, workload: WorkloadDescription | None) -> list[str]:
    tables = cost.cost_tables(s, workload)
    lines = []
    for title, df in tables:
        lines += [f"### {title}", "", *table(list(df.columns), df.to_numpy().tolist(), "lrrr")]
    return lines


def speed_floor(records: Sequence[Record], base: str) -> float | None:
    try:
        return float(noise_floor(list(records), base)["min_resolvable_speedup"])
    except ValueError:
        return None
