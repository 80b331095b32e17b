"""One row per variant from a sweep's records: speed medians and spreads, paired speedups with CIs,
equivalence, quality and its deltas, time-to-target, and run status (failures counted, never dropped).

The DataFrame is indexed by variant (baseline first). Column names are metric names with units, so
gates (`scan.speedup >= 3`) and reports read them directly; `summary.attrs` carries the context
(baseline, the unit speedups count work in, primary metric and its direction, quality metrics, target,
equal-time budget). `speedup` is the ratio of throughputs in `attrs["work_unit"]`: samples, or real tokens
where a variant changes the tokens a sample holds (`speedup.work_unit`). Quality deltas get an interval
(the delta's interval columns, paired by seed) when both sides ran at least 3 seeds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from harness.analysis import decision, reproducibility, speedup, stats
from harness.knobs import global_batch
from harness.rates import samples_per_step
from harness.results import METRICS, PHASE_NAMES, Record

if TYPE_CHECKING:
    from harness.description import WorkloadDescription

QUALITY_RUN_METRICS = ("best_epoch", "epochs_run", "final_loss", "train_wall_s")
PER_PHASE_KNOBS = ("epochs",)
"""Knobs the runner sets per phase (0 for speed runs and equivalence checks, quality_epochs for quality runs): a
variant's first record and the baseline's may be of different phases, which is no change of the variant's."""
"""Metrics that describe a quality (training) run, read from phase=quality records."""
AA_SUFFIX = "_aa"
_LOWER_IS_BETTER_HINTS = ("loss", "mae", "mse", "error", "perplexity", "ppl", "violation", "wer", "cer")


@dataclass(frozen=True, slots=True)
class QualityMeta:
    """What the workload says about its quality metrics (or a best guess when it left no description)."""

    primary: str | None
    higher_is_better: bool
    metrics: tuple[str, ...]


def quality_meta(records: Sequence[Record], primary_metric: str | None = None,
                 higher_is_better: bool | None = None,
                 workload: WorkloadDescription | None = None) -> QualityMeta:
    """Primary metric, direction and metric names: given, else from the workload description (the
    results directory's `workload.json`), else inferred from the records."""
    seen: list[str] = []
    for r in records:
        for name in r.quality:
            if name not in seen:
                seen.append(name)
    primary, hib, declared = None, None, ()
    if workload is not None:
        primary, hib, declared = workload.primary_metric, workload.higher_is_better, workload.quality_metrics
    metrics = tuple(dict.fromkeys([*declared, *seen]))
    primary = primary_metric or primary or (metrics[0] if metrics else None)
    if higher_is_better is None:
        higher_is_better = hib if hib is not None else not any(h in (primary or "") for h in _LOWER_IS_BETTER_HINTS)
    return QualityMeta(primary, bool(higher_is_better), metrics)


def latest_attempts(records: Iterable[Record]) -> list[Record]:
    """Per (variant, phase, repeat) only the last attempt: a re-run replaces a contended run."""
    latest: dict[tuple[str, str, int], Record] = {}
    for r in records:
        if r.key not in latest or r.attempt >= latest[r.key].attempt:
            latest[r.key] = r
    return list(latest.values())


def variants_in_order(records: Iterable[Record], baseline: str) -> list[str]:
    """Variant names, baseline first, then in order of first appearance."""
    names = list(dict.fromkeys(r.variant for r in records))
    if baseline not in names:
        raise ValueError(f"baseline '{baseline}' has no records; variants present: {', '.join(names) or 'none'}")
    return [baseline, *(n for n in names if n != baseline)]


def _per_repeat(records: Iterable[Record], metric: str) -> dict[int, float]:
    out = {}
    for r in records:
        value = r.metrics.get(metric)
        if value is not None and np.isfinite(value):
            out[r.repeat] = float(value)
    return out


