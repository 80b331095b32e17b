"""The experiment report: README.md plus PNGs in one directory, readable on GitHub.

Sections follow the source notes' tables, with measurements in place of estimates: header (what, where,
when, repeats), key changes (seed 003), speed, noise floor, equivalence, quality (seed 000) and
time-to-target, phase breakdown (seed 004), gates checklist (seed 003), advisor findings, the cost
table (seed 004), plots, failed runs. `write_index` links every report with its headline.

Everything comes from the results directory: the records, `experiment.json` and `workload.json` (knob
kinds, metric directions, the cost model). Nothing here imports a workload, the registry or the runner,
so a results directory copied to another machine renders the same report.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.analysis import advisor, cost, decision, gates
from harness.analysis.reproducibility import INTERFERED_PCT, interfered_runs, run_state
from harness.analysis.scaling import scaling_table
from harness.analysis.stats import RatioEstimate
from harness.analysis.summary import noise_floor, same_effective_batch, summarize
from harness.description import WorkloadDescription, load_description
from harness.experiment import load_saved_experiment
from harness.history import load_sessions
from harness.knobs import GENERIC_BY_NAME, global_batch
from harness.report.reproducibility import across_sessions, reproducibility_section
from harness.report.tables import table
from harness.results import PHASE_NAMES, PRECISION_FILE, Record, load_records

if TYPE_CHECKING:
    from harness.experiment import Experiment, SavedExperiment

REPORT_FILE = "README.md"
META_FILE = "report.json"


def fmt(x: Any, digits: int = 3) -> str:
    """A number with `digits` significant digits (thousands separated); '–' for missing."""
    if x is None or isinstance(x, str):
        return x or "–"
    if isinstance(x, bool):
        return str(x).lower()
    try:
        x = float(x)
    except (TypeError, ValueError):
        return str(x)
    if not math.isfinite(x):
        return "–"
    if abs(x) >= 10 ** digits:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def fmt_pct(x: Any) -> str:
    """A percentage with one decimal ('–' for missing)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    return f"{x:.1f}" if math.isfinite(x) else "–"


def fmt_delta(x: Any) -> str:
    """A signed change ('±0' for none, '–' for missing)."""
    try:
        x = float(x)
    except (TypeError, ValueError):
        return "–"
    if not math.isfinite(x):
        return "–"
    return "±0" if x == 0 else f"{x:+.3g}"


def _estimate(row: pd.Series) -> RatioEstimate:
    return RatioEstimate(float(row["speedup"]), float(row["speedup_ci_low"]), float(row["speedup_ci_high"]),
                         int(row.get("speedup_pairs", 0) or 0), str(row.get("speedup_method", "t")),
                         int(row.get("speedup_need", 3) or 3))


def _ci(row: pd.Series) -> str:
    """``x1.23 [1.20, 1.26]``, or ``x1.23 (insufficient: n=2; need >= 3)`` where no interval is supported."""
    return _estimate(row).describe()


def speed_decision(row: pd.Series, floor: float | None = None) -> decision.Decision:
    """The row's speedup decided (`decision.decide`) with the speed margin, widened to the measured noise floor
    when there is one: faster, slower, equivalent within the margin, or unresolved."""
    margin = decision.EQUIVALENCE_MARGIN_PCT / 100
    if floor is not None and math.isfinite(floor):
        margin = max(margin, floor - 1.0)
    return decision.decide(_estimate(row), margin=margin)


def resolved(row: pd.Series, floor: float | None) -> bool:
    """A speedup is a finding only when it is decided faster or slower (not equivalent, not unresolved)."""
    return speed_decision(row, floor).resolved


def peak_memory(row: pd.Series) -> float:
    """The peak the tables show: CUDA allocated on a GPU, else the process's peak RSS (GiB)."""
    gpu = float(row["cuda_peak_allocated_gib"])
    return gpu if math.isfinite(gpu) else row["peak_rss_gib"]


def _equiv_mark(row: pd.Series) -> str:
    status = row.get("equiv_status", "")
    return {"pass": "✅ equivalent", "fail": "❌ differs", "skipped": "skipped (quality knob)",
            "error": "⚠️ check failed", "baseline": "(baseline)"}.get(status, "not checked")


def _knob_kind(name: str, workload: WorkloadDescription | None) -> str:
    if workload is not None and name in workload.knob_kinds:
        return workload.knob_kind(name)
    return GENERIC_BY_NAME[name].kind if name in GENERIC_BY_NAME else "?"


