"""trainbench from Python: `run` and `sweep` do what the CLI commands do and return the summary table.

    import trainbench
    df = trainbench.run("mymodels:WORKLOAD", repeats=3, batch_size=16)
    df = trainbench.sweep("mymodels:WORKLOAD", {"big_batch": {"batch_size": 64}}, gates=["big_batch.equivalent"])

A workload is a registered name, a ``module:object`` or ``script.py:object`` path, or the `Workload`
object itself, found again by each run's fresh process: by its module, or by the script that defines it
and calls `run`/`sweep` under ``if __name__ == "__main__":``. A notebook's workload has no file to
import: move it into a module. Each returns the DataFrame of
`harness.analysis.summarize` (one row per variant: throughput, speedup and its interval, equivalence,
quality, contention) with the results directory in ``df.attrs["out"]`` and, where gates were given,
their `GateResult`s in ``df.attrs["gates"]``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from harness.workload import Workload

if TYPE_CHECKING:
    import pandas as pd


def workload_path(workload: str | Workload) -> str:
    """The name a child process finds `workload` by: as given for a string, else ``module:object``."""
    if isinstance(workload, str):
        return workload
    from harness import registry

    if registry.builtin().get(workload.name) is workload:
        return workload.name
    for module_name, module in list(sys.modules.items()):
        if module_name == "__main__" or module is None or module_name.startswith("trainbench_script_"):
            continue
        for attr, value in list(vars(module).items()):
            if value is workload:
                return f"{module_name}:{attr}"
    main = sys.modules.get("__main__")
    attr = next((a for a, v in list(vars(main).items()) if v is workload), None) if main is not None else None
    if attr is not None and getattr(main, "__file__", None):
        # a script: each run's process imports the file itself (its `if __name__ == "__main__":` block stays idle)
        file, here = Path(main.__file__).resolve(), Path.cwd().resolve()
        # runs start in this directory: a script inside it is recorded by its relative path, no machine path
        return f"{file.relative_to(here) if file.is_relative_to(here) else file}:{attr}"
    if attr is not None:
        raise ValueError(f"workload '{workload.name}' is defined in a notebook or an interactive session, which a "
                         "run's fresh process cannot import; move it into a module file (e.g. mymodels.py beside "
                         "the notebook), import it from there and pass the object")
    raise ValueError(f"workload '{workload.name}' is not an attribute of any importable module (made inside a "
                     "function?); assign it at the top level of a module file and pass the object or 'module:NAME'")


def _refuse_nested() -> None:
    from harness.registry import importing_script

    if importing_script():
        raise ValueError("trainbench.run/sweep called while a workload script is being imported by a run's "
                         "process; put the call under `if __name__ == \"__main__\":` in the script")


def _out(out: str | Path | None, label: str) -> Path:
    from harness.results import folder_name

    return Path(out) if out else Path("runs") / f"{folder_name(label)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _summary(out: Path, baseline: str, gates: Sequence[str] = ()) -> pd.DataFrame:
    from harness.analysis import summarize
    from harness.description import load_description
    from harness.results import load_records

    df = summarize(load_records(out), baseline, workload=load_description(out))
    df.attrs["out"] = str(out)
    if gates:
        from harness.analysis.gates import check, known_metrics_for

        df.attrs["gates"] = check(gates, df, baseline, known_metrics_for(load_description(out)))
    return df


def run(workload: str | Workload, *, repeats: int = 3, out: str | Path | None = None, **knobs: Any) -> pd.DataFrame:
    """Profile one config as `trainbench run` does: `repeats` fresh processes; the summary's one row."""
    from harness.experiment import build
    from harness.runner import run_experiment

    _refuse_nested()
    path = workload_path(workload)
    exp = build("run", path, knobs, {}, baseline_name="run", repeats=repeats, equivalence=False,
                max_repeats=max(repeats, 10), target_half_width_pct=0.0)
    target = _out(out, path)
    run_experiment(exp, target)
    return _summary(target, "run")


def sweep(workload: str | Workload, variants: Mapping[str, Mapping[str, Any]], *,
          baseline: Mapping[str, Any] | None = None, baseline_name: str = "baseline", repeats: int = 3,
          gates: Sequence[str] = (), equivalence: bool = True, quality_epochs: int = 0,
          out: str | Path | None = None, report: str | Path | None = None, **precision: Any) -> pd.DataFrame:
    """Run an experiment as `trainbench sweep FILE` does (equivalence checks, interleaved repeats until the
    target half-width, quality runs, gates); `report` also writes the markdown report there."""
    from harness.experiment import build
    from harness.runner import run_experiment

    _refuse_nested()
    path = workload_path(workload)
    exp = build("sweep", path, dict(baseline or {}), variants, baseline_name=baseline_name, repeats=repeats,
                equivalence=equivalence, quality_epochs=quality_epochs, gates=tuple(gates), **precision)
    if exp.gates:
        from harness.analysis.gates import known_metrics_for, validate

        validate(exp.gates, exp.variants, known_metrics_for(exp.configs[exp.baseline_name].get_workload()))
    target = _out(out, path)
    run_experiment(exp, target)
    if report is not None:
        from harness.report import write_report

        write_report(target, Path(report))
    return _summary(target, baseline_name, gates)
