"""What analysis needs to know about a workload, written beside the records as `workload.json`.

The runner describes the workload once per sweep (knob kinds, metric directions, the analytic cost
model of every variant), so that `harness.analysis` and `harness.report` read a results directory
alone: on another machine, without `models/` or the registry, they render the same report.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.knobs import GENERIC_KNOBS
from harness.results import WORKLOAD_FILE

if TYPE_CHECKING:
    from harness.config import RunConfig
    from harness.workload import Workload

DESCRIPTION_VERSION = 1


@dataclass(frozen=True, kw_only=True, slots=True)
class VariantCost:
    """A variant's size and analytic cost model (None where the workload declares none)."""

    parameter_count: int | None = None
    flops_per_token: float | None = None
    """Analytic training FLOPs per token (`Workload.flops_per_token`)."""
    cost_components: Mapping[str, float] = field(default_factory=dict)
    """Named size components (e.g. embedding params, layers) for the predicted-cost table."""


@dataclass(frozen=True, kw_only=True, slots=True)
class WorkloadDescription:
    """A workload as analysis sees it: plain data, no model code."""

    name: str
    description: str = ""
    knob_kinds: Mapping[str, str] = field(default_factory=dict)
    """Every knob, generic and workload-specific: name -> exact | approx | quality | budget."""
    primary_metric: str | None = None
    higher_is_better: bool = True
    quality_metrics: tuple[str, ...] = ()
    """Names `evaluate` returns, primary first."""
    variants: Mapping[str, VariantCost] = field(default_factory=dict)
    """Variant name -> its parameter count and cost model."""
    version: int = DESCRIPTION_VERSION

    def knob_kind(self, name: str) -> str:
        """The kind of a knob, '?' when this workload does not know it."""
        return self.knob_kinds.get(name, "?")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> WorkloadDescription:
        """Inverse of `to_dict`; ValueError for another version."""
        version = data.get("version")
        if version != DESCRIPTION_VERSION:
            raise ValueError(f"{WORKLOAD_FILE} version {version} is not {DESCRIPTION_VERSION}; "
                             "re-run the sweep with this trainbench version")
        d = dict(data)
        d["quality_metrics"] = tuple(d.get("quality_metrics", ()))
        d["variants"] = {v: VariantCost(**c) for v, c in d.get("variants", {}).items()}
        return cls(**d)


def describe(workload: Workload, configs: Mapping[str, RunConfig]) -> WorkloadDescription:
    """Describe a workload and the variants of one experiment (configs: variant name -> config)."""
    kinds = {k.name: k.kind for k in GENERIC_KNOBS} | {k.name: k.kind for k in workload.knobs}
    variants = {}
    for name, cfg in configs.items():
        fpt = workload.flops_per_token(cfg)
        variants[name] = VariantCost(parameter_count=int(workload.parameter_count(cfg)),
                                     flops_per_token=None if fpt is None else float(fpt),
                                     cost_components={k: float(v) for k, v in workload.cost_components(cfg).items()})
    return WorkloadDescription(name=workload.name, description=workload.description, knob_kinds=kinds,
                               primary_metric=workload.primary_metric, higher_is_better=workload.higher_is_better,
                               quality_metrics=tuple(workload.quality_metrics), variants=variants)


def save_description(description: WorkloadDescription, out_dir: str | os.PathLike[str]) -> Path:
    """Write `workload.json` into a results directory; returns its path."""
    path = Path(out_dir) / WORKLOAD_FILE
    path.write_text(json.dumps(description.to_dict(), indent=2))
    return path


def load_description(results_dir: str | os.PathLike[str]) -> WorkloadDescription | None:
    """The workload description of a results directory (None if it has no `workload.json`)."""
    path = Path(results_dir) / WORKLOAD_FILE
    if not path.is_file():
        return None
    try:
        return WorkloadDescription.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"'{path}' is not a workload description ({exc}); re-run the sweep or delete it") from None