def _env(records: Sequence[Record]) -> dict[str, Any]:
    """The environment of the first speed run that recorded one (planned-only records have none)."""
    with_env = [r for r in records if r.env]
    return dict(next((r.env for r in with_env if r.phase == "speed"), with_env[0].env if with_env else {}))


def _header(s: pd.DataFrame, records: Sequence[Record], exp: Any, results_dir: Path) -> list[str]:
    env = _env(records)
    base = s.attrs["baseline"]
    name = exp.name if exp is not None else records[0].experiment
    times = sorted(r.env.get("time", "") for r in records if r.env.get("time"))
    device = env.get("gpu_name") or "no GPU"
    n_quality = sum(r.phase == "quality" for r in records)
    n_equiv = sum(r.phase == "equivalence" for r in records)
    commit = (env.get("git_commit") or "unknown")[:10] + (" (dirty)" if env.get("git_dirty") else "")
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
        ["records", f"`{results_dir}` ({len(records)} records, {sum(r.status != 'ok' for r in records)} failed)"],
    ])
    return lines


def headline(s: pd.DataFrame, floor: float | None = None) -> str:
    """One line: the fastest *resolved* variant with its CI, and any quality cost it carries. A speedup
    whose interval includes 1, is missing, or sits inside the noise floor is not headlined."""
    base = s.attrs["baseline"]
    others = s.drop(index=base)
    others = others[[math.isfinite(float(x)) for x in others["speedup"]]]
    if others.empty:
        return f"`{base}`: {fmt(s.at[base, 'samples_per_s'])} samples/s (no variant measured against it)"
    found = others[[resolved(r, floor) for _, r in others.iterrows()]]
    if found.empty:
        return (f"no variant is decided faster or slower than `{base}` here (each is equivalent within the margin, "
                "unresolved, or without an interval); see the speed table")
    best = found["speedup"].astype(float).idxmax()
    row = s.loc[best]
    d = speed_decision(row, floor)
    text = f"`{best}` is {d.label} than `{base}`: {d.evidence()} its samples/s"
    primary = s.attrs.get("primary_metric")
    if primary and f"{primary}_delta" in s.columns and math.isfinite(float(row[f"{primary}_delta"])):
        text += f", {primary} {fmt_delta(row[f'{primary}_delta'])}"
    if row["unstable"]:
        text += " (unstable: see the speed table)"
    pooled = s.attrs.get("across_sessions", {}).get(best)
    if pooled is not None and pooled.sessions >= 3:
        text += f"; {pooled.describe()}"
    elif pooled is not None:
        text += f" (this session; {pooled.sessions} session(s) of this code on this machine so far)"
    return text


def _key_changes(s: pd.DataFrame, workload: WorkloadDescription | None) -> list[str]:
    rows = []
    primary = s.attrs.get("primary_metric")
    for v, row in s.iterrows():
        changed = row["changed"]
        impact = f"samples/s {_ci(row)}" if math.isfinite(float(row["speedup"])) else "no successful run"
        if primary and math.isfinite(float(row.get(f"{primary}_delta", math.nan))):
            impact += f"; {primary} {fmt_delta(row[f'{primary}_delta'])}"
        impact += f"; {_equiv_mark(row)}"
        if len(changed) > 1:
            impact += " (all knobs together)"
        for knob, (old, new) in changed.items():
            rows.append([f"`{v}`", f"**{knob}** ({_knob_kind(knob, workload)})", fmt(old), fmt(new), impact])
    if not rows:
        return ["No variant changes a knob.", ""]
    return table(["Variant", "Knob (kind)", "Baseline", "Variant", "Measured impact (95% CI)"], rows)


