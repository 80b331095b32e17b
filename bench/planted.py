"""A planted regression of known size, as a workload: the tiny LM plus `extra_ms` of CPU work per forward.

Used by `bench/measure_precision.py` (as ``bench.planted:WORKLOAD`` with `bench/` on the path, or
``planted:WORKLOAD`` from inside it) to measure what the sweep path resolves: a variant with
`extra_ms` set to 10% of a step is a 10% slowdown whose size is known in advance. The work is a
busy loop on this process's CPU clock, so it costs CPU like real compute and shows on both clocks.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from harness.knobs import Knob
from harness.loads import burn_cpu_s
from models.lm import LMWorkload

if TYPE_CHECKING:
    from harness.config import RunConfig


def burn_cpu_ms(ms: float) -> None:
    """Spin for `ms` milliseconds of this process's CPU time (`harness.loads.burn_cpu_s`)."""
    burn_cpu_s(ms / 1e3)


class PlantedLM(LMWorkload):
    """The LM with a known amount of extra CPU work per forward."""

    name = "planted_lm"
    description = "the LM workload plus extra_ms of CPU work per forward (a planted slowdown of known size)"
    knobs = (*LMWorkload.knobs,
             Knob(name="extra_ms", type=float, default=0.0, kind="exact", min=0.0,
                  doc="CPU milliseconds burned after every forward (the planted slowdown)"))

    def forward(self, model: Any, batch: Any, cfg: RunConfig) -> Any:
        out = super().forward(model, batch, cfg)
        if cfg.extra_ms:
            burn_cpu_ms(cfg.extra_ms)
        return out


WORKLOAD = PlantedLM()
