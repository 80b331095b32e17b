"""The one engine: what it records and the bugs of the five places that used to measure on their own.

Each test here failed on the code before the engine: env threads read before the threads were set,
forward calls that counted evaluation, a "peak" RSS that was the current one (profile) or the
process's lifetime mark (plugin), a first CPU sample of 900-2,900%, a console speedup that was a ratio
of medians while the report said a paired geometric mean; plus contention, planted and detected.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest

from harness.analysis import summarize
from harness.cli.common import plain_summary
from harness.engine import run
from harness.loads import burn_cpu_s
from harness.machine import usable_cores
from harness.probes.contention import verdict
from harness.probes.counters import peak_rss_self_gib
from harness.probes.sampler import ResourceSampler
from harness.registry import resolve
from harness.worker import run_job
from tests.conftest import TOY
from tests.fixtures.synthetic import speed_record

LM_TINY = {"preset": "tiny", "device": "cpu"}


@pytest.mark.parametrize("threads", [1, 0])
def test_env_records_the_threads_the_run_used(threads: int) -> None:
    import torch

    saved = torch.get_num_threads()
    try:
        out = run_job({"phase": "speed", "config": {"workload": TOY, "threads": threads, "bench_steps": 3}})
    finally:
        torch.set_num_threads(saved)
    assert out["status"] == "ok", out["error"]
    assert out["env"]["torch_threads"] == out["metrics"]["torch_threads"] >= 1
    if threads:
        assert out["env"]["torch_threads"] == threads and "set by the config" in out["env"]["note_threads"]
    else:  # auto: never more than half the usable cores, and the reason is recorded
        assert out["env"]["torch_threads"] <= max(1, usable_cores() // 2)
        assert "threads=0 (auto)" in out["env"]["note_threads"]


def test_forward_calls_count_training_steps_only() -> None:
    # A quality run evaluates every epoch; evaluate()'s forwards are not training micro-steps.
    result = run(resolve("lm", {**LM_TINY, "epochs": 2, "bench_warmup_steps": 1}))
    assert len(result.curve) == 2
    assert result.metrics["forward_calls_per_step"] == 1.0


def test_peak_rss_is_the_windows_not_the_processes_lifetime() -> None:
    big = np.ones(512 * 1024**2 // 8)  # 512 MiB, touched: the process's lifetime mark rises
    del big
    lifetime = peak_rss_self_gib()
    quiet = run(resolve(TOY, {"bench_steps": 3})).metrics["peak_rss_gib"]
    assert quiet < lifetime - 0.3  # the freed 512 MiB is not this window's peak
    held = run(resolve(TOY, {"bench_steps": 3, "bench_warmup_steps": 1, "alloc_mib": 256})).metrics
    # the toy allocates 256 MiB on its first forward (warmup, before the window) and holds it: resident
    # through the window, so the window's peak includes it
    assert held["peak_rss_gib"] >= quiet + 0.2


def test_profile_reports_the_window_peak(tmp_path) -> None:
    from harness.profiler import profile

    text = profile(resolve(TOY, {}), tmp_path, steps=2)
    assert "forward calls per micro-step: 1" in text and (tmp_path / "trace.json").exists()


def test_first_cpu_sample_is_not_a_spike() -> None:
    sampler = ResourceSampler(None, interval_s=0.05, children=False)
    sampler.start()
    burn_cpu_s(0.4)
    sampler.stop()
    cpu = sampler.series["cpu_util_pct"]
    assert len(cpu) >= 3 and max(cpu) <= 100.0 * usable_cores() * 1.2, cpu


def test_console_speedup_is_the_reports_paired_estimate() -> None:
    # Paired ratios 2.0, 1.0, 4.0 (geometric mean 2.0); the ratio of medians is 60 / 20 = 3.0.
    base = [speed_record("base", r, samples_per_s=s) for r, s in enumerate((10.0, 20.0, 15.0))]
    fast = [speed_record("fast", r, samples_per_s=s) for r, s in enumerate((20.0, 20.0, 60.0))]
    summary = summarize(base + fast, "base")
    assert summary.at["fast", "speedup"] == pytest.approx(2.0)
    line = next(x for x in plain_summary(base + fast, "base").splitlines() if x.startswith("| fast"))
    assert "x2 [" in line and "3.00x" not in line


@pytest.mark.slow
def test_planted_oversubscription_is_detected_and_named() -> None:
    cores = usable_cores()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores)]
    try:
        time.sleep(0.3)
        result = run(resolve("lm", {**LM_TINY, "threads": cores, "bench_steps": 40}))
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()
    reason = result.contention["verdict"]
    assert reason and "other processes kept" in reason, result.contention
    assert result.contention["other_cpu_cores"] > 0.5


def test_verdict_on_known_evidence() -> None:
    calm = {"usable_cores": 2, "own_cpu_cores": 1.0, "other_cpu_cores": 0.9, "demand_cores": 1,
            "involuntary_switches_per_s": 5.0, "steal_pct": 0.0, "waited_pct": 1.0}
    assert verdict(calm) == ""
    assert verdict({**calm, "waited_pct": 30.0}) == ""  # a sleep or I/O: not preempted
    assert "waited 30%" in verdict({**calm, "waited_pct": 30.0, "involuntary_switches_per_s": 90.0})
    assert "other processes kept 1.80 cores" in verdict({**calm, "other_cpu_cores": 1.8})
    assert "stolen" in verdict({**calm, "steal_pct": 12.0})
