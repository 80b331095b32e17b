"""Experiment: a baseline, named variants (knob overrides), repeats, budgets and gates, from TOML.

The runner saves it beside the records (`save_experiment`: experiment.json, plus workload.json from
`harness.description`); `load_saved_experiment` reads it back as plain data (`SavedExperiment`, no
workload code needed) and `resolve_saved` turns that into a runnable `Experiment` again.

```toml
workload = "lm"
description = "duplicate forward, batching, chunking"
baseline_name = "batched"      # how the baseline is called in tables and gates (default "baseline")
repeats = 3                    # speed repeats per variant, interleaved A B C A B C
timeout_s = 600                # per (variant, repeat) child process
quality_epochs = 0             # > 0: one extra quality run per variant training this many epochs
quality_seeds = 1              # quality runs per variant, seeds 0..N-1 added to the seed knob, paired by seed
quality_margin = 0.01          # optional: a quality change within +-this (primary metric's units) is "no change"
quality_target = 0.0           # optional: time-to-target on the workload's primary metric
quality_reuse = true           # a variant proven the same function (exact knobs, check passed) is not re-trained
equivalence = true             # check every exact/approx-only variant against the baseline
gates = ["duplicate.forward_calls_per_step == 2"]

[baseline]                     # knobs shared by every variant
preset = "cpu"

[variants.duplicate]           # each variant: the knobs it changes
duplicate_forward = true
```
"""

from __future__ import annotations

import itertools
import json
import math
import os
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.knobs import GENERIC_BY_NAME, global_batch
from harness.results import EXPERIMENT_FILE

# harness.config and harness.registry (torch, the workload packages) are imported inside the functions
# that resolve configs, so that analysis and report can load a saved experiment without them.
if TYPE_CHECKING:
    from harness.config import RunConfig

_TOP_KEYS = {"workload", "description", "baseline_name", "repeats", "timeout_s", "quality_epochs",
             "quality_target", "quality_seeds", "quality_margin", "quality_reuse", "equivalence", "gates",
             "baseline", "variants", "name", "target_half_width_pct", "max_repeats", "budget_s", "max_reruns",
             "grid", "max_grid_points", "effective_batch"}
PRECISION_KEYS = ("target_half_width_pct", "max_repeats", "budget_s", "max_reruns")
QUALITY_KEYS = ("quality_epochs", "quality_target", "quality_seeds", "quality_margin", "quality_reuse")


@dataclass(frozen=True, kw_only=True, slots=True)
class ExperimentFields:
    """What an experiment is, runnable (`Experiment`) or as saved beside its records (`SavedExperiment`)."""

    name: str
    workload: str
    """Registered name or ``module:object`` path."""
    description: str = ""
    baseline_name: str = "baseline"
    overrides: Mapping[str, Mapping[str, Any]]
    """Variant name -> the knobs it sets on top of the baseline (empty for the baseline); the
    baseline section's own knobs are kept under the key ``__baseline__``."""
    repeats: int = 3
    """Speed runs per variant (0 only for a quality-only experiment, e.g. `trainbench run ... epochs=N`)."""
    timeout_s: float = 600.0
    quality_epochs: int = 0
    quality_target: float | None = None
    quality_seeds: int = 1
    """Quality runs per variant: seed knob + 0, 1, ... (init and data order; the data itself fixed), the same seeds
    for every variant, so each variant's change is paired with the baseline's by seed."""
    quality_margin: float | None = None
    """A quality change decided inside +-this (the primary metric's units) is "no change"; None: 2% of the
    baseline's value (`decision.QUALITY_MARGIN`)."""
    quality_reuse: bool = True
    """A variant that changes only exact knobs and passed its equivalence check computes the baseline's function:
    its quality runs are not launched, its records are the baseline's of the same seed, marked `reused_from`
    (`harness.runner`). False trains it anyway: to test by training that the same function reaches the same
    quality (a gate on its quality delta needs this)."""
    equivalence: bool = True
    gates: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True, kw_only=True, slots=True)
