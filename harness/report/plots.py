"""Report figures (matplotlib, Agg, no pyplot state): throughput and speedup with whiskers, phase
breakdown, quality against wall-clock time and epochs, per-variant resource bars, scaling curves.

Each function writes one PNG and returns its path, or None when the data for it is absent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.knobs import GENERIC_BY_NAME
from harness.report.cells import finite
from harness.report.verdicts import unit_label
from harness.results import PHASE_NAMES

DPI = 110
PHASE_COLORS = {"data": "#d62728", "forward": "#1f77b4", "loss": "#9467bd", "backward": "#ff7f0e",
                "communication": "#e377c2", "optimizer": "#2ca02c", "other": "#7f7f7f"}


def _figure(width: float, height: float, ncols: int = 1) -> tuple[Figure, list]:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, ncols, squeeze=False)[0]
    return fig, list(axes)


def _save(fig: Figure, path: Path, title: str = "") -> Path:
    """Write the PNG (no timestamp in its metadata: the same data gives the same bytes), titled with what was
    measured (the experiment and commit) when given."""
    if title:
        fig.suptitle(title, fontsize=11, fontweight="bold")
    _fit_all(fig)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def _fit_texts(ax: Any, texts: Sequence[Any]) -> None:
    """Have `_save` widen the x axis (from its left end) until every text anchored in it ends inside: a label past
    the end of a bar or whisker must not run over the panel's edge."""
    if texts:
        ax.figure.__dict__.setdefault("_fit_texts", []).append((ax, list(texts)))


def _fit_all(fig: Figure, margin: float = 1.02) -> None:
    """`_fit_texts` for every axis of the figure at once. Text width is fixed in pixels, so the limits are found by
    laying the figure out (no rasterising), measuring and widening until they hold (each pass shrinks what is left
    to fit: two or three passes)."""
    pending = fig.__dict__.pop("_fit_texts", [])
    for _ in range(3):
        if not pending:
            return
        fig.draw_without_rendering()  # constrained layout: the extents below are final
        renderer = fig.canvas.get_renderer()
        widened = []
        for ax, texts in pending:
            inverse = ax.transData.inverted()
            right = max(float(inverse.transform(t.get_window_extent(renderer))[:, 0].max()) for t in texts)
            low, high = ax.get_xlim()
            if right > high:
                ax.set_xlim(low, low + (right - low) * margin)
                widened.append((ax, texts))
        pending = widened


