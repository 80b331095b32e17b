"""One decision rule for every comparison in the project: gates, old against new, `compare`, references, the
sweep's headlines and quality deltas all come here, so the same evidence always reads the same words.

An estimate with its 95% interval is compared with a reference value `at` (1 for a ratio of two speeds, 0 for a
difference of two qualities, or a gate's threshold) and an equivalence margin ±δ around it:

- **equivalent within ±δ**: the whole interval lies inside the margin. This is two one-sided tests (TOST), each
  at 2.5% (the 95% interval's ends), so it is the stricter form of TOST's usual 90% interval;
- **faster / better** (above `at` where higher is better): the interval lies wholly above `at`, and not wholly
  inside the margin;
- **slower / worse**: wholly below;
- **unresolved**: none of these. With an interval, how many more repeats would likely resolve it (if the point
  estimate stays where it is, the interval shrinks as t/sqrt(n) until it leaves `at` or fits the margin); with
  too few samples for an interval, "insufficient" and how many more give one.

A difference smaller than the margin but resolved (an interval of [1.01, 1.02] at ±3%) is *equivalent*: it is
real and too small to matter. With no margin (a gate's threshold, written as the user wants it) only the other
three outcomes occur.

`verdict` turns a variant's decided speed and costs (its function, its quality, its memory) into one word: adopt,
reject or unresolved.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.analysis.stats import RatioEstimate, t_quantile_975

BETTER, WORSE, EQUIVALENT, UNRESOLVED = "better", "worse", "equivalent", "unresolved"
ABOVE, BELOW, INSIDE = "above", "below", "inside"
EQUIVALENCE_MARGIN_PCT = 3.0
"""The margin of speed comparisons (sweep headlines, `compare`, old against new): the sweep's target half-width,
the smallest change a sweep sets out to resolve."""
SPEED = ("faster", "slower")
QUALITY = ("better", "worse")
MAX_REPEATS_ADVISED = 100
"""Beyond this many repeats "more repeats" is not advice: the difference is too close to the reference."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one comparison, with the evidence and the words every face prints."""

    outcome: str
    """BETTER, WORSE, EQUIVALENT or UNRESOLVED."""
    side: str
    """Where the interval lies against `at`: ABOVE, BELOW, INSIDE (the margin) or UNRESOLVED."""
    estimate: RatioEstimate
    at: float
    margin: float
    """The equivalence margin: a fraction of `at` for a ratio (0.03 = ±3%), in the estimate's units for a
    difference."""
    scale: str
    """"ratio" or "difference"."""
    words: tuple[str, str]
    more: int | None
    """Repeats more that would likely resolve an unresolved outcome (None: no finite number would)."""

    @property
    def insufficient(self) -> bool:
        """True when there were too few samples for an interval."""
        return math.isfinite(self.estimate.ratio) and not self.estimate.has_interval

    @property
    def resolved(self) -> bool:
        """True for a resolved difference (better or worse)."""
        return self.outcome in (BETTER, WORSE)

    @property
    def label(self) -> str:
        """The outcome in words: "faster", "slower", "equivalent within ±3%", "unresolved"."""
        if self.outcome == BETTER:
            return self.words[0]
        if self.outcome == WORSE:
            return self.words[1]
        if self.outcome == EQUIVALENT:
            return f"equivalent within ±{self._margin_text()}"
        return UNRESOLVED

    def _margin_text(self) -> str:
        return f"{100 * self.margin:g}%" if self.scale == "ratio" else f"{self.margin:.3g}"

    def evidence(self) -> str:
        """The estimate with its interval: ``x1.22 [1.13, 1.31]`` or ``-0.031 [-0.045, -0.017]``."""
        e = self.estimate
        if not math.isfinite(e.ratio):
            return f"not measured (n={e.n})"
        if self.scale == "ratio":
            point = f"x{e.ratio:.3g}"
            interval = f"[{e.ci_low:.3g}, {e.ci_high:.3g}]"
        else:
            point = f"{e.ratio:+.3g}"
            interval = f"[{e.ci_low:+.3g}, {e.ci_high:+.3g}]"
        if not e.has_interval:
            return f"{point} (insufficient: n={e.n}; need >= {e.need})"
        return f"{point} {interval}"

    def advice(self) -> str:
        """For an unresolved outcome, what would resolve it; empty otherwise."""
        if self.outcome != UNRESOLVED or not math.isfinite(self.estimate.ratio):
            return ""
        unit = "seed" if self.words == QUALITY else "repeat"  # a quality change is replicated over seeds
        if self.insufficient:
            k = self.estimate.need - self.estimate.n
            return f"{k} more {unit}{'s' if k != 1 else ''} give{'s' if k == 1 else ''} an interval"
        if self.more is None:
            return f"more than {MAX_REPEATS_ADVISED} {unit}s would be needed: the estimate sits at the reference"
        return f"about {self.more} more {unit}{'s' if self.more != 1 else ''} would likely resolve it"

    def text(self) -> str:
        """``faster: x1.22 [1.13, 1.31]``; ``unresolved: x1.02 [0.97, 1.08]; about 6 more repeats would ...``."""
        tail = self.advice()
        return f"{self.label}: {self.evidence()}" + (f"; {tail}" if tail else "")