def _status_text(records: Sequence[Record]) -> tuple[int, int, str, tuple[str, ...]]:
    ok = sum(r.status == "ok" for r in records)
    failed = [r for r in records if r.status != "ok"]
    counts: dict[str, int] = {}
    for r in failed:
        counts[r.status] = counts.get(r.status, 0) + 1
    text = f"{ok}/{len(records)} ok" + "".join(f", {n} {s}" for s, n in counts.items())
    errors = tuple(f"{r.phase}#{r.repeat} {r.status}: {(r.error.strip().splitlines() or [''])[-1][:160]}"
                   for r in failed)
    return ok, len(failed), text, errors


def curve_value_at(curve: Sequence[dict[str, float]], metric: str, wall_s: float) -> float:
    """The metric at the last evaluation done within `wall_s` seconds of training (NaN if none)."""
    value = float("nan")
    for point in curve:
        if point.get("wall_s", np.inf) <= wall_s + 1e-9 and point.get(metric) is not None:
            value = float(point[metric])
    return value


def time_to_target(curve: Sequence[dict[str, float]], metric: str, target: float, higher_is_better: bool) -> float:
    """Training seconds until the metric first reaches the target (MLPerf-style), interpolated linearly between
    the evaluation before and the one that reached it (at the first evaluation: its time); NaN if never."""
    sign = 1.0 if higher_is_better else -1.0
    previous: tuple[float, float] | None = None
    for point in curve:
        value, wall = point.get(metric), float(point.get("wall_s", np.nan))
        if value is None or not np.isfinite(value):
            continue
        if sign * value >= sign * target:
            if previous is None or previous[1] == value:
                return wall
            t0, v0 = previous
            return float(t0 + (wall - t0) * (target - v0) / (value - v0))
        previous = (wall, float(value))
    return float("nan")


DEFAULT_TARGET_FRACTION = 0.95
"""Without a `quality_target`, the target is 95% of the baseline's final primary metric (its median over seeds;
for a lower-is-better metric, the final value / 0.95)."""


def _time_to_target_columns(df: pd.DataFrame, baseline: str, meta: Any, target: float | None) -> float | None:
    """Time to target per variant: the median over its seeds, with a 95% interval (Student-t on log seconds) when 3
    or more seeds reached it, and how many did ("2/3"). Returns the target used (the default from the baseline when
    `target` is None); None without a primary metric or quality runs."""
    base = df.at[baseline, meta.primary] if meta.primary and meta.primary in df.columns else np.nan
    if target is None and np.isfinite(base) and base > 0:  # (at 0, e.g. no grid solved, there is nothing to reach)
        target = float(base) * DEFAULT_TARGET_FRACTION if meta.higher_is_better else \
            float(base) / DEFAULT_TARGET_FRACTION
    df["time_to_target_s"] = df["time_to_target_ci_low"] = df["time_to_target_ci_high"] = np.nan
    df["time_to_target_reached"] = ""
    if target is None or not meta.primary:
        return None
    for v, curves in df["quality_curves"].items():
        if df.at[v, "reused_from"]:  # the baseline's curves without their times: its steps, not its seconds
            continue
        times = [time_to_target(c, meta.primary, target, meta.higher_is_better) for c in curves.values() if c]
        if not times:
            continue
        reached = [t for t in times if np.isfinite(t)]
        df.at[v, "time_to_target_reached"] = f"{len(reached)}/{len(times)}"
        df.at[v, "time_to_target_s"] = stats.median(reached) if len(reached) == len(times) else np.nan
        if len(reached) == len(times) >= stats.MIN_REPEATS and min(reached) > 0:
            # on log seconds (a time is positive and its spread multiplicative): never an interval below 0 s
            logs = np.log(reached)
            half = stats.t_quantile_975(len(logs) - 1) * float(np.std(logs, ddof=1)) / np.sqrt(len(logs))
            df.at[v, "time_to_target_ci_low"] = float(np.exp(logs.mean() - half))
            df.at[v, "time_to_target_ci_high"] = float(np.exp(logs.mean() + half))
    return target


