"""Is a figure this session's, or the machine's? Interfered runs, the session's state, and sessions pooled.

Within a session, a sweep's interval is sound: its repeats are interleaved processes. Across sessions it is not:
the host under a VM moves (measured here: the LM's ``per_sequence`` ratio x1.29 [1.13, 1.46] and x1.08
[1.01, 1.16] ten minutes apart, no run contended). This module reads the machine-state index that every speed
run carries (`harness.probes.state`) and turns it into three things:

- **interfered runs**: a run whose reference kernels ran more than `INTERFERED_PCT` slower than the session's
  median (the same threads) was measured on a machine that was not the session's; the runner re-runs it within
  the budget, as it does a contended run, and the report lists it with the evidence;
- **the session's state** (per kernel, the median over its runs) against the best this machine has shown in
  earlier sessions: a session-wide shift cannot be re-run away, so it is named;
- **sessions pooled**: with several sessions of the same code, config and machine, a random-effects model of the
  per-session log ratios (DerSimonian & Laird, 1986) separates the between-session variance tau^2 from each
  session's own; the 95% *prediction interval* for a new session (Higgins, Thompson & Spiegelhalter, 2009:
  mu +/- t_{k-2} sqrt(tau^2 + se(mu)^2), k >= 3 sessions, widened by the median session's own variance: a user
  who re-runs the sweep sees a new session's *measured* ratio, not its true one) is what that user should
  expect, and "reproduces within +/-X%" is its half-width. Assumptions: sessions independent, log ratios normal
  within and between sessions; with few sessions tau^2 is imprecise, which the t quantile on k-2 degrees of
  freedom widens.

Everything here reads records and the files beside them; nothing imports a workload or the runner.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from harness.analysis import stats
from harness.knobs import world_of
from harness.probes.state import KERNELS
from harness.results import Record

INTERFERED_PCT = 25.0
"""A run whose kernel (the geometric mean of its two readings) is this much slower than the session's median for
that kernel is marked interfered. Quiet runs of the LM experiment on this project's 2-core machine stayed within
it (see README, Reproducibility); a busy neighbour moved the latency or memory kernel by ~30%."""
MIN_SESSION_RUNS = 3
"""Fewest runs (same threads and ranks) a session median needs before a run is judged against it."""
SHIFT_PCT = 10.0
"""A session whose median kernel is this much slower than the machine's best is named as shifted."""


def state_key(r: Record) -> str:
    """Runs whose states compare: the same intra-op threads and ranks on the machine (``t1`` or ``t1x2``)."""
    threads = r.state.get("threads") or r.metrics.get("torch_threads") or 0
    world = world_of(r.config)
    return f"t{int(threads)}" + (f"x{world}" if world > 1 else "")


def run_state(r: Record) -> dict[str, float]:
    """A run's state per kernel: the geometric mean of its before and after readings (ms); empty without one."""
    readings = [r.state[w] for w in ("before", "after") if isinstance(r.state.get(w), Mapping)]
    if not readings:
        return {}
    return {k: float(np.exp(np.mean([math.log(x[k]) for x in readings]))) for k in KERNELS
            if all(x.get(k) and x[k] > 0 for x in readings)}


def _speed_with_state(records: Iterable[Record]) -> list[Record]:
    return [r for r in records if r.phase == "speed" and r.status == "ok" and run_state(r)]


def session_state(records: Iterable[Record]) -> dict[str, dict[str, float]]:
    """Per state key, the session's median ms of each kernel over its speed runs (all attempts)."""
    by_key: dict[str, list[dict[str, float]]] = {}
    for r in _speed_with_state(records):
        by_key.setdefault(state_key(r), []).append(run_state(r))
    return {key: {k: stats.median([s.get(k) for s in states]) for k in KERNELS}
            | {"runs": float(len(states))} for key, states in by_key.items()}


def interference(r: Record, reference: Mapping[str, Mapping[str, float]]) -> str:
    """Empty when the run's kernels ran at the session's speed; else which kernel was how much slower, and when."""
    ref = reference.get(state_key(r))
    mine = run_state(r)
    if not ref or not mine or ref.get("runs", 0) < MIN_SESSION_RUNS:
        return ""
    slow = []
    limit = 1 + INTERFERED_PCT / 100
    for k in KERNELS:
        if k in mine and ref.get(k) and mine[k] > ref[k] * limit:
            when = [w for w in ("before", "after") if r.state.get(w, {}).get(k, 0) > ref[k] * limit]
            slow.append(f"{k} kernel {mine[k] / ref[k] * 100 - 100:.0f}% slower than the session's median "
                        f"({mine[k]:.2f} vs {ref[k]:.2f} ms; {' and '.join(when) or 'on average'} the window)")
    return "; ".join(slow)


def interfered_runs(records: Sequence[Record]) -> list[tuple[Record, str]]:
    """Every speed run marked interfered against its whole session, with the evidence."""
    reference = session_state(records)
    out = []
    for r in _speed_with_state(records):
        why = interference(r, reference)
        if why:
            out.append((r, why))
    return out


def shift(state: Mapping[str, float], best: Mapping[str, float]) -> dict[str, float]:
    """Per kernel, percent slower than `best` (negative: faster)."""
    return {k: (state[k] / best[k] - 1) * 100 for k in KERNELS if state.get(k) and best.get(k)}


