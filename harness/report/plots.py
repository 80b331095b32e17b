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
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, metadata={"Software": None})
    return path


def throughput(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Samples/s per variant (whiskers: min-max across repeats) beside speedup (whiskers: 95% CI)."""
    rows = summary[[finite(v) for v in summary["samples_per_s"]]]
    if rows.empty:
        return None
    names = list(rows.index)[::-1]  # baseline on top
    y = np.arange(len(names))
    fig, (ax1, ax2) = _figure(10, 1.2 + 0.45 * len(names), ncols=2)
    med = rows.loc[names, "samples_per_s"].to_numpy(float)
    lo = med - rows.loc[names, "samples_per_s_min"].to_numpy(float)
    hi = rows.loc[names, "samples_per_s_max"].to_numpy(float) - med
    ax1.barh(y, med, xerr=[lo, hi], color="#1f77b4", capsize=4, error_kw={"elinewidth": 1.2})
    ax1.set_yticks(y, names)
    ax1.set_xlabel("throughput (samples/s), median of repeats")
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
    ax2.set_title("Speedup (whiskers: 95% CI; hatched grey: unresolved)", fontsize=10)
    top = float(np.nanmax(np.where(np.isfinite(ch), ch, sp)))
    for yi, s, hi_end in zip(y, sp, ch, strict=True):  # label past the whisker so they never overlap
        label = f" x{s:.2f}" + ("" if np.isfinite(hi_end) or yi == len(names) - 1 else " (no CI)")
        ax2.text(hi_end if np.isfinite(hi_end) else s, yi, label, va="center", fontsize=8)
    ax2.set_xlim(0, top * 1.18)
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
        ax.barh(y, ms, left=left, color=PHASE_COLORS[p], label=p)
        for yi, (l0, w, tot) in enumerate(zip(left, ms, totals, strict=True)):
            if tot > 0 and w / widest >= 0.05:  # only where the label fits inside the segment
                ax.text(l0 + w / 2, yi, f"{w / tot:.0%}", ha="center", va="center", fontsize=8, color="white")
        left += ms
    ax.set_yticks(y, names)
    ax.set_xlabel("time per optimizer step (ms), median of repeats")
    ax.set_title("Where a step goes (labels: share of the step)", fontsize=10)
    fig.legend(*ax.get_legend_handles_labels(), ncols=len(PHASE_NAMES), loc="outside lower center", fontsize=8,
               frameon=False)
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path, title)


def _flat(curves: dict, metric: str) -> bool:
    values = {p.get(metric) for c in curves.values() for p in c if isinstance(p.get(metric), (int, float))}
    return len(values) <= 1


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
    fig, (ax1, ax2) = _figure(10, 4, ncols=2)
    for v, curve in curves.items():
        pts = [p for p in curve if p.get(metric) is not None]
        ax1.plot([p["wall_s"] for p in pts], [p[metric] for p in pts], marker="o", markersize=3, label=v)
        ax2.plot([p["epoch"] for p in pts], [p[metric] for p in pts], marker="o", markersize=3, label=v)
    target, equal_s = summary.attrs.get("target"), summary.attrs.get("equal_time_s")
    for ax in (ax1, ax2):
        if target is not None:
            ax.axhline(target, color="black", linestyle=":", linewidth=1, label=f"target {target:g}")
        ax.set_ylabel(f"{metric} ({direction} is better)" if metric == primary else
                      f"{metric} (primary {primary} is flat)")
        ax.grid(alpha=0.3)
    if equal_s:
        ax1.axvline(equal_s, color="grey", linestyle="--", linewidth=1, label=f"equal time {equal_s:.3g} s")
    ax1.set_xlabel("training wall-clock time (s, evals excluded)")
    ax2.set_xlabel("epoch")
    ax1.set_title("Quality at equal wall-clock time", fontsize=10)
    ax2.set_title("Quality at equal epochs", fontsize=10)
    ax1.legend(fontsize=8)
    return _save(fig, path, title)


def _bars(ax: Any, names: list[str], values: np.ndarray, label: str, base: float) -> None:
    """Horizontal bars from zero, each labelled with its value and its change from the baseline's."""
    y = np.arange(len(names))
    ax.barh(y, np.nan_to_num(values), color="#1f77b4")
    ax.set_yticks(y, names)
    ax.set_xlim(0, max(float(np.nanmax(values)) * 1.35, 1e-9))
    for yi, v in zip(y, values, strict=True):
        if np.isfinite(v):
            change = f" ({(v / base - 1) * 100:+.0f}%)" if np.isfinite(base) and base > 0 and v != base else ""
            ax.text(v, yi, f" {v:.3g}{change}", va="center", fontsize=8)
    ax.set_xlabel(label)
    ax.grid(axis="x", alpha=0.3)


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
        panels.append(("saved_tensors_gib", "activations saved for backward, GiB"))
    panels = [(c, lab) for c, lab in panels if np.isfinite(summary[c].to_numpy(float)).any()]
    if not panels:
        return None
    names = list(summary.index)[::-1]  # baseline on top
    base = summary.attrs.get("baseline", summary.index[0])
    fig, axes = _figure(4.2 * len(panels), 1.4 + 0.42 * len(names), ncols=len(panels))
    for i, (ax, (col, label)) in enumerate(zip(axes, panels, strict=True)):
        _bars(ax, names, summary.loc[names, col].to_numpy(float), label, float(summary.at[base, col]))
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
        ax.set_ylim(bottom=0)  # from zero: a 4% change in memory must not look like a halving
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path, title)