def best_epoch(curve: Sequence[dict[str, float]], metric: str, higher_is_better: bool) -> float:
    """Epoch of the best evaluation of the metric (NaN without a curve)."""
    points = [p for p in curve if p.get(metric) is not None]
    if not points:
        return float("nan")
    pick = max if higher_is_better else min
    return float(pick(points, key=lambda p: p[metric]).get("epoch", np.nan))


def _speed_columns(row: dict[str, Any], ok: Sequence[Record]) -> None:
    for m in METRICS:
        if m not in QUALITY_RUN_METRICS:
            row[m] = stats.median([r.metrics.get(m) for r in ok])
    runs = [r.metrics.get("samples_per_s") for r in ok]
    row["samples_per_s_min"], row["samples_per_s_max"] = stats.min_max(runs)
    row["spread_pct"] = stats.spread_pct(runs)
    steps = [s for r in ok for s in r.step_ms]
    row["step_ms"] = row["step_ms_median"]
    if steps:  # pooled per-step percentiles, across every measured step of every repeat
        row["step_ms_p10"], row["step_ms_p90"] = stats.percentile(steps, 10), stats.percentile(steps, 90)
    per_step = stats.median([samples_per_step(r.window_totals) for r in ok])
    if np.isfinite(per_step) and np.isfinite(row["step_ms_p90"]):
        row["samples_per_s_p10"] = per_step * 1000.0 / row["step_ms_p90"]
        row["samples_per_s_p90"] = per_step * 1000.0 / row["step_ms_p10"]
    else:
        row["samples_per_s_p10"] = row["samples_per_s_p90"] = np.nan
    for p in PHASE_NAMES:
        row[f"phase_ms_{p}"] = stats.median([r.phase_ms.get(p) for r in ok])
    total = np.nansum([row[f"phase_ms_{p}"] for p in PHASE_NAMES])
    for p in PHASE_NAMES:
        row[f"phase_pct_{p}"] = row[f"phase_ms_{p}"] / total * 100.0 if total > 0 else np.nan


def _equivalence_columns(row: dict[str, Any], recs: Sequence[Record], is_baseline: bool) -> None:
    """equivalent: True/False, None when not decided; equiv_status: pass|fail|skipped|error|not checked|baseline."""
    row.update(equivalent=None, equiv_status="baseline" if is_baseline else "not checked", equiv_max_abs_err=np.nan,
               equiv_max_rel_err=np.nan, equiv_tolerance=np.nan, equiv_dtype="", equiv_compared="", equiv_reason="")
    if not recs:
        return
    rec = recs[-1]
    if rec.status != "ok":
        row["equiv_status"] = "error"
        row["equiv_reason"] = f"check {rec.status}: {(rec.error.strip().splitlines() or [''])[-1][:120]}"
        return
    eq = rec.equivalence
    row["equivalent"] = None if eq.get("passed") is None else bool(eq["passed"])
    row["equiv_status"] = {None: "skipped", True: "pass", False: "fail"}[row["equivalent"]]
    for key in ("max_abs_err", "max_rel_err", "tolerance"):
        value = eq.get(key)
        row[f"equiv_{key}"] = np.nan if value is None else float(value)
    compared = eq.get("compared", "")
    row["equiv_compared"] = ", ".join(map(str, compared)) if isinstance(compared, (list, tuple)) else str(compared)
    row["equiv_dtype"] = str(eq.get("dtype") or "")
    row["equiv_reason"] = str(eq.get("reason") or "")


def deployed(values: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any]:
    """A quality run's metrics as the weights it would deploy score: with EMA (``ema`` > 0) the averaged weights'
    (`ema_<metric>`, which the run also evaluates) in place of the raw weights'."""
    if not (config.get("ema") or 0) > 0:
        return dict(values)
    return {**values, **{k[len("ema_"):]: v for k, v in values.items() if k.startswith("ema_")}}


