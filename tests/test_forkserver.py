"""The fork server's protocol beyond jobs: modules imported once before quality runs, and the runner asking for
them when (and only when) the quality runs begin."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.experiment import build
from harness.jobs import Job, Outcome
from harness.launch import ForkServer, Launcher
from harness.registry import get, resolve
from harness.runner import run_experiment
from tests.conftest import TOY

ROOT = Path(__file__).resolve().parents[1]


def _maps(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the server's memory map from /proc")
def test_fork_server_imports_more_modules_on_request_and_still_serves_jobs(tmp_path: Path) -> None:
    server = ForkServer([], ROOT)
    try:
        pid = server.server.pid
        assert "_sqlite3" not in _maps(pid)  # a module with its own shared library: visible in the map once loaded
        server.import_modules(["sqlite3", "no_such_module_anywhere"])  # a module that fails is left to the child
        assert "_sqlite3" in _maps(pid)
        job = Job(experiment="e", variant="a", phase="speed", repeat=0, timeout_s=120,
                  config=resolve(TOY, {"bench_warmup_steps": 1, "bench_steps": 2}).to_dict())
        out = server.launch(job, tmp_path)
        assert out.result is not None and out.result["status"] == "ok", out.stderr_tail
    finally:
        server.close()
    assert server.server.poll() is not None  # closing stdin ends the server


class _Recording(Launcher):
    """Answers every job at once; records the order of launches, renewals and module imports."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[str] = []

    def launch(self, job: Job, workdir: Path) -> Outcome:
        self.events.append(f"{job.phase}:{job.variant}")
        result = {"status": "ok", "env": {"hostname": "h", "cpu_model": "c"},
                  "metrics": {"samples_per_s": 100.0, "train_wall_s": 1.0, "measured_steps": 10},
                  "quality": {"score": 1.0}, "contention": {}, "equivalence": {"passed": True, "reason": "x"}}
        return Outcome(result, 0, "", False, 0.01)

    def renew(self) -> None:
        self.events.append("renew")

    def import_modules(self, modules) -> None:
        self.events.append("import:" + ",".join(modules))


def test_quality_runs_get_the_workloads_eval_imports_once_and_speed_rounds_a_server_without(
        tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(type(get(TOY)), "eval_imports", ("json",))
    exp = build("e", TOY, {}, {"b": {"sleep_ms": 1.0}}, repeats=2, equivalence=False, quality_epochs=1,
                max_repeats=2)
    launcher = _Recording()
    run_experiment(exp, tmp_path / "r", launcher=launcher)
    ev = launcher.events
    # round 1 on the server as started, round 2 renewed; then one import before the first quality run
    assert ev[:6] == ["speed:baseline", "speed:b", "renew", "speed:b", "speed:baseline", "import:json"]
    assert ev.count("import:json") == 1 and all(e.startswith("quality:") for e in ev[6:])


def test_a_server_started_without_waiting_serves_its_first_job_once_ready(tmp_path: Path) -> None:
    """The sweep starts the next experiment's server while it writes a report: the first job waits for the imports;
    a server that cannot start leaves plain processes (`usable`)."""
    from harness.launch import usable

    server = ForkServer([], ROOT, wait=False)
    try:
        job = Job(experiment="e", variant="a", phase="speed", repeat=0, timeout_s=120,
                  config=resolve(TOY, {"bench_warmup_steps": 1, "bench_steps": 2}).to_dict())
        out = usable(server).launch(job, tmp_path)
        assert out.result is not None and out.result["status"] == "ok", out.stderr_tail
    finally:
        server.close()
    broken = ForkServer(["no_such_module_anywhere"], ROOT, wait=False)  # its import fails: the server exits
    fallback = usable(broken)
    assert type(fallback) is Launcher