def ddp_scaling(summary: pd.DataFrame, path: Path, title: str = "") -> Path | None:
    """Data-parallel scaling (`harness.analysis.scaling`): samples/s against ranks (min-max whiskers) with the
    linear ideal from the baseline, and scaling efficiency (95% CI whiskers) beside the communication share."""
    from harness.analysis.scaling import scaling_table

    t = scaling_table(summary)
    if t is None or not np.isfinite(t["samples_per_s"].to_numpy(float)).any():
        return None
    t = t[[finite(v) for v in t["samples_per_s"]]]
    fig, (ax1, ax2, ax3) = _figure(13, 4, ncols=3)
    x = t["ranks"].to_numpy(float)
    y = t["samples_per_s"].to_numpy(float)
    err = [y - t["samples_per_s_min"].to_numpy(float), t["samples_per_s_max"].to_numpy(float) - y]
    ax1.errorbar(x, y, yerr=err, marker="o", linestyle="none", capsize=4, label="measured (min-max)")
    base = t.loc[summary.attrs["baseline"]] if summary.attrs["baseline"] in t.index else t.iloc[0]
    ideal = np.sort(np.unique(x))
    ax1.plot(ideal, base["samples_per_s"] * ideal / base["ranks"], linestyle=":", color="grey", label="linear")
    for name, row in t.iterrows():
        ax1.annotate(str(name), (row["ranks"], row["samples_per_s"]), fontsize=7, xytext=(4, 4),
                     textcoords="offset points")
    ax1.set_xlabel("ranks (ddp x nnodes)")
    ax1.set_ylabel("samples/s, all ranks")
    ax1.set_title("Throughput vs ranks", fontsize=10)
    ax1.set_xticks(ideal, [f"{v:g}" for v in ideal])
    ax1.set_ylim(bottom=0)
    labels = list(t.index)
    pos = np.arange(len(labels))
    eff = t["efficiency"].to_numpy(float)
    lo = np.nan_to_num(eff - t["efficiency_ci_low"].to_numpy(float))
    hi = np.nan_to_num(t["efficiency_ci_high"].to_numpy(float) - eff)
    ax2.bar(pos, eff, width=0.6, yerr=[lo, hi], capsize=4, color="#1f77b4")
    ax2.axhline(1.0, color="grey", linestyle=":", linewidth=1)
    ax2.set_ylim(0, max(1.1, float(np.nanmax(eff + hi)) * 1.1))
    ax2.set_ylabel("scaling efficiency = speedup / ranks (1 = linear)")
    ax2.set_xticks(pos, labels, rotation=20, fontsize=8)
    ax2.set_title("Efficiency (whiskers: 95% CI)", fontsize=10)
    ax3.bar(pos, np.nan_to_num(t["communication_pct"].to_numpy(float)), width=0.6, color="#e377c2")
    ax3.set_ylim(0, 100)
    ax3.set_ylabel("% of a step")
    ax3.set_xticks(pos, labels, rotation=20, fontsize=8)
    ax3.set_title("Communication not overlapped with compute", fontsize=10)
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