class Experiment(ExperimentFields):
    """A validated experiment: every variant's config is resolved before anything runs."""

    configs: Mapping[str, RunConfig]
    """Variant name -> config, baseline first, in file order."""
    target_half_width_pct: float = 3.0
    """Keep adding interleaved repeats of a variant until its speedup's 95% interval is at most this
    wide on each side, in percent of the ratio (0: run exactly `repeats`)."""
    max_repeats: int = 10
    """Never more speed repeats of a variant than this."""
    budget_s: float = 300.0
    """Wall-clock seconds the added repeats and contention re-runs may take, after the planned runs."""
    max_reruns: int = 6
    """Speed runs judged contended are run again (attempt 1, 2, ...) at most this many times in all."""

    def __post_init__(self) -> None:
        for key, low in (("target_half_width_pct", 0.0), ("budget_s", 0.0)):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and value >= low and value == value):
                raise ValueError(f"experiment '{self.name}': {key}={value!r}; use a number >= {low:g}")
        if self.max_reruns < 0:
            raise ValueError(f"experiment '{self.name}': max_reruns={self.max_reruns}; use 0 or more")
        if self.max_repeats < self.repeats:
            raise ValueError(f"experiment '{self.name}': max_repeats={self.max_repeats} is below "
                             f"repeats={self.repeats}; use max_repeats >= repeats")
        if self.repeats < 1 and not (self.repeats == 0 and self.quality_epochs > 0):
            raise ValueError(f"experiment '{self.name}': repeats={self.repeats}; use 1 or more")
        if self.timeout_s <= 0:
            raise ValueError(f"experiment '{self.name}': timeout_s={self.timeout_s}; use a positive number")
        if self.quality_epochs < 0:
            raise ValueError(f"experiment '{self.name}': quality_epochs={self.quality_epochs}; use 0 or more")
        if self.quality_seeds < 1:
            raise ValueError(f"experiment '{self.name}': quality_seeds={self.quality_seeds}; use 1 or more (3 or "
                             "more give the quality change an interval)")
        if self.quality_margin is not None and not (self.quality_margin >= 0 and math.isfinite(self.quality_margin)):
            raise ValueError(f"experiment '{self.name}': quality_margin={self.quality_margin}; use a number >= 0 in "
                             "the primary metric's units, e.g. quality_margin = 0.01")

    @property
    def variants(self) -> list[str]:
        """Variant names, baseline first."""
        return list(self.configs)

    def changed_knobs(self, variant: str) -> dict[str, tuple[Any, Any]]:
        """Knobs where the variant differs from the baseline: name -> (baseline, variant)."""
        return self.configs[self.baseline_name].diff(self.configs[variant])

    def with_overrides(self, overrides: Mapping[str, Any]) -> Experiment:
        """The same experiment with knobs forced on every variant (command-line `key=value`)."""
        return build(self.name, self.workload, self.baseline_overrides | dict(overrides),
                     {v: o for v, o in self.overrides.items() if v not in (self.baseline_name, "__baseline__")},
                     description=self.description, baseline_name=self.baseline_name, repeats=self.repeats,
                     timeout_s=self.timeout_s, equivalence=self.equivalence, gates=self.gates,
                     source=self.source, forced=overrides, **self.quality_settings, **self.precision)

    @property
    def quality_settings(self) -> dict[str, Any]:
        """The quality runs' settings (epochs, target, seeds, margin)."""
        return {k: getattr(self, k) for k in QUALITY_KEYS}

    @property
    def precision(self) -> dict[str, Any]:
        """The adaptive-repeat settings (target half-width, max repeats, budget, re-runs)."""
        return {k: getattr(self, k) for k in PRECISION_KEYS}

    @property
    def baseline_overrides(self) -> dict[str, Any]:
        """The knobs the baseline section sets."""
        return dict(self.overrides.get("__baseline__", {}))