def _speed(s: pd.DataFrame) -> list[str]:
    rows = []
    for v, r in s.iterrows():
        mem = peak_memory(r)
        rows.append([
            f"`{v}`", f"{fmt(r['samples_per_s'])} ({fmt(r['samples_per_s_min'])}–{fmt(r['samples_per_s_max'])})",
            fmt(r["tokens_per_s"]), fmt(r["padded_tokens_per_s"]), fmt(r["it_per_s"]),
            f"{fmt(r['step_ms'])} ({fmt(r['step_ms_p10'])}–{fmt(r['step_ms_p90'])})",
            "baseline" if v == s.attrs["baseline"] else _ci(r), fmt(mem), fmt(r["gpu_util_pct"]),
            fmt(r["energy_j_per_sample"]), fmt(r["forward_calls_per_step"]), _equiv_mark(r),
            ("⚠️ " if r["unstable"] else "") + r["status"]])
    lines = table(["Variant", "samples/s (min–max)", "tokens/s", "padded tokens/s", "it/s", "step ms (p10–p90)",
                   "speedup [95% CI]", "peak mem GiB", "GPU util %", "J/sample", "fwd calls/step", "equivalence",
                   "runs (all phases)"], rows, "lrrrrrlrrrrll")
    lines += ["samples/s: median of per-run medians (min–max across repeats); step ms: median, p10–p90 over every "
              "measured step; speedup: geometric mean of paired samples/s ratios (repeat i vs repeat i of the "
              "baseline, each a fresh process) with a Student-t 95% interval across the repeats (\"insufficient\" "
              "below 3 pairs); peak mem: CUDA allocated, else the process's peak RSS over the measured window.", ""]
    kernels = {v: next((rec.env.get("note_attention_kernels", "") for rec in r["speed_records"]), "")
               for v, r in s.iterrows()}
    if any(kernels.values()):
        lines += ["Attention kernels torch's scaled_dot_product_attention ran (seen in the FLOP-counted step): " +
                  "; ".join(f"`{v}`: {k or 'none (no SDPA call)'}" for v, k in kernels.items()), ""]
    for v, r in s.iterrows():
        if r["unstable"]:
            lines.append(f"- ⚠️ `{v}` is unstable: {r['advice']}")
    return lines + [""] if s["unstable"].any() else lines


def _precision(s: pd.DataFrame, exp: Any, notes: Mapping[str, Any]) -> list[str]:
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


def _effective_batch(s: pd.DataFrame) -> list[str]:
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
                     "baseline" if v == base else _ci(r), fmt(mem), _equiv_mark(r), r["status"]])
    effective = global_batch(cfg)
    best = ranked[0]
    if best == base:
        verdict = f"the baseline `{base}` is the fastest measured"
    elif speed_decision(s.loc[best]).outcome == decision.BETTER:
        verdict = f"`{best}` is the fastest, {_ci(s.loc[best])} against `{base}`"
    else:
        verdict = f"`{best}` measured fastest, but against `{base}` it is {speed_decision(s.loc[best]).text()}"
    lines = [f"Every batch_size x grad_accum = {effective} that ran, ranked by samples/s: the same gradient each "
             f"(checked against the baseline), so only speed and memory differ. **{verdict}.**", ""]
    return lines + table(["rank", "variant", "batch_size", "grad_accum", "samples/s (min–max)", "speedup [95% CI]",
                          "peak mem GiB", "equivalence", "runs"], rows, "rlrrrlrll") + [""]


def _compile(s: pd.DataFrame) -> list[str]:
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
                     "baseline" if v == s.attrs["baseline"] else _ci(r), even])
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


def _noise(records: Sequence[Record], base: str) -> list[str]:
    try:
        nf = noise_floor(list(records), base)
    except ValueError as exc:
        return [f"Not available: {exc}", ""]
    return [f"{nf['message']} — method: {nf['method']}; baseline run-to-run spread "
            f"{fmt(nf['baseline_spread_pct'])}%. Speedups inside x{fmt(1 / nf['min_resolvable_speedup'])}–"
            f"x{fmt(nf['min_resolvable_speedup'])} are within noise here.", ""]


def _equivalence(s: pd.DataFrame) -> list[str]:
    rows = []
    for v, r in s.iterrows():
        if v == s.attrs["baseline"]:
            continue
        decided = r["equiv_status"] in ("pass", "fail")
        rows.append([f"`{v}`", r["equiv_compared"] or "–", (r["equiv_dtype"] or "–") if decided else "–",
                     fmt(r["equiv_tolerance"]) if decided else "–", fmt(r["equiv_max_abs_err"]),
                     fmt(r["equiv_max_rel_err"]), _equiv_mark(r), r["equiv_reason"] or "–"])
    if all(s["equiv_status"].isin(["not checked", "baseline"])):
        return ["No equivalence checks in this sweep (`equivalence = true` in the experiment runs them).", ""]
    return ["One optimizer step of each variant against the baseline from the same initial weights and batch; "
            "tolerance by dtype (float32 ~1e-5, bf16/fp16 ~1e-2).", "",
            *table(["Variant", "compared", "dtype", "tolerance", "max abs err", "max rel err", "result", "note"],
                   rows, "lllrrrll")]


