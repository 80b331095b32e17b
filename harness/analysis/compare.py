"""`trainbench compare OLD NEW`: per variant and metric, the change between two result directories with
its decision, and `--fail-on 'samples_per_s:-10%'` thresholds for CI.

Runs of two sweeps cannot be paired, so each ratio new/old is a ratio of medians of per-run values with
an (unpaired) bootstrap CI, from the latest attempt of each run (a re-run replaces a contended one). Each change is
decided by `decision.decide` (higher, lower, equivalent within ±3%, or unresolved). Below 3 runs on either side
there is no interval: "insufficient", and a `--fail-on` threshold on such a metric cannot be decided
(`InsufficientEvidence`, exit 2). A threshold is crossed when the whole interval of the change lies past it (the
rule of every gate: a point estimate past a threshold within noise is not a failure; the table shows it).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from harness.analysis import decision, stats
from harness.analysis.summary import latest_attempts
from harness.results import Record, find_results, load_records, machine_id

COMPARED = ("samples_per_s", "tokens_per_s", "it_per_s", "step_ms_median", "forward_calls_per_step",
            "flops_per_step", "peak_rss_gib", "cuda_peak_allocated_gib", "energy_j_per_sample")
_FAIL_ON = re.compile(r"^\s*(?P<metric>[A-Za-z_][A-Za-z0-9_]*)\s*:\s*(?P<pct>[-+]\d+(?:\.\d*)?)\s*%\s*$")


@dataclass(frozen=True, slots=True)
class Threshold:
    """`metric:+N%` fails when the metric rises by N% or more; `metric:-N%` when it falls by N% or more."""

    metric: str
    pct: float

    def crossed(self, est: stats.RatioEstimate) -> bool:
        """True when the whole interval of the ratio new/old lies past this threshold (`decision.decide` at
        1 + pct/100)."""
        side = decision.decide(est, at=1.0 + self.pct / 100.0).side
        return side == (decision.BELOW if self.pct < 0 else decision.ABOVE)


def parse_fail_on(specs: Sequence[str], metrics: Sequence[str]) -> list[Threshold]:
    """Parse `metric:-10%` specs; ValueError naming the spec and the allowed metrics."""
    out = []
    for spec in specs:
        m = _FAIL_ON.match(spec)
        if not m:
            raise ValueError(f"--fail-on {spec!r}: write METRIC:-N% (fail on a drop) or METRIC:+N% (a rise), "
                             "e.g. samples_per_s:-10%")
        if m["metric"] not in metrics:
            raise ValueError(f"--fail-on {spec!r}: unknown metric '{m['metric']}'; allowed: {', '.join(metrics)}")
        out.append(Threshold(m["metric"], float(m["pct"])))
    return out


class InsufficientEvidence(ValueError):
    """A --fail-on threshold whose metric has too few runs on one side for an interval; `text` is the table."""

    def __init__(self, message: str, text: str) -> None:
        super().__init__(message)
        self.text = text


def _values(records: Sequence[Record], variant: str, metric: str, quality: bool) -> list[float]:
    """The metric of each of the variant's runs; a figure a group run shared with its other members (the process's
    peak, the sampler's utilisation and energy: `Record.pairing["shared"]`) is not this variant's and is left out."""
    phase = "quality" if quality else "speed"
    out = []
    for r in records:
        if metric in (r.pairing or {}).get("shared", ()):
            continue
        if r.variant == variant and r.phase == phase and r.status == "ok":
            value = (r.quality if quality else r.metrics).get(metric)
            if value is not None and math.isfinite(value):
                out.append(float(value))
    return out


def _state_note(old: Sequence[Record], new: Sequence[Record]) -> list[str]:
    """A warning when the machine-state index of the two sessions differs (the host moved between them)."""
    from harness.analysis.reproducibility import SHIFT_PCT, describe_shift, session_state

    before, after = session_state(old), session_state(new)
    moved = [f"{key}: {text}" for key in sorted(before.keys() & after.keys())
             if (text := describe_shift(after[key], before[key], "in OLD"))]
    if not moved:
        return []
    return [f"> **The machine's state moved between the two sessions** (reference kernels, NEW against OLD, beyond "
            f"±{SHIFT_PCT:g}%): {'; '.join(moved)}. A speed change below may be the host's, not the code's: re-measure "
            "both in one session (`trainbench compare --against`).", ""]


def _fmt(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.4g}"


def _notes(old: Sequence[Record], new: Sequence[Record], variants: Sequence[str]) -> list[str]:
    """What makes the changes below more than the code's: another machine, a moved state, other configs."""
    lines = []
    machines = ({machine_id(r.env) for r in old}, {machine_id(r.env) for r in new})
    if machines[0] != machines[1]:
        lines += [f"> **Different machines** ({', '.join(sorted(machines[0]))} vs {', '.join(sorted(machines[1]))}):"
                  " speed changes mix code and hardware.", ""]
    lines += _state_note(old, new)
    for v in variants:
        configs = ({json.dumps(dict(r.config), sort_keys=True, default=str) for r in old if r.variant == v},
                   {json.dumps(dict(r.config), sort_keys=True, default=str) for r in new if r.variant == v})
        a, b = (json.loads(sorted(c)[0]) for c in configs)
        changed = {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
                   if a.get(k) != b.get(k) and k not in ("epochs",)}
        if changed:
            diff = ", ".join(f"{k}={x} -> {y}" for k, (x, y) in changed.items())
            lines += [f"> **`{v}` ran different configs**: {diff}; its changes mix the code and the config.", ""]
    only = sorted({r.variant for r in [*old, *new]} - set(variants))
    if only:
        lines += [f"Variants in only one directory (not compared): {', '.join(only)}", ""]
    return lines