def build(name: str, workload: str, baseline: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]],
          *, baseline_name: str = "baseline", forced: Mapping[str, Any] | None = None, allow_same: bool = False,
          **kw: Any) -> Experiment:
    """Resolve every variant; ValueError for a variant that changes nothing or clashes in name.

    `allow_same` admits a variant identical to the baseline: the A/A noise-floor measurement.
    """
    from harness import registry
    from harness.config import resolve

    wl = registry.get(workload)
    forced = dict(forced or {})
    base_cfg = resolve(wl, baseline, forced, name=workload)
    configs: dict[str, RunConfig] = {baseline_name: base_cfg}
    overrides: dict[str, Mapping[str, Any]] = {baseline_name: {}, "__baseline__": dict(baseline)}
    for vname, vover in variants.items():
        if vname in configs:
            raise ValueError(f"variant name '{vname}' is used twice (the baseline is called '{baseline_name}'); "
                             "rename one")
        if not isinstance(vover, Mapping) or not vover:
            raise ValueError(f"variant '{vname}' overrides nothing; give it at least one knob, e.g. "
                             f"[variants.{vname}] amp = \"bf16\"")
        cfg = resolve(wl, baseline, vover, forced, name=workload)
        if not base_cfg.diff(cfg) and "=" in vname:
            continue  # the grid point the baseline already is
        if not base_cfg.diff(cfg) and not allow_same:
            raise ValueError(f"variant '{vname}' overrides nothing: every knob it sets equals the baseline's "
                             f"({', '.join(f'{k}={v}' for k, v in vover.items())}); change a value or drop it")
        configs[vname] = cfg
        overrides[vname] = dict(vover)
    return Experiment(name=name, workload=workload, baseline_name=baseline_name, configs=configs,
                      overrides=overrides, description=kw.pop("description", ""), **kw)


MAX_GRID_POINTS = 24
"""A grid of more points is refused unless the experiment raises `max_grid_points`: each point is a variant
with its repeats, so a grid's cost is its size times a variant's."""


def point_name(point: Mapping[str, Any]) -> str:
    """A grid point's variant name, e.g. ``batch_size=8,amp=bf16``."""
    return ",".join(f"{k}={v}" for k, v in point.items())


def expand_grid(grid: Mapping[str, Any], max_points: int = MAX_GRID_POINTS,
                where: str = "grid") -> list[dict[str, Any]]:
    """Every combination of the grid's values, first knob slowest: ``{"a": [1, 2], "b": ["x", "y"]}`` ->
    a=1,b=x; a=1,b=y; a=2,b=x; a=2,b=y. ValueError (one line) for an empty grid, a knob without values,
    or more points than `max_points` (saying how many)."""
    if not isinstance(grid, Mapping) or not grid:
        raise ValueError(f"{where} is empty; give each swept knob a list, e.g. batch_size = [8, 16, 32]")
    sizes = []
    for knob, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ValueError(f"{where}: '{knob}' has no values ({values!r}); give a list, e.g. {knob} = [8, 16, 32]")
        if len(set(map(repr, values))) != len(values):
            raise ValueError(f"{where}: '{knob}' lists a value twice ({values!r}); list each value once")
        sizes.append(len(values))
    total = math.prod(sizes)
    if total > max_points:
        raise ValueError(f"{where}: {' x '.join(map(str, sizes))} = {total} points exceeds the maximum of "
                         f"{max_points}; shorten a list or raise max_grid_points")
    return [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]


