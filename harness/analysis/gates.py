"""Gates: pass/fail checks written as data in the experiment TOML, parsed by a small grammar (no eval).

    VARIANT.METRIC OP NUMBER                     scan.speedup >= 5
    VARIANT.METRIC OP [NUMBER *] VARIANT.METRIC  parallel.samples_per_s >= 1.5 * sequential.samples_per_s
    all.METRIC OP NUMBER                         all.forward_calls_per_step == 1
    VARIANT.equivalent                           scan.equivalent
    OP: >= <= > < == !=                          METRIC: a summary column, e.g. speedup, speedup_ci_low,
                                                 samples_per_s, <quality>_delta, time_to_target_s

`validate` runs before a sweep (unknown variants or metrics are a ValueError naming the choices);
`check` evaluates against a `summarize` DataFrame and returns one `GateResult` per gate.
"""

from __future__ import annotations

import difflib
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import pandas as pd

from harness.analysis import decision
from harness.analysis.stats import RatioEstimate
from harness.results import METRICS, PHASE_NAMES

if TYPE_CHECKING:
    from harness.analysis.speedup import Comparison
    from harness.description import WorkloadDescription
    from harness.workload import Workload

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt, "==": operator.eq, "!=": operator.ne}
ALL = "all"
EQUIVALENT = "equivalent"
_NAME = r"[A-Za-z_][A-Za-z0-9_\-]*"
_METRIC = r"[A-Za-z_][A-Za-z0-9_]*"
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_REF = rf"(?P<{{g}}v>{_NAME})\.(?P<{{g}}m>{_METRIC})"
_COMPARE = re.compile(
    rf"^\s*{_REF.format(g='l')}\s*(?P<op>>=|<=|==|!=|>|<)\s*"
    rf"(?:(?P<num>{_NUMBER})\s*(?:\*\s*{_REF.format(g='r')})?|{_REF.format(g='s')})\s*$")
_EQUIV = re.compile(rf"^\s*(?P<v>{_NAME})\.{EQUIVALENT}\s*$")
_FORBIDDEN = re.compile(r"__|[()\[\]{};:'\"`\\]|\blambda\b|\bimport\b")
_GRAMMAR = ("VARIANT.METRIC OP NUMBER, VARIANT.METRIC OP NUMBER * VARIANT.METRIC, all.METRIC OP NUMBER "
            "or VARIANT.equivalent (OP: >= <= > < == !=)")


@dataclass(frozen=True, slots=True)
class GateResult:
    """One gate's outcome with the value(s) it was decided on."""

    expr: str
    passed: bool
    measured: str
    message: str


@dataclass(frozen=True, slots=True)
class Gate:
    """A parsed gate: left reference, operator, and a right side of factor x (reference or 1)."""

    expr: str
    variant: str
    metric: str
    op: str = ""
    factor: float = 1.0
    right_variant: str | None = None
    right_metric: str | None = None

    @property
    def is_equivalence(self) -> bool:
        """True for `VARIANT.equivalent`."""
        return self.metric == EQUIVALENT and not self.op


def known_metrics(quality_metrics: Iterable[str] = ()) -> set[str]:
    """Every metric a gate may name: speed metrics, summary columns, quality metrics and their deltas."""
    names = set(METRICS) | {f"phase_ms_{p}" for p in PHASE_NAMES} | {f"phase_pct_{p}" for p in PHASE_NAMES}
    names |= {"speedup", "speedup_ci_low", "speedup_ci_high", "step_ms", "spread_pct", "samples_per_s_min",
              "samples_per_s_max", "samples_per_s_p10", "samples_per_s_p90", "runs_failed", "runs_ok",
              "time_to_target_s", "primary_at_equal_time", "equiv_max_abs_err", "equiv_max_rel_err"}
    for q in quality_metrics:  # EMA weights are evaluated too, under an ``ema_`` prefix
        names |= {q, f"{q}_delta", f"ema_{q}", f"ema_{q}_delta"}
    return names


def _generic_metrics() -> set[str]:
    return known_metrics()  # module-level name, shadowed by `validate`'s parameter of the same name


