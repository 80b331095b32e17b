"""trainbench from Python: the light path to a workload, and `run` / `sweep` returning DataFrames.

    from trainbench import SimpleWorkload, run, sweep

See `harness.simple` (a workload from a model, datasets and a loss) and `harness.api`.
"""

from harness.api import run, sweep
from harness.simple import SimpleWorkload

__all__ = ["SimpleWorkload", "run", "sweep"]