def _bounds(at: float, margin: float, scale: str) -> tuple[float, float]:
    if scale == "ratio":
        return at / (1.0 + margin), at * (1.0 + margin)
    return at - margin, at + margin


def _distance(x: float, at: float, scale: str) -> float:
    return math.log(x / at) if scale == "ratio" else x - at


def _quantile(method: str, n: int) -> float:
    return t_quantile_975(n - 1) if method == "t" else 1.959963984540054


def more_repeats(est: RatioEstimate, at: float, margin: float, scale: str = "ratio") -> int | None:
    """Repeats beyond `est.n` after which the interval would likely leave `at` or fit inside the margin, if the
    point estimate stays where it is and the spread per repeat too; None beyond `MAX_REPEATS_ADVISED`."""
    if not est.has_interval or est.n < 2 or (scale == "ratio" and not (est.ratio > 0 and at > 0)):
        return None
    lo, hi = (_distance(x, at, scale) for x in (est.ci_low, est.ci_high))
    d = abs(_distance(est.ratio, at, scale))
    half = (hi - lo) / 2.0
    room = (math.log1p(margin) if scale == "ratio" else margin) - d
    goal = max(d, room)
    if goal <= 0 or half <= 0:
        return None
    q = _quantile(est.method, est.n)
    for n in range(est.n + 1, MAX_REPEATS_ADVISED + 1):
        if half * _quantile(est.method, n) / q * math.sqrt(est.n / n) < goal:
            return n - est.n
    return None


def decide(est: RatioEstimate, *, at: float = 1.0, margin: float = 0.0, scale: str = "ratio",
           higher_is_better: bool = True, words: tuple[str, str] = SPEED) -> Decision:
    """Decide `est` against `at` with equivalence margin `margin` (module docstring). `est.ratio` holds the point
    estimate on either scale (a difference too); `margin` is a fraction of `at` for a ratio, in units for a
    difference."""
    if scale not in ("ratio", "difference"):
        raise ValueError(f"scale: {scale!r}; use 'ratio' or 'difference'")

    def make(side: str) -> Decision:
        outcome = {INSIDE: EQUIVALENT, UNRESOLVED: UNRESOLVED,
                   ABOVE: BETTER if higher_is_better else WORSE,
                   BELOW: WORSE if higher_is_better else BETTER}[side]
        more = more_repeats(est, at, margin, scale) if side == UNRESOLVED else None
        return Decision(outcome, side, est, at, margin, scale, words, more)

    if not (math.isfinite(est.ratio) and est.has_interval):
        return make(UNRESOLVED)
    low, high = _bounds(at, margin, scale)
    if margin > 0 and low <= est.ci_low and est.ci_high <= high:
        return make(INSIDE)
    if est.ci_low > at:
        return make(ABOVE)
    if est.ci_high < at:
        return make(BELOW)
    return make(UNRESOLVED)


def contains(est: RatioEstimate, value: float) -> bool:
    """True when `value` lies inside the estimate's interval: decided neither above nor below it (what an A/A
    interval's coverage counts). False without an interval."""
    return est.has_interval and decide(est, at=value).side == UNRESOLVED


def exact(value: float | None, reference: float | None, rel_tol: float, *, floor: float = 1e-3) -> Decision:
    """A deterministic figure (one measurement that repeats exactly: no interval) against its reference: the
    difference relative to max(|reference|, `floor`) as a degenerate interval, equivalent within `rel_tol`. Two
    NaNs are the same figure (a metric undefined in both); a missing side is unresolved."""
    if value is None or reference is None:
        point = math.nan
    elif math.isnan(value) and math.isnan(reference):
        point = 0.0
    else:
        point = (value - reference) / max(abs(reference), floor)
    est = RatioEstimate(point, point, point, 1, "exact", 1)
    return decide(est, at=0.0, margin=rel_tol, scale="difference", words=("higher", "lower"))