def _quality(s: pd.DataFrame) -> list[str]:
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
             fmt(r["train_wall_s"]), fmt(r["time_to_target_s"]) if target is not None else "no target set",
             fmt(r["primary_at_equal_time"], 4)] for v, r in has.iterrows()]
    return ["Final metrics after equal epochs, the change of the primary metric vs the baseline, time-to-target "
            "(training seconds to first reach the target, evals excluded), and the primary metric at equal "
            "wall-clock time (the shortest run's training time).", "", *table(headers, rows, "lrr" + "r" * len(metrics)
                                                                             + "rrrr")]


def _phases(s: pd.DataFrame) -> list[str]:
    # communication is a phase of data-parallel runs only: its column is shown where some run has it
    names = [p for p in PHASE_NAMES if p != "communication" or (s["phase_ms_communication"].fillna(0) > 0).any()]
    rows = [[f"`{v}`", *(fmt_pct(r[f"phase_pct_{p}"]) for p in names), fmt(r["step_ms"])]
            for v, r in s.iterrows() if math.isfinite(float(r["phase_pct_forward"]))]
    if not rows:
        return ["No phase timings recorded.", ""]
    return table(["Variant", *(f"{p} %" for p in names), "step ms"], rows, "l" + "r" * (len(names) + 1))


def _gates(s: pd.DataFrame, exp: Any) -> list[str]:
    if exp is None or not exp.gates:
        return ["No gates defined (add `gates = [...]` to the experiment file)." if exp is not None else
                "No experiment file given, so no gates were checked.", ""]
    known = gates.known_metrics(s.attrs.get("quality_metrics", []))
    results = gates.check(exp.gates, s, s.attrs["baseline"], known)
    passed = sum(r.passed for r in results)
    lines = [f"{passed}/{len(results)} passed.", ""]
    for r in results:
        lines.append(f"- {'✅' if r.passed else '❌'} `{r.expr}` — {r.measured}"
                     + ("" if r.passed else f" — **{r.message}**"))
    return lines + [""]


def _advice(s: pd.DataFrame) -> list[str]:
    grouped: dict[tuple[str, str], list[str]] = {}
    for v, findings in advisor.advise_summary(s).items():
        for f in findings:
            grouped.setdefault((f.rule, f.message), []).append(f"`{v}`: {f.evidence}")
    if not grouped:
        return ["No rule fired: no input, launch, padding, duplicate-forward, AMP, batch-size, quality or memory "
                "problem detected.", ""]
    return [*(f"- **{rule}**: {msg}. Evidence: {'; '.join(evidence)}." for (rule, msg), evidence in grouped.items()),
            ""]


def _ddp_scaling(s: pd.DataFrame) -> list[str]:
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
                     "baseline" if is_base else _ci(s.loc[v]), eff, comm, fmt_pct(r["rank_skew_pct"]),
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