def known_metrics_for(workload: WorkloadDescription | Workload) -> set[str]:
    """`known_metrics` for a workload (its quality metrics and their deltas included): a results
    directory's description, or before a sweep the `Workload` itself; only `quality_metrics` is read."""
    return known_metrics(workload.quality_metrics)


def parse(expr: str) -> Gate:
    """Parse one gate; ValueError (with the grammar) for anything else, including code."""
    if not isinstance(expr, str) or not expr.strip():
        raise ValueError(f"gate {expr!r} is empty; write {_GRAMMAR}")
    bad = _FORBIDDEN.search(expr)
    if bad:
        raise ValueError(f"gate {expr!r}: {bad.group(0)!r} is not allowed (gates are data, not code); "
                         f"write {_GRAMMAR}")
    if m := _EQUIV.match(expr):
        return Gate(expr=expr.strip(), variant=m["v"], metric=EQUIVALENT)
    m = _COMPARE.match(expr)
    if not m:
        raise ValueError(f"gate {expr!r} does not parse; write {_GRAMMAR}")
    if m["sv"]:
        right_variant, right_metric, factor = m["sv"], m["sm"], 1.0
    else:
        right_variant, right_metric, factor = m["rv"], m["rm"], float(m["num"])
    if right_variant == ALL:
        raise ValueError(f"gate {expr!r}: 'all' may appear only on the left; name a variant on the right")
    if not math.isfinite(factor):
        raise ValueError(f"gate {expr!r}: the number must be finite")
    return Gate(expr=expr.strip(), variant=m["lv"], metric=m["lm"], op=m["op"], factor=factor,
                right_variant=right_variant, right_metric=right_metric)