def _rates(rows: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, min, max) over repeats of each row's throughput in the unit the speedups count (`summarize`'s rate
    columns; samples/s for a summary without them)."""
    cols = ("rate", "rate_min", "rate_max") if "rate" in rows.columns else \
        ("samples_per_s", "samples_per_s_min", "samples_per_s_max")
    return tuple(rows[c].to_numpy(float) for c in cols)


def throughput(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Samples/s per variant (whiskers: min-max across repeats) beside speedup (whiskers: 95% CI)."""
    rows = summary[[finite(v) for v in summary["samples_per_s"]]]
    if rows.empty:
        return None
    names = list(rows.index)[::-1]  # baseline on top
    y = np.arange(len(names))
    fig, (ax1, ax2) = _figure(10.5, 1.2 + 0.45 * len(names), ncols=2)
    med, low, high = _rates(rows.loc[names])  # in the unit the speedups count: the bars' ratios are the speedups
    ax1.barh(y, med, xerr=np.nan_to_num([med - low, high - med]), color="#1f77b4", capsize=4,
             error_kw={"elinewidth": 1.2})
    ax1.set_yticks(y, names)
    ax1.set_xlabel(f"throughput ({unit_label(summary)}), median of repeats")
    ax1.set_title("Throughput (whiskers: min-max across repeats)", fontsize=10)
    sp = rows.loc[names, "speedup"].to_numpy(float)
    cl = rows.loc[names, "speedup_ci_low"].to_numpy(float)
    ch = rows.loc[names, "speedup_ci_high"].to_numpy(float)
    err = np.vstack([np.where(np.isfinite(cl), sp - cl, 0), np.where(np.isfinite(ch), ch - sp, 0)])
    # green / red only where the speedup is resolved (interval excludes 1 and clears the noise floor);
    # grey and hatched: unresolved (interval includes 1, inside the noise floor, or no interval at all)
    found = summary.attrs.get("resolved", {})
    base = summary.attrs.get("baseline")
    ok = [found.get(n, lo_ > 1 or hi_ < 1) if n != base else True for n, lo_, hi_ in zip(names, cl, ch, strict=True)]
    colors = ["#7f7f7f" if not k or n == base else "#2ca02c" if s_ > 1 else "#d62728"
              for n, k, s_ in zip(names, ok, sp, strict=True)]
    bars = ax2.barh(y, sp, xerr=err, color=colors, capsize=4, error_kw={"elinewidth": 1.2})
    for bar, k in zip(bars, ok, strict=True):
        if not k:
            bar.set_hatch("//")
            bar.set_alpha(0.6)
    ax2.axvline(1.0, color="black", linewidth=0.8, linestyle="--")
    ax2.set_yticks(y, [""] * len(names))
    ax2.set_xlabel(f"speedup vs {summary.attrs.get('baseline', 'baseline')} (x, paired {unit_label(summary)} ratio)")
    ax2.set_title("Speedup (95% CI; hatched grey: unresolved)", fontsize=10)
    top = float(np.nanmax(np.where(np.isfinite(ch), ch, sp)))
    texts = []
    for yi, s, hi_end in zip(y, sp, ch, strict=True):  # label past the whisker so they never overlap
        label = f"x{s:.2f}" + ("" if np.isfinite(hi_end) or yi == len(names) - 1 else " (no CI)")
        # a few points right of the whisker's cap, on a white ground: the dashed x1 line may pass behind a label,
        # never through it
        texts.append(ax2.annotate(label, (hi_end if np.isfinite(hi_end) else s, yi), xytext=(4, 0),
                                  textcoords="offset points", va="center", fontsize=8,
                                  zorder=5, bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0}))
    ax2.set_xlim(0, top * 1.05)
    _fit_texts(ax2, texts)
    for ax in (ax1, ax2):
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, title)


def phases(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Stacked time per optimizer step by phase (ms), with each phase's share labelled."""
    cols = [f"phase_ms_{p}" for p in PHASE_NAMES]
    rows = summary[[any(finite(summary.at[v, c]) for c in cols) for v in summary.index]]
    if rows.empty:
        return None
    names = list(rows.index)[::-1]
    y = np.arange(len(names))
    fig, (ax,) = _figure(10, 1.6 + 0.45 * len(names))
    left = np.zeros(len(names))
    totals = np.nansum(rows.loc[names, cols].to_numpy(float), axis=1)
    widest = float(totals.max()) or 1.0
    for p in PHASE_NAMES:
        ms = np.nan_to_num(rows.loc[names, f"phase_ms_{p}"].to_numpy(float))
        ax.barh(y, ms, left=left, color=PHASE_COLORS[p], label=p if ms.any() else "_")  # no legend for a 0 phase
        for yi, (l0, w, tot) in enumerate(zip(left, ms, totals, strict=True)):
            if tot > 0 and w / widest >= 0.05:  # only where the label fits inside the segment
                ax.text(l0 + w / 2, yi, f"{w / tot:.0%}", ha="center", va="center", fontsize=8, color="white")
        left += ms
    ax.set_yticks(y, names)
    ax.set_xlim(0, widest * 1.04)  # the longest bar ends inside the frame, its last segment visible
    # phases add up as means: the bar is the mean step, which the table's median step ms differs from where
    # batches vary in length
    ax.set_xlabel("mean time per optimizer step (ms), by phase; median of repeats")
    ax.set_title("Where a step goes (labels: share of the step)", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), ncols=len(PHASE_NAMES), loc="outside lower center", fontsize=8,
               frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, title)