def _quality_columns(row: dict[str, Any], ok: Sequence[Record], meta: QualityMeta) -> None:
    # an EMA variant is judged by its EMA weights: what it would deploy (and what the seed's claims are about)
    finals = {r.repeat: deployed(r.quality, r.config) for r in ok}
    for m in meta.metrics:
        row[m] = stats.median([q.get(m) for q in finals.values()])
    row["quality_runs"] = finals
    # not re-trained: the baseline's runs, seed by seed (`Record.reused_from`); no time of its own to show
    row["reused_from"] = ok[0].reused_from if ok and all(r.reused_from for r in ok) else ""
    for m in QUALITY_RUN_METRICS:
        row[m] = stats.median([r.metrics.get(m) for r in ok])
    curves = {r.repeat: [deployed(p, r.config) for p in r.curve] for r in ok}
    curve = curves[ok[0].repeat] if ok else []
    row["curve"] = curve
    row["quality_curves"] = curves  # one per seed (time to target over seeds)
    if meta.primary and not np.isfinite(row["best_epoch"]):
        row["best_epoch"] = best_epoch(curve, meta.primary, meta.higher_is_better)
    if not np.isfinite(row["train_wall_s"]) and curve:
        row["train_wall_s"] = float(curve[-1].get("wall_s", np.nan))


def quality_delta(row: Mapping[str, Any], metric: str) -> stats.RatioEstimate:
    """A summary row's change of `metric` against the baseline with its interval across seeds (`RatioEstimate`
    on the difference scale; no interval below `stats.MIN_REPEATS` seeds), as `_comparison_columns` wrote it."""
    def num(key: str) -> float:
        try:
            return float(row.get(key))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.nan

    seeds = num("quality_seeds")
    return stats.RatioEstimate(num(f"{metric}_delta"), num(f"{metric}_delta_ci_low"), num(f"{metric}_delta_ci_high"),
                               int(seeds) if np.isfinite(seeds) and seeds > 0 else 1, "t", stats.MIN_REPEATS)


def same_effective_batch(s: pd.DataFrame) -> list[str]:
    """Variants that differ from the baseline only in batch_size x grad_accum with the same product (the same
    gradient), the baseline included, fastest (median samples/s) first; empty when there are fewer than two."""
    base = s.attrs["baseline"]
    target = global_batch(s.at[base, "config"])
    same = [v for v, r in s.iterrows() if v == base or (set(r["changed"]) <= {"batch_size", "grad_accum"}
                                                         and global_batch(r["config"]) == target)]
    speed = {v: float(s.at[v, "samples_per_s"]) for v in same}
    return sorted(same, key=lambda v: -speed[v] if np.isfinite(speed[v]) else np.inf) if len(same) >= 2 else []


def break_even_steps(compile_s: float, base_step_ms: float, step_ms: float, base_compile_s: float = 0.0) -> float:
    """Optimizer steps after which compiling has paid for itself: the extra compile time over the time each
    step saves (inf when a step saves nothing; nan without the figures)."""
    extra = compile_s - (base_compile_s if np.isfinite(base_compile_s) else 0.0)
    saved_s = (base_step_ms - step_ms) / 1000.0
    if not (np.isfinite(extra) and np.isfinite(saved_s)):
        return float("nan")
    if extra <= 0:
        return 0.0
    return extra / saved_s if saved_s > 0 else float("inf")


def _compile_columns(df: pd.DataFrame, baseline: str) -> None:
    """compile_s_max (the slowest, usually the first, cold-cache compile) and break_even_steps against the
    baseline, for variants that compiled."""
    def slowest(recs: Sequence[Record]) -> float:
        seconds = [r.metrics["compile_s"] for r in recs if r.metrics.get("compile_s") is not None]
        return max(seconds) if seconds else np.nan

    df["compile_s_max"] = [slowest(recs) for recs in df["speed_records"]]
    base = df.loc[baseline]
    df["break_even_steps"] = [
        break_even_steps(float(r["compile_s"]), float(base["step_ms"]), float(r["step_ms"]), float(base["compile_s"]))
        if np.isfinite(r["compile_s"]) and v != baseline else np.nan for v, r in df.iterrows()]