def _costs(s: pd.DataFrame, workload: WorkloadDescription | None) -> list[str]:
    tables = cost.cost_tables(s, workload)
    lines = []
    for title, df in tables:
        lines += [f"### {title}", "", *table(list(df.columns), df.to_numpy().tolist(), "lrrr")]
    return lines


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
    exp = experiment if experiment is not None else load_saved_experiment(results_dir)
    workload = load_description(results_dir)
    s = summarize(records, _baseline_name(records, exp), target=getattr(exp, "quality_target", None),
                  workload=workload)
    out_dir.mkdir(parents=True, exist_ok=True)
    from harness.report import plots as figures_module

    base = s.attrs["baseline"]
    floor = _floor(records, base)
    s.attrs["resolved"] = {v: resolved(r, floor) for v, r in s.iterrows() if v != base}
    figures = figures_module.write_all(s, records, out_dir) if plots else {}
    notes_path = results_dir / PRECISION_FILE
    notes = json.loads(notes_path.read_text()) if notes_path.exists() else {}
    sessions = load_sessions(results_dir)
    s.attrs["across_sessions"] = across_sessions(s, sessions)
    lines = _header(s, records, exp, results_dir)
    lines += [f"**Headline:** {headline(s, floor)}.", ""]
    sections = [("Key changes", _key_changes(s, workload)), ("Warnings", _warnings(records)), ("Speed", _speed(s)),
                ("Same effective batch", _effective_batch(s)), ("torch.compile", _compile(s)),
                ("Precision and contention", _precision(s, exp, notes)),
                ("Reproducibility", reproducibility_section(s, records, sessions)),
                ("Noise floor", _noise(records, base)),
                ("Data-parallel scaling", _ddp_scaling(s)), ("Equivalence", _equivalence(s)), ("Quality", _quality(s)),
                ("Phase breakdown", _phases(s)), ("Gates", _gates(s, exp)), ("Advisor", _advice(s)),
                ("Predicted vs measured cost", _costs(s, workload))]
    for title, body in sections:
        if body:
            lines += [f"## {title}", "", *body]
    if figures:
        lines += ["## Plots", ""]
        captions = {"throughput": "Throughput and speedup", "phases": "Phase breakdown",
                    "quality": "Quality vs wall-clock time and epochs", "timeline": "Utilisation and memory",
                    "scaling": "Scaling", "ddp_scaling": "Data-parallel scaling"}
        lines += [f"![{captions[k]}]({p.name})\n" for k, p in figures.items()]
    lines += ["## Failed and skipped runs", "", *_failures(records)]
    source = getattr(exp, "source", "")
    lines += ["## Reproduce", "", "```", f"trainbench sweep {source}" if source else
              f"trainbench report {results_dir}", "```", ""]
    readme = out_dir / REPORT_FILE
    readme.write_text("\n".join(lines))
    meta = {"experiment": exp.name if exp is not None else records[0].experiment, "headline": headline(s, floor),
            "when": _env(records).get("time", ""),
            "device": _env(records).get("gpu_name") or _env(records).get("cpu_model", "")}
    write_report_json(s, records, notes, out_dir / META_FILE, meta)
    return readme


def _floor(records: Sequence[Record], base: str) -> float | None:
    try:
        return float(noise_floor(list(records), base)["min_resolvable_speedup"])
    except ValueError:
        return None


def _num(x: Any) -> float | None:
    try:
        value = float(x)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def write_report_json(s: pd.DataFrame, records: Sequence[Record], notes: Mapping[str, Any], path: Path,
                      meta: Mapping[str, Any]) -> None:
    """report.json: the headline (read by the index) and, per variant, the speedup, its interval, n, the
    half-width reached and the contention evidence of every speed run, for scripts."""
    variants = {}
    interfered = {id(x): why for x, why in interfered_runs(records)}
    for v, r in s.iterrows():
        runs = [{"repeat": x.repeat, "attempt": x.attempt, "samples_per_s": _num(x.metrics.get("samples_per_s")),
                 "contention": dict(x.contention), "state_ms": run_state(x), "interfered": interfered.get(id(x), "")}
                for x in records if x.variant == v and x.phase == "speed"]
        pooled = s.attrs.get("across_sessions", {}).get(v)
        variants[v] = {
            "speedup": _num(r["speedup"]), "ci_low": _num(r["speedup_ci_low"]), "ci_high": _num(r["speedup_ci_high"]),
            "n": int(r.get("speedup_pairs", 0) or 0), "interval": r.get("speedup_method"),
            "half_width_pct": _num(r.get("speedup_half_width_pct")), "clock": r.get("speedup_clock", ""),
            "resolved": bool(s.attrs.get("resolved", {}).get(v, False)),
            "samples_per_s": _num(r["samples_per_s"]), "repeats": int(r["repeats"]),
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
    """reports_dir/README.md linking every report below it with its headline."""
    reports_dir = Path(reports_dir)
    rows = []
    for readme in sorted(reports_dir.glob(f"*/{REPORT_FILE}")):
        meta_path = readme.parent / META_FILE
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        name = meta.get("experiment", readme.parent.name)
        rows.append([f"[{name}]({readme.parent.name}/{REPORT_FILE})", meta.get("headline", "–"),
                     meta.get("device", "–"), meta.get("when", "–")])
    lines = ["# trainbench reports", "", "Generated by `trainbench sweep`; each report links its plots and raw "
             "numbers.", ""]
    lines += table(["Experiment", "Headline", "Device", "When"], rows) if rows else ["No reports yet.", ""]
    index = reports_dir / REPORT_FILE
    reports_dir.mkdir(parents=True, exist_ok=True)
    index.write_text("\n".join(lines))
    return index