def effective_batch_points(effective: Any, largest: int | None = None, where: str = "effective_batch"
                           ) -> list[dict[str, int]]:
    """Every batch_size x grad_accum whose product is `effective`, the largest micro-batch first (a micro-batch
    above `largest`, e.g. what fits in memory, left out). They compute the same gradient (the trainer divides
    every micro-batch's summed loss by the whole step's element count), so only their speed and memory differ."""
    if isinstance(effective, bool) or not isinstance(effective, int) or effective < 1:
        raise ValueError(f"{where}={effective!r}: give the effective batch (batch_size x grad_accum) as a positive "
                         "integer, e.g. effective_batch = 32")
    sizes = [b for b in range(effective, 0, -1) if effective % b == 0 and (largest is None or b <= largest)]
    if not sizes:
        raise ValueError(f"{where}={effective}: no micro-batch of at most {largest} divides it; raise the memory "
                         "budget or choose an effective batch with a small divisor")
    return [{"batch_size": b, "grad_accum": effective // b} for b in sizes]


def effective_name(point: Mapping[str, Any]) -> str:
    """``b16x2`` for batch_size 16 x grad_accum 2 (a name gates can address: it starts with a letter)."""
    return f"b{point['batch_size']}x{point['grad_accum']}"


def effective_batch_variants(effective: Any, baseline: Mapping[str, Any], largest: int | None = None,
                             where: str = "effective_batch") -> tuple[dict[str, Any], str, dict[str, dict[str, int]]]:
    """(baseline knobs, baseline name, variants) of an effective-batch ranking: the baseline is the pair the
    baseline section sets when its product is `effective` (your current setup), else the largest micro-batch."""
    points = effective_batch_points(effective, largest, where)
    mine = {"batch_size": int(baseline.get("batch_size", 0)), "grad_accum": int(baseline.get("grad_accum", 1))}
    if "batch_size" in baseline and mine["batch_size"] * mine["grad_accum"] != effective:
        raise ValueError(f"{where}={effective}: the baseline's batch_size x grad_accum = {mine['batch_size']} x "
                         f"{mine['grad_accum']} is not {effective}; drop them or set a pair whose product is "
                         f"{effective}")
    base = mine if mine in points else points[0]  # yours, unless its micro-batch does not fit
    variants = {effective_name(p): p for p in points if p != base}
    return {**baseline, **base}, effective_name(base), variants


def load_experiments(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> list[Experiment]:
    """Every experiment of a TOML file: one, or one per ``[experiments.<name>]`` table (several workloads in one
    file, e.g. the same ddp question for two models). Keys at the top level are shared defaults that each
    table's keys override; each experiment is called ``<file stem>-<name>``."""
    from harness.config import load_toml

    data = load_toml(path)
    if "experiments" not in data:
        return [load_experiment(path, overrides)]
    where = Path(path).name
    tables = data["experiments"]
    if not isinstance(tables, Mapping) or not tables or not all(isinstance(t, Mapping) for t in tables.values()):
        raise ValueError(f"{where}: 'experiments' must hold tables, e.g. [experiments.lm] workload = \"lm\"")
    shared = {k: v for k, v in data.items() if k != "experiments"}
    return [_from_data({**shared, "name": f"{Path(path).stem}-{name}", **table}, path, overrides)
            for name, table in tables.items()]


def load_experiment(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Parse and validate an experiment TOML file (plus command-line overrides for every variant)."""
    from harness.config import load_toml

    data = load_toml(path)
    if "experiments" in data:
        raise ValueError(f"{Path(path).name} holds several experiments ([experiments.*]); load it with "
                         "load_experiments")
    return _from_data(data, path, overrides)


def _variants_of(data: Mapping[str, Any], where: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(baseline, baseline name, variants): the named variants, the [grid]'s points and an effective_batch's
    splits."""
    variants = data.get("variants", {})
    if not isinstance(variants, Mapping):
        raise ValueError(f"{where}: 'variants' must be tables, e.g. [variants.fast] amp = \"bf16\"")
    variants = dict(variants)
    if "grid" in data:
        max_points = data.get("max_grid_points", MAX_GRID_POINTS)
        if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
            raise ValueError(f"{where}: 'max_grid_points' must be a positive integer, got {max_points!r}")
        for point in expand_grid(data["grid"], max_points, where=f"{where}: [grid]"):
            name = point_name(point)
            if name in variants:
                raise ValueError(f"{where}: grid point '{name}' is also a named variant; drop one")
            variants[name] = point
    baseline = data.get("baseline", {})
    baseline_name = str(data.get("baseline_name", "baseline"))
    if "effective_batch" in data:
        baseline, base_name, points = effective_batch_variants(data["effective_batch"], baseline,
                                                               where=f"{where}: effective_batch")
        baseline_name = str(data.get("baseline_name", base_name))
        variants.update(points)
    return baseline, baseline_name, variants


def _number(data: Mapping[str, Any], key: str, kind: type, where: str, example: Any = None) -> Any:
    """`data[key]` checked to be a number (an integer for `kind` int), as `kind`; None when absent."""
    raw = data.get(key)
    if raw is None:
        return None
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or (kind is int and raw != int(raw)):
        eg = f"; e.g. {key} = {example}" if example is not None else ""
        raise ValueError(f"{where}: '{key}' must be {'an integer' if kind is int else 'a number'}, got {raw!r}{eg}")
    return kind(raw)


def _from_data(data: Mapping[str, Any], path: str | os.PathLike[str],
               overrides: Mapping[str, Any] | None) -> Experiment:
    where = Path(path).name
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown top-level key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    if "workload" not in data:
        raise ValueError(f"{where}: missing 'workload = \"...\"' (e.g. workload = \"lm\")")
    baseline, baseline_name, variants = _variants_of(data, where)
    gates = data.get("gates", [])
    if not isinstance(gates, list) or not all(isinstance(g, str) for g in gates):
        raise ValueError(f"{where}: 'gates' must be a list of strings, e.g. gates = [\"fast.speedup >= 1.5\"]")
    precision = {key: value for key, kind in (("target_half_width_pct", float), ("max_repeats", int),
                                              ("budget_s", float), ("max_reruns", int))
                 if (value := _number(data, key, kind, where, Experiment.__dataclass_fields__[key].default))
                 is not None}
    repeats, timeout_s, quality_epochs, seeds, margin = (
        _number(data, k, kind, where) for k, kind in (("repeats", int), ("timeout_s", float), ("quality_epochs", int),
                                                      ("quality_seeds", int), ("quality_margin", float)))
    if data.get("quality_target") is not None and (isinstance(data["quality_target"], bool) or
                                                   not isinstance(data["quality_target"], (int, float))):
        raise ValueError(f"{where}: 'quality_target' must be a number (the primary metric's target), "
                         f"got {data['quality_target']!r}")
    target = data.get("quality_target")
    for key in ("equivalence", "quality_reuse"):
        if key in data and not isinstance(data[key], bool):
            raise ValueError(f"{where}: '{key}' must be true or false, got {data[key]!r}")
    try:
        return build(
            str(data.get("name", Path(path).stem)), str(data["workload"]), baseline, variants,
            baseline_name=baseline_name, forced=overrides,
            description=str(data.get("description", "")), repeats=3 if repeats is None else repeats,
            timeout_s=600.0 if timeout_s is None else timeout_s,
            quality_epochs=0 if quality_epochs is None else quality_epochs,
            quality_target=None if target is None else float(target),
            quality_seeds=1 if seeds is None else seeds, quality_margin=margin,
            quality_reuse=bool(data.get("quality_reuse", True)), equivalence=bool(data.get("equivalence", True)),
            gates=tuple(gates), source=str(path), **precision)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None


BATCH_SPLIT_KNOBS = ("batch_size", "grad_accum", "ddp", "nnodes")
"""How the global batch is split: a change of these at an equal global batch (batch_size x grad_accum x ddp x
nnodes) is exact; otherwise it changes training (quality)."""


def knob_kinds(exp: Experiment, variant: str) -> set[str]:
    """Kinds of the knobs a variant changes; micro-batch x accumulation x ranks at equal global batch is exact."""
    from harness.config import all_knobs

    changed = exp.changed_knobs(variant)
    knobs = all_knobs(exp.configs[variant].get_workload())
    base, var = exp.configs[exp.baseline_name], exp.configs[variant]
    kinds = set()
    for name in changed:
        if name in BATCH_SPLIT_KNOBS:
            kinds.add("exact" if global_batch(base.values) == global_batch(var.values) else "quality")
        else:
            kinds.add(knobs.get(name, GENERIC_BY_NAME.get(name)).kind)
    return kinds


@dataclass(frozen=True, kw_only=True, slots=True)
class SavedExperiment(ExperimentFields):
    """An experiment as saved beside its records: plain data, readable without the workload's code."""

    configs: Mapping[str, Mapping[str, Any]]
    """Variant name -> resolved config as a plain dict (`RunConfig.to_dict`), baseline first."""
    precision: Mapping[str, Any] = field(default_factory=dict)
    """`Experiment.precision` (absent in directories written before it existed)."""

    @property
    def variants(self) -> list[str]:
        """Variant names, baseline first."""
        return list(self.configs)


def save_experiment(exp: Experiment, out_dir: str | os.PathLike[str]) -> None:
    """Keep what was run beside the records: `experiment.json`, and `workload.json` for analysis."""
    from harness.description import describe, save_description

    out = Path(out_dir)
    # the saved form is SavedExperiment's fields, read off the experiment (one field list, not two)
    data = {f.name: getattr(exp, f.name) for f in fields(SavedExperiment)}
    data.update(gates=list(exp.gates), overrides={k: dict(v) for k, v in exp.overrides.items()},
                configs={k: c.to_dict() for k, c in exp.configs.items()})
    (out / EXPERIMENT_FILE).write_text(json.dumps(data, indent=2, default=str))
    save_description(describe(exp.configs[exp.baseline_name].get_workload(), exp.configs), out)


def load_saved_experiment(out_dir: str | os.PathLike[str]) -> SavedExperiment | None:
    """The experiment a results directory was produced by (None if it has no experiment.json)."""
    path = Path(out_dir) / EXPERIMENT_FILE
    if not path.exists():
        return None
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"'{path}' is not valid JSON ({exc.msg}, line {exc.lineno}); restore it or re-run "
                         "the sweep") from None
    required = [f.name for f in fields(SavedExperiment) if f.default is MISSING and f.default_factory is MISSING]
    try:
        missing = [k for k in required if k not in d]
        if missing:
            raise KeyError(", ".join(missing))
        known = {f.name: d[f.name] for f in fields(SavedExperiment) if f.name in d}
        return SavedExperiment(**{**known, "overrides": {k: dict(v) for k, v in d["overrides"].items()},
                                  "configs": {k: dict(v) for k, v in d["configs"].items()},
                                  "gates": tuple(d.get("gates", ())), "precision": dict(d.get("precision") or {})})
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"'{path}' is not a saved experiment (bad or missing {exc}); re-run the sweep") from None


def resolve_saved(saved: SavedExperiment) -> Experiment:
    """Re-resolve a saved experiment into a runnable `Experiment` (needs its workload importable)."""
    variants = {k: v for k, v in saved.overrides.items() if k not in (saved.baseline_name, "__baseline__")}
    return build(saved.name, saved.workload, saved.overrides.get("__baseline__", {}), variants,
                 baseline_name=saved.baseline_name, description=saved.description, repeats=saved.repeats,
                 timeout_s=saved.timeout_s, quality_epochs=saved.quality_epochs,
                 quality_target=saved.quality_target, quality_seeds=saved.quality_seeds,
                 quality_margin=saved.quality_margin, quality_reuse=saved.quality_reuse,
                 equivalence=saved.equivalence, gates=saved.gates,
                 source=saved.source, allow_same=True,  # it ran once, A/A variants included
                 **{k: v for k, v in saved.precision.items() if k in PRECISION_KEYS})