def instability_advice(*, ci: stats.RatioEstimate | None, spreads_pct: dict[str, float], repeats: int,
                       bench_steps: int | None) -> str:
    """Empty when the result is stable; otherwise why it is not and what to do about it.

    `spreads_pct` names each run-to-run spread that matters (this variant's, the baseline's).
    """
    reasons = []
    if ci is not None and not ci.has_interval:
        reasons.append(f"insufficient: {ci.n} paired repeat(s), an interval needs >= {ci.need}")
    elif ci is not None and decision.contains(ci, 1.0):
        reasons.append(f"the 95% CI [{ci.ci_low:.3f}, {ci.ci_high:.3f}] includes 1.0")
    for who, spread in spreads_pct.items():
        if np.isfinite(spread) and spread > stats.UNSTABLE_SPREAD_PCT:
            reasons.append(f"{who} run-to-run spread {spread:.0f}% > {stats.UNSTABLE_SPREAD_PCT:.0f}%")
    if not reasons:
        return ""
    todo = [f"more repeats (repeats={max(5, 2 * repeats)})"]
    if bench_steps:
        todo.append(f"a longer measure window (bench_steps={2 * bench_steps})")
    todo.append("a quieter machine (no other jobs, fixed clocks)")
    return "; ".join(reasons) + " -> try " + ", ".join(todo)


def _disturbance_columns(row: dict[str, Any], all_speed: Sequence[Record], latest: Sequence[Record],
                         flagged: Mapping[tuple[str, int, int], str]) -> None:
    """Contended and interfered runs (every attempt), re-runs, and runs still contended in the latest attempts."""
    v = row["variant"]
    contended = [r for r in all_speed if r.contention.get("verdict")]
    row["contended_runs"] = len(contended)
    row["contention"] = "; ".join(f"repeat {r.repeat} attempt {r.attempt}: {r.contention['verdict']}"
                                  for r in contended)
    interfered = [(r, flagged[(v, r.repeat, r.attempt)]) for r in all_speed if (v, r.repeat, r.attempt) in flagged]
    row["interfered_runs"] = len(interfered)
    row["interference"] = "; ".join(f"repeat {r.repeat} attempt {r.attempt}: {why}" for r, why in interfered)
    row["reruns"] = sum(r.attempt > 0 for r in all_speed)
    row["still_contended"] = sum(bool(r.contention.get("verdict")) for r in latest)


def _speedup_columns(row: dict[str, Any], base_speed: Sequence[Record] | None, ok_speed: Sequence[Record],
                     base_runs: Mapping[int, float], repeats: int, unit: str) -> None:
    """The speedup over the baseline with its interval (`base_speed=None`: this row is the baseline), and the
    advice when it is unstable."""
    if base_speed is None:
        est = None
        row.update(speedup=1.0, speedup_ci_low=np.nan, speedup_ci_high=np.nan, speedup_pairs=len(base_runs),
                   speedup_method="baseline", speedup_need=0, speedup_half_width_pct=np.nan, speedup_clock="")
        spreads = {"its": row["spread_pct"]}
    else:
        est, clock = speedup.estimate(base_speed, ok_speed, unit=unit)
        row.update(speedup=est.ratio, speedup_ci_low=est.ci_low, speedup_ci_high=est.ci_high,
                   speedup_pairs=est.n, speedup_method=est.method, speedup_need=est.need,
                   speedup_half_width_pct=est.half_width_pct, speedup_clock=clock)
        spreads = {"its": row["spread_pct"], "the baseline's": stats.spread_pct(list(base_runs.values()))}
    advice = instability_advice(ci=est, spreads_pct=spreads, repeats=max(repeats, 1),
                                      bench_steps=row["config"].get("bench_steps")) if ok_speed else ""
    row["unstable"], row["advice"] = bool(advice), advice


