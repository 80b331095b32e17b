"""Analysis of sweep records: per-variant summaries with paired speedups and CIs, the A/A noise floor,
gates, the advisor, predicted-vs-measured cost, and the comparison of two result directories."""

from harness.analysis import advisor, compare, cost, gates, stats
from harness.analysis.advisor import Finding, advise
from harness.analysis.gates import GateResult
from harness.analysis.summary import noise_floor, summarize

__all__ = ["summarize", "noise_floor", "advise", "Finding", "GateResult",
           "gates", "advisor", "cost", "compare", "stats"]
