"""Transformer LM workload (seed 004)."""

from models.lm.workload import LMWorkload

WORKLOAD = LMWorkload()

__all__ = ["WORKLOAD", "LMWorkload"]