ADOPT, REJECT = "adopt", "reject"
QUALITY_MARGIN = 0.02
"""The equivalence margin of a quality change: 2% of the baseline's value of the metric."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """What to do with a variant: ADOPT, REJECT or UNRESOLVED, and why, from its decided speed and costs."""

    word: str
    why: str


def quality_decision(delta: RatioEstimate, base_value: float, *, higher_is_better: bool = True,
                     margin: float | None = None, words: tuple[str, str] = QUALITY) -> Decision:
    """A quality change (a difference with its interval across seeds) decided against 0 with the quality margin:
    `margin` in the metric's units (an experiment's `quality_margin`), else `QUALITY_MARGIN` of the baseline's value.
    Better or worse when the interval excludes 0; "no change" (equivalent) when it lies inside +-margin: both
    one-sided tests of the equivalence (TOST) reject at 2.5% each; unresolved otherwise (one seed: insufficient).
    `words` name the two resolved sides: ("higher", "lower") for a metric whose good direction is not known."""
    width = QUALITY_MARGIN * max(abs(base_value), 1e-12) if margin is None else margin
    return decide(delta, at=0.0, margin=width, scale="difference", higher_is_better=higher_is_better, words=words)


def verdict(speed: Decision, *, same_function: bool | None, quality: Decision | None,
            memory_ratio: float | None = None) -> Verdict:
    """Adopt a variant when it is decided faster and costs nothing decided: it computes the same function (the
    equivalence check passed) or its quality is decided equivalent or better. Reject it when it is decided slower,
    its quality decided worse, its function differs with no quality run to vouch for it, or it is equivalent in
    speed without saving memory (`memory_ratio`, variant / baseline, below 0.9). Anything else is unresolved, with
    what would resolve it."""
    if speed.outcome == WORSE:
        return Verdict(REJECT, f"{speed.words[1]}: {speed.evidence()}")
    if quality is not None and quality.outcome == WORSE:
        return Verdict(REJECT, f"quality {quality.label}: {quality.evidence()}")
    quality_ok = quality is not None and quality.outcome in (EQUIVALENT, BETTER)
    if same_function is False and not quality_ok:
        return Verdict(REJECT, "computes a different function (the equivalence check failed)"
                       + ("" if quality is not None else " and no quality run shows what that costs"))
    if speed.outcome == EQUIVALENT:
        if memory_ratio is not None and math.isfinite(memory_ratio) and memory_ratio < 0.9:
            return Verdict(ADOPT, f"same speed ({speed.label}), memory x{memory_ratio:.2f}")
        return Verdict(REJECT, f"no speed gain ({speed.label})")
    if speed.outcome == UNRESOLVED:
        return Verdict(UNRESOLVED, f"speed unresolved: {speed.advice() or speed.evidence()}")
    if same_function or quality_ok:
        cost = "same function" if same_function else f"quality {quality.label}"  # type: ignore[union-attr]
        return Verdict(ADOPT, f"{speed.words[0]}, {cost}")
    if quality is None:
        return Verdict(UNRESOLVED, f"{speed.words[0]}, but its quality cost is unmeasured (a quality knob: run the "
                                   "experiment with quality_epochs and 3 or more seeds)")
    if quality.insufficient:
        seeds = f"{quality.estimate.n} seed{'s' if quality.estimate.n != 1 else ''}"
        return Verdict(UNRESOLVED, f"{speed.words[0]}, but its quality change rests on {seeds} (no interval): "
                                   "replicate the quality runs over 3 or more seeds")
    return Verdict(UNRESOLVED, f"{speed.words[0]}, quality change unresolved: {quality.advice()}")


def quality_only_verdict(quality: Decision | None) -> Verdict:
    """The verdict of a variant measured for quality only (an experiment with no speed runs, its speed measured
    elsewhere): reject it when its quality is decided worse, adopt it when decided better; no quality cost leaves
    the decision to its speed; anything else is unresolved."""
    if quality is None:
        return Verdict(UNRESOLVED, "neither speed nor quality measured")
    if quality.outcome == WORSE:
        return Verdict(REJECT, f"quality {quality.label}: {quality.evidence()}")
    if quality.outcome == BETTER:
        return Verdict(ADOPT, f"quality {quality.label}: {quality.evidence()} (its speed: the speed experiment)")
    if quality.outcome == EQUIVALENT:
        return Verdict(UNRESOLVED, f"no quality cost ({quality.label}); adopt it if its speed experiment decides it "
                                   "faster")
    return Verdict(UNRESOLVED, f"quality change unresolved: {quality.advice() or quality.evidence()}")
