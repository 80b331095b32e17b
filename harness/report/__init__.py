"""Reports: markdown with tables in the source notes' shapes, and matplotlib figures."""

from harness.report.markdown import write_index, write_report

__all__ = ["write_report", "write_index"]