def _variant_row(recs: Sequence[Record], base_config: Mapping[str, Any], base_speed: Sequence[Record] | None,
                 base_runs: Mapping[int, float], flagged: Mapping[tuple[str, int, int], str],
                 unit: str) -> dict[str, Any]:
    """One variant's row without its quality columns (`base_speed=None`: the baseline's own row)."""
    v = recs[0].variant
    all_speed = [r for r in recs if r.phase == "speed"]
    speed = latest_attempts(all_speed)
    ok_speed = [r for r in speed if r.status == "ok"]
    runs_ok, runs_failed, status, errors = _status_text(recs)
    config = dict(recs[0].config)
    row: dict[str, Any] = {
        "variant": v, "workload": recs[0].workload, "preset": recs[0].preset, "status": status,
        "runs_ok": runs_ok, "runs_failed": runs_failed, "errors": errors, "repeats": len(speed),
        "config": config, "env": dict(recs[0].env),
        "changed": {k: (base_config.get(k), config.get(k)) for k in config
                    if config.get(k) != base_config.get(k) and k not in PER_PHASE_KNOBS},
    }
    _speed_columns(row, ok_speed)
    rate = speedup.UNITS[unit][1]  # the throughput the speedups count, with its spread over repeats
    row["rate"] = row.get(rate, np.nan)
    row["rate_min"], row["rate_max"] = stats.min_max([r.metrics.get(rate) for r in ok_speed])
    row["speed_records"] = tuple(ok_speed)
    _disturbance_columns(row, all_speed, speed, flagged)
    _speedup_columns(row, base_speed, ok_speed, base_runs, len(speed), unit)
    _equivalence_columns(row, [r for r in recs if r.phase == "equivalence"], base_speed is None)
    return row


def _comparison_columns(df: pd.DataFrame, baseline: str, meta: Any) -> float | None:
    """Quality deltas against the baseline and the primary metric at the equal wall time every curve reached;
    returns that time (None without curves)."""
    base_runs = df.at[baseline, "quality_runs"]
    for m in meta.metrics:
        deltas = [stats.paired_difference({k: q.get(m) for k, q in runs.items()},
                                          {k: q.get(m) for k, q in base_runs.items()}) for runs in df["quality_runs"]]
        # the mean of the paired differences, the point its interval is around; the difference of the medians
        # where no seed pairs (a variant run at other seeds than the baseline)
        df[f"{m}_delta"] = [d.ratio if d.n else diff for d, diff in zip(deltas, df[m] - df.at[baseline, m],
                                                                          strict=True)]
        df[f"{m}_delta_ci_low"] = [d.ci_low for d in deltas]
        df[f"{m}_delta_ci_high"] = [d.ci_high for d in deltas]
        if m == (meta.primary or meta.metrics[0]):
            df["quality_seeds"] = [d.n for d in deltas]  # seeds paired with the baseline's
    curves = {v: c for v, c in df["curve"].items() if c}
    walls = [float(c[-1].get("wall_s", np.inf)) for c in curves.values()]
    equal_time_s = min((w for w in walls if not np.isnan(w)), default=np.nan)  # reused curves have no time
    df["primary_at_equal_time"] = [curve_value_at(df.at[v, "curve"], meta.primary, equal_time_s)
                                   if v in curves and meta.primary else np.nan for v in df.index]
    return float(equal_time_s) if np.isfinite(equal_time_s) else None


