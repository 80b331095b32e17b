"""The report's Reproducibility section: the session's machine state, interfered runs, and the ratios of earlier
sessions of the same code, configs and machine beside this one's, pooled (`harness.analysis.reproducibility`).

Reads the records and ``sessions.json`` beside them (`harness.history.snapshot`), nothing else.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from harness.analysis import reproducibility as repro
from harness.probes.state import KERNELS
from harness.report.tables import table
from harness.results import Record

MAX_SESSION_COLUMNS = 6
"""Earlier sessions shown as columns (the latest ones); every one of them is pooled."""


def ratio_text(e: Mapping[str, Any] | None) -> str:
    """``x1.23 [1.20, 1.26]`` of one session's estimate; '–' without one."""
    if not e or e.get("ratio") is None or not math.isfinite(float(e["ratio"])):
        return "–"
    lo, hi = e.get("ci_low"), e.get("ci_high")
    if lo is None or hi is None or not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
        return f"x{float(e['ratio']):.3g} (no interval)"
    return f"x{float(e['ratio']):.3g} [{float(lo):.3g}, {float(hi):.3g}]"


def _sessions(data: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Earlier sessions oldest first, then this one."""
    earlier = sorted(data.get("earlier") or [], key=lambda x: str(x.get("started") or x.get("session")))
    return [*earlier, data["this"]] if data.get("this") else earlier


def across_sessions(s: pd.DataFrame, data: Mapping[str, Any]) -> dict[str, repro.Pooled]:
    """Per variant, every comparable session (this one included) pooled; {} without a sessions file."""
    sessions = _sessions(data)
    out = {}
    for v in s.index:
        pooled = repro.pool(repro.session_estimates(sessions, v))
        if pooled is not None:
            out[v] = pooled
    return out


def _state_lines(data: Mapping[str, Any]) -> list[str]:
    this = data.get("this") or {}
    best = data.get("best") or {}
    rows = []
    for key, state in (this.get("state") or {}).items():
        for k in KERNELS:
            b = best.get(key, {}).get(k)
            shift = f"{(state[k] / b - 1) * 100:+.0f}%" if b and state.get(k) else "–"
            rows.append([key, k, f"{state.get(k, math.nan):.3f}", f"{b:.3f}" if b else "–", shift,
                         int(state.get("runs", 0))])
    if not rows:
        return []
    n = data.get("history_sessions_on_machine", 0)
    lines = ["Machine state: the median ms of three reference kernels timed before and after every speed run on its "
             "own threads (compute: a 256x256 matmul; memory: a 32 MiB copy; latency: 100 small dependent ops), "
             f"against the fastest session median this machine showed in {n} earlier session(s) of any experiment.", ""]
    lines += table(["threads", "kernel", "this session ms", "machine's best ms", "shift", "runs"], rows, "llrrrr")
    shifted = []
    for key, state in (this.get("state") or {}).items():
        text = repro.describe_shift(state, best.get(key, {}), "the machine's best")
        if text:
            shifted.append(f"{key}: {text}")
    if shifted:
        lines += [f"- This session's host was not at its best: {'; '.join(shifted)}. A ratio between a latency-bound "
                  "and a throughput-bound variant can move with it; the table below shows how far it did.", ""]
    return lines


def _interfered_lines(records: Sequence[Record]) -> list[str]:
    flagged = repro.interfered_runs(records)
    if not flagged:
        return [f"Interfered runs: none (no run's kernels ran > {repro.INTERFERED_PCT:g}% slower than the session's "
                "median).", ""]
    lines = [f"Interfered runs: {len(flagged)} (kernels > {repro.INTERFERED_PCT:g}% slower than the session's median; "
             "each was re-run within the budget, and its latest attempt counts):", ""]
    lines += [f"- `{r.variant}` repeat {r.repeat} attempt {r.attempt}: {why}" for r, why in flagged[:12]]
    if len(flagged) > 12:
        lines.append(f"- ... and {len(flagged) - 12} more (report.json lists every run's state)")
    return lines + [""]


def _explain(v: str, this: Mapping[str, Any], prev: Mapping[str, Any]) -> str:
    """Why this session's ratio lies outside the previous session's interval (or the reverse), if the state says."""
    mine, theirs = repro.session_estimates([this], v), repro.session_estimates([prev], v)
    if not mine or not theirs:
        return ""
    a, b = mine[0], theirs[0]
    if not all(math.isfinite(x) for x in (a.ci_low, a.ci_high, b.ci_low, b.ci_high)):
        return ""
    if a.contains(b.ratio) or b.contains(a.ratio):
        return ""
    causes = []
    for key, state in (this.get("state") or {}).items():
        text = repro.describe_shift(state, (prev.get("state") or {}).get(key, {}), "in the previous session")
        if text:
            causes.append(text)
    if this.get("interfered") or prev.get("interfered"):
        causes.append(f"interfered runs: {this.get('interfered', 0)} now, {prev.get('interfered', 0)} then")
    why = "; ".join(causes) if causes else ("no state difference was measured: this ratio moves between sessions "
                                            "beyond what its within-session interval shows")
    return (f"`{v}`: x{a.ratio:.3g} here lies outside the previous session's [{b.ci_low:.3g}, {b.ci_high:.3g}] "
            f"(and x{b.ratio:.3g} outside this one's): {why}.")


def mde_lines(data: Mapping[str, Any], records: Sequence[Record]) -> list[str]:
    """What "no regression" is worth here: the newest `trainbench doctor --mde` of this workload on this machine."""
    workload = next((r.workload for r in records if r.workload), "")
    found = [e for label, e in (data.get("mde") or {}).items() if label.split()[0] == workload]
    if not found:
        return [f"Smallest detectable slowdown: not measured on this machine; `trainbench doctor --mde {workload}` "
                "measures it (an A/A experiment), and reports then quote it.", ""]
    e = max(found, key=lambda x: str(x.get("time")))
    at = ", ".join(f"{p:.1f}% at {n} repeats" for n, p in (e.get("slowdown_pct") or {}).items())
    return [f"Smallest detectable slowdown on this machine (`trainbench doctor --mde {e['workload']}`, "
            f"{str(e.get('time'))[:10]}): A/A spread {e['sd_pct']:.1f}% per repeat; a slowdown is resolved 4 times "
            f"in 5 from {at}. A smaller change reads \"unresolved\" or \"equivalent\" here, not \"no regression\".", ""]


def reproducibility_section(s: pd.DataFrame, records: Sequence[Record], data: Mapping[str, Any]) -> list[str]:
    """The section's lines ([] when no run carries a machine state)."""
    if not any(r.state for r in records):
        return []
    lines = _state_lines(data) + _interfered_lines(records) + mde_lines(data, records)
    sessions = _sessions(data)
    if len(sessions) < 2:
        lines += ["Across sessions: this is the only session of this code, configs and machine in the history, so "
                  "every interval above describes this session. The host under a VM moves between sessions; run the "
                  "same sweep again later and its report pools the sessions (a prediction interval for the next one).",
                  ""]
        return lines
    shown = sessions[-MAX_SESSION_COLUMNS - 1:]
    pooled = s.attrs.get("across_sessions") or across_sessions(s, data)
    headers = ["Variant", *[f"session {i + 1}" + (" (this)" if x is data.get("this") else "")
                            for i, x in enumerate(shown, start=len(sessions) - len(shown))],
               "pooled, next session (95%)", "between-session SD", "within-session ±"]
    rows, advice, explained = [], [], []
    for v in s.index:
        if v == s.attrs["baseline"]:
            continue
        p = pooled.get(v)
        cells = [ratio_text((x.get("variants") or {}).get(v)) for x in shown]
        if p is None:
            rows.append([f"`{v}`", *cells, "–", "–", "–"])
            continue
        pred = f"x{p.ratio:.3g} [{p.pred_low:.3g}, {p.pred_high:.3g}]" if p.sessions >= 3 else \
            f"x{p.ratio:.3g} (need >= 3 sessions)"
        rows.append([f"`{v}`", *cells, pred, f"{p.tau_pct:.1f}%", f"{p.within_pct:.1f}%"])
        if p.sessions >= 3 and p.tau_pct > p.within_pct:
            advice.append(f"`{v}` moves ±{p.tau_pct:.0f}% (one SD) between sessions, beyond its within-session "
                          f"±{p.within_pct:.0f}%: compare it only within one session, or quote the prediction interval")
        text = _explain(v, data["this"], sessions[-2])
        if text:
            explained.append(text)
    dates = ", ".join(f"{i + 1}: {str(x.get('started') or x.get('session'))[:19]}"
                      for i, x in enumerate(sessions))
    lines += [f"Across {len(sessions)} sessions of the same code (commit `{str(data['this'].get('commit'))[:10]}`), "
              f"configs and machine ({dates}); the pooled ratio is a random-effects mean (DerSimonian-Laird) and its "
              "interval the 95% prediction interval for a new session.", ""]
    lines += table(headers, rows, "l" + "r" * (len(headers) - 1))
    lines += [f"- {t}" for t in explained + advice]
    if not explained:
        lines.append("- Every ratio of this session lies inside the previous session's interval or the reverse.")
    return lines + [""]