LINE_STYLES = ("-", "--", "-.", ":")


def _flat(curves: dict, metric: str) -> bool:
    values = {p.get(metric) for c in curves.values() for p in c if isinstance(p.get(metric), (int, float))}
    return len(values) <= 1


def _seed_curves(summary: pd.DataFrame, variant: str, metric: str) -> list[list[dict]]:
    """The variant's curves, one per seed (the summary's first curve when seeds were not kept apart)."""
    runs = summary.at[variant, "quality_curves"] if "quality_curves" in summary.columns else {}
    curves = [list(c) for _, c in sorted((runs or {}).items()) if c] or [list(summary.at[variant, "curve"])]
    return [[p for p in c if p.get(metric) is not None] for c in curves]


def _band(runs: list[list[dict]], metric: str) -> tuple[np.ndarray, ...]:
    """(epochs, mean wall seconds, mean, min, max of the metric) over the seeds, at each epoch every seed reached."""
    epochs = sorted(set.intersection(*(set(p["epoch"] for p in c) for c in runs))) if runs else []
    at = [{p["epoch"]: p for p in c} for c in runs]
    values = np.array([[float(a[e][metric]) for e in epochs] for a in at]).reshape(len(at), len(epochs))
    walls = np.array([[float(a[e]["wall_s"]) for e in epochs] for a in at]).reshape(len(at), len(epochs))
    return (np.asarray(epochs, float), walls.mean(axis=0), values.mean(axis=0), values.min(axis=0),
            values.max(axis=0))


def quality_curves(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """The primary metric against training wall-clock seconds and against epochs, one line per variant."""
    metric = summary.attrs.get("primary_metric")
    curves = {v: c for v, c in summary["curve"].items() if c} if "curve" in summary.columns else {}
    if not metric or not curves:
        return None
    primary, direction = metric, "higher" if summary.attrs.get("higher_is_better", True) else "lower"
    if _flat(curves, metric):
        # A flat primary (e.g. 0 for every variant on a short budget) says nothing: plot the first
        # quality metric that does vary, and say so on the axis.
        skip = {"epoch", "step", "wall_s", metric}
        varying = [k for k in next(iter(curves.values()))[0] if k not in skip and not k.startswith("ema_")
                   and not _flat(curves, k)]
        if varying:
            metric = varying[0]
    fig, (ax1, ax2) = _figure(11, 4, ncols=2)
    by_epochs: dict[tuple, list[str]] = {}  # variants whose curves over epochs are the same points
    seeds = 1
    for v in curves:
        runs = _seed_curves(summary, v, metric)
        seeds = max(seeds, len(runs))
        epochs, walls, mean, low, high = _band(runs, metric)
        key = tuple(zip(epochs, np.round(mean, 12), strict=True))
        # each distinct curve its own dash, so that curves which nearly coincide stay told apart
        style = LINE_STYLES[len(by_epochs) % len(LINE_STYLES)]
        (line,) = ax1.plot(walls, mean, marker="o", markersize=3, label=v, linestyle=style)
        if key not in by_epochs:
            ax2.plot(epochs, mean, marker="o", markersize=3, color=line.get_color(), linestyle=style)
            if len(runs) > 1:  # the band: min-max over seeds at each epoch
                ax2.fill_between(epochs, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
                ax1.fill_between(walls, low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        by_epochs.setdefault(key, []).append(v)
    same = [names for names in by_epochs.values() if len(names) > 1]
    target, equal_s = summary.attrs.get("target"), summary.attrs.get("equal_time_s")
    for ax in (ax1, ax2):
        if target is not None and metric == primary:  # the target is the primary metric's
            ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:.4g}")
        ax.set_ylabel(f"{metric} ({direction} is better)" if metric == primary else
                      f"{metric} (primary {primary} is flat)")
        ax.grid(alpha=0.3)
    if equal_s:
        ax1.axvline(equal_s, color="grey", linestyle="--", linewidth=1, label=f"equal time {equal_s:.3g} s")
    ax1.set_xlabel("training wall-clock time (s, evals excluded)")
    # a curve drawn once for several variants: the axis says who it stands for (below the plot, over nothing)
    ax2.set_xlabel("\n".join(["epoch", *("same curve: " + ", ".join(n) for n in same)]))
    ax2.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole
    over = f"; mean of {seeds} seeds, band min-max" if seeds > 1 else ""
    ax1.set_title(f"Quality at equal wall-clock time{over}", fontsize=10)
    ax2.set_title(f"Quality at equal epochs{over}", fontsize=10)
    # one legend for both panels (same colour per variant), outside them: it never covers a curve
    fig.legend(*ax1.get_legend_handles_labels(), loc="outside right upper", fontsize=8, frameon=False)
    return _save(fig, path, title)


def _bars(ax: Any, names: list[str], values: np.ndarray, label: str, base: float) -> None:
    """Horizontal bars from zero, each labelled with its value and its change from the baseline's; a variant
    without the value says "n/a" (an empty slot would read as zero)."""
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(values), color="#1f77b4")
    ax.set_yticks(y, names)
    ax.set_xlim(0, max(float(np.nanmax(values)) * 1.05, 1e-9))
    texts = []
    for yi, v in zip(y, values, strict=True):
        if np.isfinite(v):
            pct = (v / base - 1) * 100 if np.isfinite(base) and base > 0 and v != base else None
            change = "" if pct is None else " (±0%)" if abs(pct) < 0.5 else f" ({pct:+.0f}%)"
            texts.append(ax.text(v, yi, f" {v:.3g}{change}", va="center", fontsize=8))
        else:
            texts.append(ax.text(0, yi, " n/a (not measured)", va="center", fontsize=8, color="#7f7f7f"))
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)
    _fit_texts(ax, texts)


