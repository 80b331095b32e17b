"""Known loads: work of a known size that the instrument is tested against and planted regressions are made of.

A load burns *CPU time*, not wall time: on a shared machine it is slowed by other jobs exactly as compute
is, so a planted 10% slowdown stays 10% of the step's CPU work however busy the host is.
"""

from __future__ import annotations

import time


def burn_cpu_s(seconds: float) -> None:
    """Spin until this process has used `seconds` more CPU time."""
    until = time.process_time() + seconds
    while time.process_time() < until:
        pass
