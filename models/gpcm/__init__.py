"""Deep-GPCM workload: DKVMN + GPCM on synthetic_OC, forward = sequential | parallel | scan."""

from models.gpcm.workload import GPCMWorkload

WORKLOAD = GPCMWorkload()

__all__ = ["WORKLOAD", "GPCMWorkload"]
