"""Document-image translation workload (seed 002, DIMTDA topology)."""

from models.doctrans.workload import DocTransWorkload

WORKLOAD = DocTransWorkload()

__all__ = ["WORKLOAD", "DocTransWorkload"]