def _check_name(kind: str, name: str, allowed: Iterable[str], expr: str) -> None:
    allowed = sorted(set(allowed))
    if name in allowed:
        return
    close = difflib.get_close_matches(name, allowed, n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
    raise ValueError(f"gate {expr!r}: unknown {kind} '{name}'; {hint}")


def validate(gates: Sequence[str], variants: Iterable[str], known_metrics: set[str] | None) -> list[Gate]:
    """Parse every gate and check its names, before anything runs; ValueError on the first bad one.

    `known_metrics=None` checks against the workload-independent names only (no quality metrics):
    pass `known_metrics_for(workload)` to admit the workload's quality metrics and deltas.
    """
    variants = list(variants)
    if known_metrics is None:
        known_metrics = _generic_metrics()
    parsed = []
    for expr in gates:
        gate = parse(expr)
        if gate.variant != ALL:  # all.METRIC: every variant; all.equivalent: every variant but the baseline
            _check_name("variant", gate.variant, variants, expr)
        if not gate.is_equivalence:
            _check_name("metric", gate.metric, known_metrics, expr)
        if gate.right_variant is not None:
            _check_name("variant", gate.right_variant, variants, expr)
            _check_name("metric", gate.right_metric, known_metrics, expr)
        parsed.append(gate)
    return parsed


def _fmt(x: float) -> str:
    if isinstance(x, bool):
        return str(x)
    return f"{x:.4g}"


def _value(summary: pd.DataFrame, variant: str, metric: str) -> float:
    if variant not in summary.index or metric not in summary.columns:
        return math.nan
    value = summary.at[variant, metric]
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _check_equivalence(gate: Gate, summary: pd.DataFrame, baseline: str) -> GateResult:
    # `all.equivalent` covers the variants that were checked; one skipped by design (it changes a
    # quality knob) is listed but not failed. A named variant must have passed.
    variants = [v for v in summary.index if v != baseline] if gate.variant == ALL else [gate.variant]
    measured, failed = [], []
    for v in variants:
        status = summary.at[v, "equiv_status"] if v in summary.index else "no records"
        reason = summary.at[v, "equiv_reason"] if v in summary.index else ""
        if status in ("pass", "fail"):
            err, tol = _value(summary, v, "equiv_max_abs_err"), _value(summary, v, "equiv_tolerance")
            measured.append(f"{v}: {status} (max abs err {_fmt(err)}, tol {_fmt(tol)})")
        else:
            measured.append(f"{v}: {status}" + (f" ({reason})" if reason else ""))
        if status != "pass" and not (gate.variant == ALL and status == "skipped"):
            failed.append(v)
    message = "equivalent to the baseline" if not failed else f"not shown equivalent: {', '.join(failed)}"
    return GateResult(gate.expr, not failed, "; ".join(measured), message)


def evaluate(gate: Gate, summary: pd.DataFrame, baseline: str) -> GateResult:
    """Decide one parsed gate against a summary; a missing measurement fails the gate."""
    if gate.is_equivalence:
        return _check_equivalence(gate, summary, baseline)
    if (ratio := _ratio_gate(gate, summary, baseline)) is not None:
        return ratio
    variants = list(summary.index) if gate.variant == ALL else [gate.variant]
    right = 1.0 if gate.right_variant is None else _value(summary, gate.right_variant, gate.right_metric)
    threshold = gate.factor * right
    measured, failed = [], []
    for v in variants:
        value = _value(summary, v, gate.metric)
        measured.append(f"{v}.{gate.metric} = {_fmt(value)}")
        if math.isnan(value) or math.isnan(threshold) or not OPS[gate.op](value, threshold):
            failed.append(v)
    if gate.right_variant is not None:
        measured.append(f"{gate.right_variant}.{gate.right_metric} = {_fmt(right)} (threshold {_fmt(threshold)})")
    if not failed:
        message = "ok"
    elif math.isnan(threshold) or any(math.isnan(_value(summary, v, gate.metric)) for v in failed):
        message = f"not measured for {', '.join(failed)} (failed run or metric unavailable on this machine)"
    else:
        message = f"{', '.join(failed)}: not {gate.op} {_fmt(threshold)}"
    return GateResult(gate.expr, not failed, ", ".join(measured), message)


def check(gates: Sequence[str], summary: pd.DataFrame, baseline: str, known_metrics: set[str]) -> list[GateResult]:
    """Evaluate every gate against a `summarize` DataFrame (validated first: bad gates raise ValueError)."""
    parsed = validate(gates, summary.index, known_metrics)
    return [evaluate(g, summary, baseline) for g in parsed]


# --- one decision rule for every ratio gate (TOML, CLI, pytest) ------------------------------------------

THROUGHPUTS = ("samples_per_s", "tokens_per_s", "padded_tokens_per_s", "it_per_s", "steps_per_s")
WHOLE_INTERVAL_RULE = "whole-interval rule: a ratio gate fails only when its whole 95% interval is on the wrong side"


def gate_passes(est: RatioEstimate, op: str, threshold: float) -> tuple[bool, str]:
    """(passed, why) for a ratio against a threshold: `decision.decide` with no margin (the threshold as written),
    read under the whole-interval rule.

    A shared runner adds bursts of load to some runs, so the point estimate alone wobbles across the
    threshold; requiring the whole interval on the wrong side keeps false alarms rare (measured by
    bench/measure_gate_rates.py) while a real regression, whose interval sits clearly off, still fails.
    Without an interval (too few samples) the gate cannot be decided, and an undecided gate fails.
    """
    d = decision.decide(est, at=threshold, words=(f"above {threshold:g}", f"below {threshold:g}"))
    if not math.isfinite(est.ratio):
        return False, f"not measured (n={est.n})"
    if d.insufficient:
        return False, f"undecided: {d.text()}; add repeats (or pairs) until an interval exists"
    passed = {">=": d.side != decision.BELOW, ">": d.side != decision.BELOW,
              "<=": d.side != decision.ABOVE, "<": d.side != decision.ABOVE,
              "==": d.side == decision.UNRESOLVED,  # the threshold inside the interval
              "!=": d.side in (decision.ABOVE, decision.BELOW)}[op]
    return passed, f"{d.text()} ({est.n} pairs, {est.method})"


def _ratio_gate(gate: Gate, summary: pd.DataFrame, baseline: str) -> GateResult | None:
    """`V.speedup OP x` and `V.throughput OP x * W.throughput`: decided on the ratio's interval."""
    from harness.analysis import speedup

    same_throughput = gate.right_variant is not None and gate.metric == gate.right_metric and \
        gate.metric in THROUGHPUTS and gate.right_variant != gate.variant
    if gate.variant == ALL or not (gate.metric == "speedup" and gate.right_variant is None or same_throughput):
        return None
    if gate.variant not in summary.index:
        return GateResult(gate.expr, False, f"{gate.variant}: no records", "not measured")
    if gate.metric == "speedup":
        if gate.variant == baseline:
            return GateResult(gate.expr, OPS[gate.op](1.0, gate.factor), f"{gate.variant} is the baseline (x1)", "ok")
        row = summary.loc[gate.variant]
        est = RatioEstimate(float(row["speedup"]), float(row["speedup_ci_low"]), float(row["speedup_ci_high"]),
                            int(row["speedup_pairs"]), str(row.get("speedup_method", "t")),
                            int(row.get("speedup_need", 3)))
        what, threshold = f"{gate.variant} over {baseline}", gate.factor
    else:
        records = summary["speed_records"] if "speed_records" in summary.columns else None
        if records is None or gate.right_variant not in summary.index:
            return GateResult(gate.expr, False, "no speed records", "not measured")
        est, _ = speedup.estimate(records[gate.right_variant], records[gate.variant])
        if gate.metric != "samples_per_s":  # the step pairs are on samples; rescale to the named unit
            left, right = _value(summary, gate.variant, gate.metric), _value(summary, gate.right_variant, gate.metric)
            ls = _value(summary, gate.variant, "samples_per_s")
            rs = _value(summary, gate.right_variant, "samples_per_s")
            k = (left / ls) / (right / rs) if all(map(math.isfinite, (left, right, ls, rs))) and ls and rs else math.nan
            est = RatioEstimate(est.ratio * k, est.ci_low * k, est.ci_high * k, est.n, est.method, est.need)
        what, threshold = f"{gate.variant}.{gate.metric} / {gate.right_variant}.{gate.metric}", gate.factor
    passed, why = gate_passes(est, gate.op, threshold)
    measured = f"{what} = {why}"
    message = "ok" if passed else f"not {gate.op} {_fmt(threshold)} ({WHOLE_INTERVAL_RULE})"
    return GateResult(gate.expr, passed, measured, message)


def _where_time_went(c: Comparison) -> str:
    step_delta = c.median_ms("variant") - c.median_ms("baseline")
    data_delta = c.median_ms("variant", "data") - c.median_ms("baseline", "data")
    if step_delta <= 0:
        return (f"the variant's step is {-step_delta:.2f} ms faster, not enough: what the change buys has shrunk "
                "(or the baseline got faster)")
    where = "in data loading (DataLoader fetch / collate)" if data_delta >= 0.5 * step_delta else \
        "in compute (forward, backward, optimizer)"
    return (f"the variant's step is {step_delta:.2f} ms slower ({c.clock} clock), {data_delta:+.2f} ms of it "
            f"waiting for batches: the time went {where}")


def ratio_verdict(c: Comparison, min_speedup: float) -> tuple[bool, str]:
    """(passed, message) of `c.estimate >= min_speedup` under the whole-interval rule (`gate_passes`)."""
    passed, why = gate_passes(c.estimate, ">=", min_speedup)
    measured = (f"speedup {why}, {c.clock} clock; median step {c.median_ms('baseline'):.2f} ms -> "
                f"{c.median_ms('variant'):.2f} ms")
    if passed:
        return True, f"ratio gate {c.label}: {measured} >= {min_speedup:g}x"
    if not c.estimate.has_interval:
        return False, f"ratio gate {c.label}: cannot decide: {measured}"
    cause = "knobs changed: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in c.changed.items()) if c.changed \
        else "no knob differs, so the code (or the machine) made the difference"
    # "about nothing": the interval sits nearer 1 than the required speedup (within the geometric midpoint)
    same = decision.decide(c.estimate, at=1.0, margin=math.sqrt(min_speedup) - 1.0).outcome in (
        decision.EQUIVALENT, decision.UNRESOLVED) if min_speedup > 1.05 else False
    if c.changed and same:
        # Lead with the likeliest cause: a gain that used to be large is now about nothing.
        return False, (f"ratio gate failed: {c.label}: the two settings now run at the same speed ({measured}), "
                       f"required >= {min_speedup:g}x: both settings may now run the same code path (check that "
                       f"{', '.join(c.changed)} still selects its own implementation); {cause}")
    return False, (f"ratio gate failed: {c.label}: {measured}, required >= {min_speedup:g}x "
                   f"({WHOLE_INTERVAL_RULE}); {_where_time_went(c)}; {cause}")


_CAUSES = {
    "forward_calls_per_step": "the model's layers ran {value:g} forward passes per micro-step (root-module calls, or "
                              "parameter-owning submodules called outside the root's forward): a duplicate "
                              "forward (e.g. logits from one pass, the loss from another, or a helper method "
                              "running the layers again)",
    "flops_per_step": "the step does {value:,} FLOPs instead of {expected:,}: extra forward/backward work "
                      "(a duplicate forward, recomputation) or a changed model",
    "reference_flops_per_step": "one forward + backward costs {value:,} FLOPs instead of {expected:,}: "
                                "the model changed",
    "param_count": "the model has {value:,} parameters instead of {expected:,}: its size or structure changed",
}


def counter_verdict(name: str, measured: Any, expected: Mapping[str, float]) -> tuple[bool, str]:
    """(passed, message) for exact counter expectations on an object with the named attributes."""
    failures = []
    for key, want in expected.items():
        if not hasattr(measured, key) or key in ("label", "config"):
            allowed = ", ".join(f.name for f in fields(measured) if f.name not in ("label", "config"))
            raise ValueError(f"counter '{key}' does not exist; allowed: {allowed}")
        value = getattr(measured, key)
        if value is None or not math.isclose(value, want, rel_tol=1e-9, abs_tol=0.0):
            hint = _CAUSES.get(key, "{value} != {expected}").format(value=value, expected=want)
            failures.append(f"{key} = {value} (expected {want}): {hint}")
    if failures:
        return False, f"counter gate failed: {name}: " + "; ".join(failures)
    return True, f"counter gate {name}: " + ", ".join(f"{k} = {v}" for k, v in expected.items())


def counter_above_verdict(name: str, measured: Any, counter: str, than: float, why: str) -> tuple[bool, str]:
    """(passed, message) of ``measured.<counter> > than``; the message says what the excess would mean."""
    value = getattr(measured, counter)
    if value is not None and value > than:
        return True, f"counter gate {name}: {counter} = {value:,} > {than:,.0f}"
    return False, f"counter gate failed: {name}: {counter} = {value:,} but must exceed {than:,.0f}: {why}"


def equivalence_verdict(label: str, changed: Mapping[str, tuple[Any, Any]], result: Mapping[str, Any]
                        ) -> tuple[bool, str]:
    """(passed, message) from an equivalence check's result (`harness.equivalence.check_equivalence`)."""
    if result["passed"]:
        return True, f"equivalence gate {label}: {result['reason']}"
    return False, (f"equivalence gate failed: {label} does not compute the same function: {result['reason']}; "
                   f"knobs changed: {', '.join(f'{k} {a} -> {b}' for k, (a, b) in changed.items()) or 'none'} "
                   "(a changed initialisation, loss or data order shows here)")


def loss_verdict(label: str, a: float, b: float, steps: int, rel_tol: float) -> tuple[bool, str]:
    """(passed, message): two training losses after `steps` steps at a fixed seed agree within `rel_tol`."""
    rel = abs(a - b) / max(abs(a), 1e-12)
    measured = (f"mean loss over {steps} steps {a:.6g} vs {b:.6g} "
                f"(relative difference {rel:.1e}, tolerance {rel_tol:.0e})")
    if rel <= rel_tol:
        return True, f"loss gate {label}: {measured}"
    return False, (f"loss gate failed: {label}: {measured}: training at the same seed diverged, so the variant "
                   "changes what is trained (initialisation, loss, data order or numerics)")
