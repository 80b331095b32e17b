"""A fork server: imports torch, the harness and a workload once, then forks one fresh child per job.

Starting a Python process that imports torch costs seconds; a sweep launches a hundred. The server
does the imports once and never runs a job itself, so every child still starts as a fresh process
with no state from any earlier run; each child runs `harness.worker.main` in its own session (the
runner kills that whole process group on timeout), with stderr to the job's file.

Protocol on stdin/stdout, one line each: the runner sends ``JOB<TAB>RESULT<TAB>STDERR``; the server
answers ``pid N`` when the child starts and ``exit N CODE`` when it ends. ``import<TAB>MODULE,...`` imports more
modules into the server (what a workload's evaluation needs, before its quality runs) and answers ``ready``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback


def _child(job: str, result: str, err: str) -> int:
    os.setsid()
    fd = os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(fd, 2)
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    from harness import worker

    try:
        return worker.main(["worker", job, result])
    except BaseException:  # the worker catches run errors itself; this is a last resort
        traceback.print_exc()
        return 1


def _preload(modules: list[str]) -> None:
    """Import what the children will need; a module that fails to import is left to the child, whose record
    then carries the error."""
    for name in filter(None, modules):
        try:
            importlib.import_module(name)
        except Exception:  # noqa: BLE001 (any import error belongs to the run that needs the module)
            pass


def main(argv: list[str]) -> int:
    """Preload the modules named in argv, then serve jobs until stdin closes."""
    # torch._dynamo is what every run imports (see harness.worker): ~1 s per child when not preloaded
    for name in ["torch", "torch._dynamo", "harness.worker", "harness.engine", "harness.trainer", "harness.registry",
                 "harness.results", "harness.equivalence", *argv[1:]]:
        importlib.import_module(name)  # no torch op runs here: forking stays safe (no threads, no CUDA)
    print("ready", flush=True)
    for line in sys.stdin:
        job, result, err = (line.rstrip("\n").split("\t") + ["", ""])[:3]
        if job == "import":
            _preload(result.split(","))
            print("ready", flush=True)
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _child(job, result, err)
            finally:
                os._exit(code)
        print(f"pid {pid}", flush=True)
        _, status = os.waitpid(pid, 0)
        print(f"exit {pid} {os.waitstatus_to_exitcode(status)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