def summarize(records: list[Record], baseline: str, *, target: float | None = None,
              primary_metric: str | None = None, higher_is_better: bool | None = None,
              workload: WorkloadDescription | None = None, quality_margin: float | None = None) -> pd.DataFrame:
    """One row per variant (index), baseline first; see the module docstring for the columns.

    `workload` (the results directory's `load_description`) supplies the primary metric, its direction
    and the quality metric names; without it they are inferred from the records.
    """
    if not records:
        raise ValueError("no records to summarize; run `trainbench sweep` first")
    names = variants_in_order(records, baseline)
    meta = quality_meta(records, primary_metric, higher_is_better, workload)
    by_variant = {v: [r for r in records if r.variant == v] for v in names}
    base_config = next((dict(r.config) for r in by_variant[baseline]), {})
    base_speed = [r for r in latest_attempts(by_variant[baseline]) if r.phase == "speed" and r.status == "ok"]
    base_runs = _per_repeat(base_speed, "samples_per_s")
    flagged = {(r.variant, r.repeat, r.attempt): why for r, why in reproducibility.interfered_runs(records)}
    unit = speedup.work_unit(records, baseline)
    rows = []
    for v in names:
        row = _variant_row(by_variant[v], base_config, base_speed if v != baseline else None, base_runs, flagged,
                           unit)
        _quality_columns(row, [r for r in by_variant[v] if r.phase == "quality" and r.status == "ok"], meta)
        rows.append(row)
    df = pd.DataFrame(rows).set_index("variant")
    _compile_columns(df, baseline)
    equal_time_s = _comparison_columns(df, baseline, meta)
    used = _time_to_target_columns(df, baseline, meta, target)
    df.attrs.update(baseline=baseline, work_unit=unit, primary_metric=meta.primary,
                    higher_is_better=meta.higher_is_better, quality_metrics=list(meta.metrics), target=used,
                    target_is_default=target is None and used is not None, equal_time_s=equal_time_s,
                    quality_margin=quality_margin)
    return df


def noise_floor(records: list[Record], baseline: str, *, aa_variant: str | None = None) -> dict[str, Any]:
    """Smallest speedup resolvable with the current repeats, from baseline-vs-baseline (A/A) runs.

    With an A/A variant (`sweep --aa`: the baseline again as ``<baseline>_aa``), the paired ratio of its
    samples/s over the baseline's has a bootstrap CI; its half-width is the noise floor. Without one,
    the floor is estimated from the baseline's own repeats (ratio of two independent resamples).
    """
    aa_variant = aa_variant or f"{baseline}{AA_SUFFIX}"
    ok = [r for r in records if r.phase == "speed" and r.status == "ok"]
    base = _per_repeat([r for r in ok if r.variant == baseline], "samples_per_s")
    aa = _per_repeat([r for r in ok if r.variant == aa_variant], "samples_per_s")
    if aa:
        est = stats.paired_ratio(aa, base)
        method = f"paired A/A ratio {aa_variant} / {baseline}"
    else:
        values = list(base.values())
        est = stats.unpaired_ratio(values, values)
        method = f"resampled {baseline} repeats (no '{aa_variant}' variant; run `trainbench sweep --aa`)"
    if not np.isfinite(est.ci_low):
        raise ValueError(f"noise floor needs >= {est.need} successful repeats of '{baseline}'"
                         f"{' and ' + repr(aa_variant) if aa else ''}; got {est.n}; use repeats >= {est.need}")
    # Half the CI's width, widened when the A/A interval itself sits off 1.0 (a drift between slots).
    half = max((est.ci_high - est.ci_low) / 2.0, est.ci_high - 1.0, 1.0 - est.ci_low)
    return {
        "method": method, "repeats": est.n, "aa_ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high,
        "half_width": half, "min_resolvable_speedup": 1.0 + half,
        "baseline_spread_pct": stats.spread_pct(list(base.values())),
        "message": (f"with {est.n} repeats this machine resolves speedups beyond x{1 + half:.3f} "
                    f"(A/A ratio {est.ratio:.3f}, 95% CI [{est.ci_low:.3f}, {est.ci_high:.3f}])"),
    }