def describe_shift(state: Mapping[str, float], other: Mapping[str, float], other_name: str,
                   threshold: float = SHIFT_PCT) -> str:
    """``memory kernel 18% slower than <other_name>`` for each kernel past `threshold`; empty when none."""
    parts = [f"{k} kernel {abs(p):.0f}% {'slower' if p > 0 else 'faster'} than {other_name}"
             for k, p in shift(state, other).items() if abs(p) >= threshold]
    return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class SessionEstimate:
    """One session's ratio of a variant over the baseline, with its within-session interval."""

    session: str
    ratio: float
    ci_low: float
    ci_high: float
    n: int
    widen: float = 1.0
    """The factor the t interval was widened by (`stats.SEQUENTIAL_WIDEN`; 1 in sessions recorded before it)."""

    @property
    def log_se(self) -> float:
        """Standard error of the log ratio, from the t interval it was made with (NaN without one)."""
        if not (self.n >= 2 and np.isfinite(self.ci_low) and np.isfinite(self.ci_high) and self.ci_low > 0):
            return float("nan")
        return math.log(self.ci_high / self.ci_low) / (2 * self.widen * stats.t_quantile_975(self.n - 1))

    def contains(self, ratio: float) -> bool:
        """True when `ratio` lies inside this session's interval (`decision.decide` at `ratio`: neither side)."""
        from harness.analysis import decision

        est = stats.RatioEstimate(self.ratio, self.ci_low, self.ci_high, self.n, "t", stats.MIN_REPEATS, self.widen)
        return decision.contains(est, ratio)


@dataclass(frozen=True, slots=True)
class Pooled:
    """Sessions pooled by a random-effects model (see the module docstring)."""

    sessions: int
    ratio: float
    """exp(mu): the pooled ratio."""
    ci_low: float
    ci_high: float
    """95% interval of the pooled ratio (NaN below 2 sessions)."""
    pred_low: float
    pred_high: float
    """95% prediction interval for a new session's ratio (NaN below 3 sessions)."""
    tau_pct: float
    """Between-session standard deviation of the ratio, in percent (exp(tau) - 1)."""
    within_pct: float
    """The median within-session half-width, in percent, for comparison."""

    @property
    def reproduces_within_pct(self) -> float:
        """Half-width of the prediction interval in percent of the pooled ratio (NaN below 3 sessions)."""
        if not np.isfinite(self.pred_low):
            return float("nan")
        return (math.sqrt(self.pred_high / self.pred_low) - 1) * 100

    def describe(self) -> str:
        """``x1.21 over 5 sessions; a new session: [1.05, 1.39] (reproduces within ±14%)``."""
        if self.sessions < 3:
            return f"x{self.ratio:.3g} over {self.sessions} session(s) (insufficient for a prediction: need >= 3)"
        return (f"x{self.ratio:.3g} over {self.sessions} sessions; a new session: [{self.pred_low:.3g}, "
                f"{self.pred_high:.3g}] (reproduces within ±{self.reproduces_within_pct:.0f}%)")


def pool(estimates: Sequence[SessionEstimate]) -> Pooled | None:
    """DerSimonian-Laird random-effects pooling of sessions' log ratios; None without any usable session."""
    usable = [e for e in estimates if np.isfinite(e.log_se) and e.ratio > 0]
    if not usable:
        return None
    y = np.log([e.ratio for e in usable])
    v = np.maximum(np.array([e.log_se for e in usable]) ** 2, 1e-12)
    k = len(usable)
    w = 1 / v
    fixed = float(np.sum(w * y) / np.sum(w))
    q = float(np.sum(w * (y - fixed) ** 2))
    c = float(np.sum(w) - np.sum(w ** 2) / np.sum(w))
    tau2 = max(0.0, (q - (k - 1)) / c) if k > 1 and c > 0 else 0.0
    ws = 1 / (v + tau2)
    mu = float(np.sum(ws * y) / np.sum(ws))
    se = float(math.sqrt(1 / np.sum(ws)))
    nan = float("nan")
    ci = (math.exp(mu - stats.t_quantile_975(k - 1) * se), math.exp(mu + stats.t_quantile_975(k - 1) * se)) \
        if k >= 2 else (nan, nan)
    # a new session's *measured* ratio: its true value varies by tau, and it is measured with a session's own error
    half = stats.t_quantile_975(k - 2) * math.sqrt(tau2 + se ** 2 + float(np.median(v))) if k >= 3 else nan
    within = stats.median([(math.sqrt(e.ci_high / e.ci_low) - 1) * 100 for e in usable])
    return Pooled(sessions=k, ratio=math.exp(mu), ci_low=ci[0], ci_high=ci[1],
                  pred_low=math.exp(mu - half) if k >= 3 else nan, pred_high=math.exp(mu + half) if k >= 3 else nan,
                  tau_pct=(math.exp(math.sqrt(tau2)) - 1) * 100, within_pct=within)


def session_estimates(sessions: Sequence[Mapping[str, Any]], variant: str) -> list[SessionEstimate]:
    """`variant`'s estimate in each session summary (`harness.history.session_summary`) that has it."""
    out = []
    for s in sessions:
        e = (s.get("variants") or {}).get(variant)
        if e and e.get("ratio"):
            out.append(SessionEstimate(session=str(s.get("session")), ratio=float(e["ratio"]),
                                       ci_low=float(e.get("ci_low") or float("nan")),
                                       ci_high=float(e.get("ci_high") or float("nan")), n=int(e.get("n") or 0),
                                       widen=float(e.get("widen") or 1.0)))
    return out