@dataclass(frozen=True, slots=True)
class _Row:
    line: str
    crossed: bool
    undecided: str
    """Why a --fail-on threshold on this row could not be decided ('' when it could, or none applies)."""


def _row(v: str, metric: str, a: list[float], b: list[float], thresholds: Sequence[Threshold]) -> _Row:
    """One table row: the change new/old of `metric`, its decision, and each --fail-on threshold on it."""
    est = stats.unpaired_ratio(b, a)
    ci = f"[{est.ci_low:.3f}, {est.ci_high:.3f}]" if est.has_interval else \
        f"insufficient ({len(a)} vs {len(b)} runs; need >= {est.need} each)"
    d = decision.decide(est, margin=decision.EQUIVALENCE_MARGIN_PCT / 100, words=("higher", "lower"))
    said = "unresolved: insufficient" if d.insufficient else f"{d.label}; {d.advice()}" if d.advice() else d.label
    gate, crossed, undecided = "", False, ""
    for t in (t for t in thresholds if t.metric == metric):
        if not est.has_interval:
            undecided, gate = f"{v} {metric} ({len(a)} old vs {len(b)} new runs)", "undecided: insufficient"
        else:
            crossed = t.crossed(est)
            gate = f"❌ crossed {t.pct:+g}%" if crossed else f"✅ within {t.pct:+g}%"
    change = f"{(est.ratio - 1.0) * 100.0:+.1f}%"
    cells = [v, metric, _fmt(stats.median(a)), _fmt(stats.median(b)), change, ci, said, gate]
    line = "| " + " | ".join(cells) + " |"
    return _Row(line, crossed, undecided)


def compare(old_dir: str | os.PathLike[str], new_dir: str | os.PathLike[str],
            fail_on: list[str]) -> tuple[str, bool]:
    """Markdown table of per-variant, per-metric changes (new vs old) and whether a --fail-on was crossed."""
    old = latest_attempts(load_records(find_results(old_dir)))  # a report's folder reads its bundled results
    new = latest_attempts(load_records(find_results(new_dir)))
    quality_names = sorted({m for r in [*old, *new] for m in r.quality})
    metrics = [*COMPARED, *quality_names]
    thresholds = parse_fail_on(fail_on, metrics)
    variants = [v for v in dict.fromkeys(r.variant for r in new) if any(r.variant == v for r in old)]
    lines = [f"# Compare `{old_dir}` -> `{new_dir}`", "", *_notes(old, new, variants),
             "| variant | metric | old (median) | new (median) | change | 95% CI of new/old | decision | gate |",
             "|---|---|---:|---:|---:|---|---|---|"]
    rows = [_row(v, m, a, b, thresholds) for v in variants for m in metrics
            if (a := _values(old, v, m, m in quality_names)) and (b := _values(new, v, m, m in quality_names))]
    failed = any(r.crossed for r in rows)
    undecided = [r.undecided for r in rows if r.undecided]
    lines += [r.line for r in rows] or ["| (no variant in both directories) | | | | | | | |"]
    lines += ["", f"**Result: {'FAILED' if failed else 'undecided' if undecided else 'passed'}**"
              + (f" (--fail-on {', '.join(fail_on)})" if fail_on else "")]
    text = "\n".join(lines) + "\n"
    if undecided and not failed:
        raise InsufficientEvidence(
            f"--fail-on cannot be decided: fewer than {stats.MIN_REPEATS} runs on a side for {'; '.join(undecided)}; "
            f"run each sweep with --repeats {stats.MIN_REPEATS} or more", text)
    return text, failed
