"""Child-process entry point: run one job, write its result as JSON. Never raises to the parent.

``python -m harness.worker JOB.json RESULT.json``. Whatever happens inside (a crash, an OOM, a NaN
loss) becomes a status plus the error text in RESULT.json; only a hard death (segfault, SIGKILL on
timeout) leaves no result, and the runner records that from the outside.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Any


def result_fields(result: Any, caught: list[warnings.WarningMessage]) -> dict[str, Any]:
    """The record fields of an engine `TrainResult`, with the warnings raised while it ran."""
    # Warnings a workload raises (skipped data rows, an ignored knob) belong in the record.
    raised = list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught))[:20]
    return {"metrics": result.metrics, "phase_ms": result.phase_ms, "step_ms": result.step_ms,
            "step_cpu_ms": result.step_cpu_ms, "quality": result.quality, "curve": result.curve,
            "warnings": result.warnings + raised, "timeline": result.timeline, "contention": result.contention,
            "pairing": result.pairing, "notes": result.notes,
            "state": result.state, "totals": result.totals}


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """Execute a job description; returns the result fields of a `Record` (a list of them for a group)."""
    import torch
    import torch._dynamo  # noqa: F401  (imported lazily by checkpointing/compile: ~85 MiB of RSS; paid

    # here by every run so that peak memory compares variants, not who imported it first)
    from harness import distributed, engine
    from harness.config import resolve_device
    from harness.machine import unavailable_for
    from harness.registry import resolve
    from harness.results import collect_env
    from harness.trainer import NonFiniteLoss

    out: dict[str, Any] = {"status": "ok", "error": "", "env": {}, "warnings": []}
    try:
        config = job["config"]
        cfg = resolve(config["workload"], config)
        others = [*(job.get("group") or ()), *([job["base_config"]] if job.get("base_config") else [])]
        unavailable = unavailable_for([cfg, *(resolve(c["workload"], c) for c in others)])
        if unavailable:  # the machine cannot compile at all: skipped with the reason, not a crash
            out.update(status="skipped", error=unavailable, env=collect_env())
            return out
        if distributed.rank_env()[1] > 1:  # one rank under torchrun: join its process group
            distributed.init(resolve_device(cfg))
        if job["phase"] == "equivalence":
            from harness.equivalence import check_equivalence

            base = resolve(job["base_config"]["workload"], job["base_config"])
            out["env"] = collect_env()
            out["equivalence"] = check_equivalence(base, cfg)
        elif job.get("group"):
            members = [resolve(c["workload"], c) for c in job["group"]]
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                results = engine.run_group(members, rounds=job["rounds"], warmup_rounds=job["warmup_rounds"])
            out["env"] = collect_env()  # after the run: the threads the engine chose are in it
            out["members"] = [result_fields(r, caught) for r in results]
        else:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                result = engine.run(cfg)
            out["env"] = collect_env()  # after the run: the threads the engine chose are in it
            out.update(result_fields(result, caught))
        notes = (out.get("notes") or (out.get("members") or [{}])[0].get("notes") or {})
        out["env"].update({f"note_{k}": v for k, v in notes.items()})
    except NonFiniteLoss as exc:
        out.update(status="nan", error=str(exc))
    except (torch.OutOfMemoryError, MemoryError) as exc:
        out.update(status="oom", error=f"{type(exc).__name__}: {exc}"[-4000:])
    except Exception as exc:  # any failure of the run is data for the record, not a lost sweep
        out.update(status="crash", error=f"{type(exc).__name__}: {exc}\n{traceback.format_exc()[-4000:]}")
    if not out["env"]:
        try:
            out["env"] = collect_env()
        except Exception:  # the environment itself is broken: the record still says what failed
            pass
    return out


def main(argv: list[str]) -> int:
    """Read the job, run it, write the result atomically. One rank of several (under torchrun) writes its own
    files and exits with 1 when its run failed, so that torchrun stops the other ranks at once instead of
    leaving them blocked in a collective until the timeout."""
    from harness import distributed

    job_path, result_path = Path(argv[1]), Path(argv[2])
    ranks = distributed.rank_env()[1]
    if ranks > 1:
        result_path = distributed.prepare_rank(result_path)
    job = json.loads(job_path.read_text())
    start = time.perf_counter()
    result = run_job(job)
    result["wall_s"] = time.perf_counter() - start
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, allow_nan=True, default=str))
    os.replace(tmp, result_path)
    if ranks > 1:
        sys.stderr.flush()
        if result["status"] != "ok":
            os._exit(1)  # no process-group teardown: the peers may be blocked in a collective with this rank
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