def resources(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Per variant, bars from zero: utilisation (GPU, else the process's CPU %), peak memory (CUDA allocated, else
    RSS) and the activations autograd saved for backward, each labelled with its change from the baseline."""
    gpu = np.isfinite(summary["gpu_util_pct"].to_numpy(float)).any()
    cuda = np.isfinite(summary["cuda_peak_allocated_gib"].to_numpy(float)).any()
    panels = [("gpu_util_pct" if gpu else "cpu_util_pct", "GPU utilisation, %" if gpu else
               "CPU utilisation of the process, % of one core"),
              ("cuda_peak_allocated_gib" if cuda else "peak_rss_gib", "peak CUDA memory allocated, GiB" if cuda else
               "peak RSS over the window, GiB")]
    if "saved_tensors_gib" in summary.columns and np.isfinite(summary["saved_tensors_gib"].to_numpy(float)).any():
        panels.append(("saved_tensors_gib", "activations saved for backward, MiB"))
    panels = [(c, lab) for c, lab in panels if np.isfinite(summary[c].to_numpy(float)).any()]
    scale = {"saved_tensors_gib": 1024.0}  # activations in MiB, as the report's tables give them
    if not panels:
        return None
    names = list(summary.index)[::-1]  # baseline on top
    base = summary.attrs.get("baseline", summary.index[0])
    fig, axes = _figure(4.2 * len(panels), 1.4 + 0.42 * len(names), ncols=len(panels))
    for i, (ax, (col, label)) in enumerate(zip(axes, panels, strict=True)):
        k = scale.get(col, 1.0)
        _bars(ax, names, summary.loc[names, col].to_numpy(float) * k, label, float(summary.at[base, col]) * k)
        if i:
            ax.set_yticks(np.arange(len(names)), [""] * len(names))
    axes[0].set_title("Resources per variant (median of repeats; change vs baseline)", fontsize=10, loc="left")
    return _save(fig, path, title)


def _numeric(knob: str, values: Sequence[object]) -> bool:
    if knob in GENERIC_BY_NAME:
        return GENERIC_BY_NAME[knob].type in (int, float)
    return all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in values)


def _sentinel(knob: str, value: object) -> bool:
    """A generic knob's documented "0 = ..." value (0 = no chunking, 0 = off): a switch, not a magnitude."""
    spec = GENERIC_BY_NAME.get(knob)
    return spec is not None and value == 0 and "(0 = " in spec.doc


def scaling_axes(summary: pd.DataFrame) -> tuple[str, list[str], list[str]] | None:
    """(x knob, line knobs, variants drawn) of a sweep: the numeric knob with the most values on the x axis (the
    first changed one on a tie), one line per combination of the other changed knobs (a grid). A knob whose value
    follows from x (grad_accum at a fixed effective batch) makes no lines of its own; a variant alone on its line
    (a one-factor variant changing another knob) is left out. None unless some line has >= 3 x values."""
    knobs = list(dict.fromkeys(k for changed in summary["changed"] for k in changed))
    # a knob's "off" value (max_length=0: no chunking) is not a point on its axis
    configs = {v: cfg for v, cfg in zip(summary.index, summary["config"], strict=True)
               if not any(_sentinel(k, cfg.get(k)) for k in knobs)}
    candidates = []
    for i, knob in enumerate(knobs):
        values = [cfg.get(knob) for cfg in configs.values()]
        if _numeric(knob, values) and len(set(values)) >= 3:
            candidates.append((len(set(values)), -i, knob))
    if not candidates:
        return None
    x = max(candidates)[2]

    def follows_from_x(knob: str, cfgs: Sequence[Mapping]) -> bool:
        return all(len({repr(c.get(knob)) for c in cfgs if c.get(x) == v}) == 1 for v in {c.get(x) for c in cfgs})

    others = [k for k in knobs if k != x and not follows_from_x(k, list(configs.values()))]
    lines: dict[tuple[str, ...], set[Any]] = {}
    for cfg in configs.values():
        lines.setdefault(tuple(repr(cfg.get(k)) for k in others), set()).add(cfg.get(x))
    drawn = [v for v, cfg in configs.items() if len(lines[tuple(repr(cfg.get(k)) for k in others)]) >= 2]
    if len({configs[v].get(x) for v in drawn}) < 3:
        return None
    kept = [configs[v] for v in drawn]
    return x, [k for k in others if len({repr(c.get(k)) for c in kept}) > 1], drawn


def scaling_knob(summary: pd.DataFrame) -> str | None:
    """The x knob of `scaling_axes` (None when nothing is swept)."""
    axes = scaling_axes(summary)
    return axes[0] if axes else None


def scaling(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Curves against the swept knob: samples/s (with each point's min-max over repeats), tokens/s when tokens are
    counted, and peak memory; one line per value of the other swept knobs (a grid)."""
    axes_knobs = scaling_axes(summary)
    if axes_knobs is None:
        return None
    knob, others, drawn = axes_knobs
    rows = summary.loc[drawn]
    rows = rows[[finite(v) for v in rows["samples_per_s"]]]
    rows = rows.assign(_x=[cfg[knob] for cfg in rows["config"]],
                       _line=[", ".join(f"{k}={cfg.get(k)}" for k in others) for cfg in rows["config"]])
    rows = rows.sort_values("_x")
    with_tokens = bool(np.nansum(rows["tokens_per_s"].to_numpy(float)) > 0)
    mem_col = "cuda_peak_allocated_gib" if np.isfinite(rows["cuda_peak_allocated_gib"].to_numpy(float)).any() \
        else "peak_rss_gib"
    panels = [("samples_per_s", "samples/s")] + ([("tokens_per_s", "real tokens/s")] if with_tokens else []) + \
        [(mem_col, "peak GPU memory allocated, GiB" if mem_col.startswith("cuda") else "peak RSS, GiB")]
    fig, axes = _figure(5 * len(panels), 4, ncols=len(panels))
    for ax, (col, label) in zip(axes, panels, strict=True):
        for line, group in rows.groupby("_line", sort=False):
            x, y = group["_x"].to_numpy(float), group[col].to_numpy(float)
            name = line or "measured"
            if col == "samples_per_s":
                err = [y - group["samples_per_s_min"].to_numpy(float), group["samples_per_s_max"].to_numpy(float) - y]
                ax.errorbar(x, y, yerr=err, marker="o", capsize=4, label=f"{name} (min-max)")
            else:
                ax.plot(x, y, marker="o", label=name)
        one_accum = len({cfg.get("grad_accum") for cfg in rows["config"]}) == 1
        if col == "samples_per_s" and knob == "batch_size" and not others and one_accum:  # perfect batching: linear
            x, y = rows["_x"].to_numpy(float), rows["samples_per_s"].to_numpy(float)
            ax.plot(x, y[0] * x / x[0], linestyle=":", color="grey", label="linear in batch_size")
        x_all = rows["_x"].to_numpy(float)
        if x_all.max() / max(x_all.min(), 1e-12) >= 8:
            ax.set_xscale("log", base=2)
            ticks = sorted(set(x_all))
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.set_xlabel(knob)
        ax.set_ylabel(label)
        products = {cfg.get("batch_size", 0) * cfg.get("grad_accum", 1) for cfg in rows["config"]}
        fixed = f" (batch_size x grad_accum = {products.pop()})" if knob == "batch_size" and not one_accum \
            and len(products) == 1 else ""
        ax.set_title(f"{label} vs {knob}{fixed}", fontsize=10)
        # from zero: a 4% change in memory must not look like a halving; the top above the highest point or whisker
        ax.set_ylim(0, _data_top(ax) * 1.08 or None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, title)


def _data_top(ax: Any) -> float:
    """The highest y any line of the axes reaches (points, whisker caps), 0 when none."""
    tops = [float(np.nanmax(np.asarray(line.get_ydata(), float))) for line in ax.get_lines()
            if np.isfinite(np.asarray(line.get_ydata(), float)).any()]
    for coll in ax.collections:  # error bar segments
        for seg in getattr(coll, "get_segments", list)():
            if len(seg) and np.isfinite(seg[:, 1]).any():
                tops.append(float(np.nanmax(seg[:, 1])))
    return max(tops, default=0.0)


def ddp_scaling(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Data-parallel scaling (`harness.analysis.scaling`): samples/s against ranks (min-max whiskers) with the
    linear ideal from the baseline, and scaling efficiency (95% CI whiskers) beside the communication share."""
    from harness.analysis.scaling import scaling_table

    t = scaling_table(summary)
    if t is None or not np.isfinite(t["samples_per_s"].to_numpy(float)).any():
        return None
    t = t[[finite(v) for v in t["samples_per_s"]]]
    fig, (ax1, ax2, ax3) = _figure(13, 4, ncols=3)
    unit = unit_label(summary)  # the unit the efficiencies beside it are computed in
    rate, rate_lo, rate_hi = (("rate", "rate_min", "rate_max") if np.isfinite(t["rate"].to_numpy(float)).any()
                              else ("samples_per_s", "samples_per_s_min", "samples_per_s_max"))
    x = t["ranks"].to_numpy(float)
    y = t[rate].to_numpy(float)
    err = np.nan_to_num([y - t[rate_lo].to_numpy(float), t[rate_hi].to_numpy(float) - y])
    # variants at one rank count side by side (a small offset each) and in their own colours: whiskers apart
    offset = np.zeros(len(t))
    for _, idx in t.groupby("ranks").indices.items():
        offset[idx] = (np.arange(len(idx)) - (len(idx) - 1) / 2) * 0.12
    for i, name in enumerate(t.index):
        ax1.errorbar(x[i] + offset[i], y[i], yerr=err[:, i:i + 1], marker="o", linestyle="none", capsize=4,
                     color=f"C{i}", label=f"{name} (min-max)")
    base = t.loc[summary.attrs["baseline"]] if summary.attrs["baseline"] in t.index else t.iloc[0]
    ideal = np.sort(np.unique(x))
    ax1.plot(ideal, base[rate] * ideal / base["ranks"], linestyle=":", color="grey", label="linear")
    ax1.set_xlabel("ranks (ddp x nnodes)")
    ax1.set_ylabel(f"{unit}, all ranks")
    ax1.set_title("Throughput vs ranks", fontsize=10)
    ax1.set_xticks(ideal, [f"{v:g}" for v in ideal])
    ax1.set_xlim(ideal[0] - 0.5, ideal[-1] + 0.5)
    ax1.set_ylim(0, _data_top(ax1) * 1.1 or None)
    labels = list(t.index)
    pos = np.arange(len(labels))
    eff = t["efficiency"].to_numpy(float)
    lo = np.nan_to_num(eff - t["efficiency_ci_low"].to_numpy(float))
    hi = np.nan_to_num(t["efficiency_ci_high"].to_numpy(float) - eff)
    ax2.bar(pos, np.nan_to_num(eff), width=0.6, yerr=[lo, hi], capsize=4, color="#1f77b4")
    for p_, e_ in zip(pos, eff, strict=True):
        if not np.isfinite(e_):  # the same rank count as the baseline (more threads): no scaling to measure
            ax2.text(p_, 0.02, "n/a:\nsame ranks", ha="center", va="bottom", fontsize=7, color="#7f7f7f")
    ax2.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax2.set_ylim(0, max(1.1, float(np.nanmax(eff + hi)) * 1.1))
    ax2.set_ylabel("efficiency = speedup / ranks")
    ax2.set_xticks(pos, labels, rotation=20, fontsize=8)
    ax2.set_title(f"Efficiency in {unit} (1 = linear; whiskers: 95% CI)", fontsize=10)
    comm = t["communication_pct"].to_numpy(float)
    c_lo = np.nan_to_num(comm - t["communication_pct_min"].to_numpy(float))
    c_hi = np.nan_to_num(t["communication_pct_max"].to_numpy(float) - comm)
    ax3.bar(pos, np.nan_to_num(comm), width=0.6, yerr=[c_lo, c_hi], capsize=4, color="#e377c2")
    top = max(float(np.nanmax(np.where(np.isfinite(comm), comm + c_hi, 0.0))), 1.0)
    for p_, c_ in zip(pos, comm, strict=True):  # the value beside its bar (its whisker runs through the middle)
        if np.isfinite(c_):
            ax3.text(p_ + 0.32, c_, f"{c_:.1f}%", ha="left", va="center", fontsize=7)
        else:
            ax3.text(p_, top * 0.02, "n/a:\none rank", ha="center", va="bottom", fontsize=7, color="#7f7f7f")
    ax3.set_ylim(0, top * 1.25)
    ax3.set_ylabel("% of a step")
    ax3.set_xticks(pos, labels, rotation=20, fontsize=8)
    ax3.set_title("Communication not overlapped (whiskers: min-max)", fontsize=10)
    ax1.legend(fontsize=7)
    return _save(fig, path, title)


RETIRED = ("timeline",)
"""Figures earlier versions wrote (overlaid utilisation timelines, replaced by `resources`): removed on re-render."""


def write_all(summary: pd.DataFrame, out_dir: Path, title: str = "") -> dict[str, Path]:
    """Every figure the data supports, as {name: path}; `title` (experiment and commit) heads each."""
    made = {
        "throughput": throughput(summary, out_dir / "throughput.png", title),
        "phases": phases(summary, out_dir / "phases.png", title),
        "quality": quality_curves(summary, out_dir / "quality.png", title),
        "resources": resources(summary, out_dir / "resources.png", title),
        "scaling": scaling(summary, out_dir / "scaling.png", title),
        "ddp_scaling": ddp_scaling(summary, out_dir / "ddp_scaling.png", title),
    }
    for name in [*made, *RETIRED]:
        stale = out_dir / f"{name}.png"  # every figure is saved as <name>.png
        if made.get(name) is None and stale.exists():
            stale.unlink()  # a figure this data no longer supports must not outlive a re-render
    return {k: v for k, v in made.items() if v is not None}
