"""The instrument against known loads: a sleep, an allocation, a known FLOP count, no GPU."""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from harness.engine import run
from harness.experiment import build
from harness.probes.counters import ForwardCounter, count_flops
from harness.probes.sampler import ResourceSampler
from harness.probes.timers import PhaseClock
from harness.registry import resolve
from harness.results import load_records
from harness.runner import run_experiment
from tests import toy
from tests.conftest import TOY


def test_phase_clock_measures_a_known_sleep_within_1_percent() -> None:
    toy.TRUE_SLEEPS_S.clear()
    cfg = resolve(TOY, {"sleep_ms": 100, "bench_warmup_steps": 1, "bench_steps": 6})
    result = run(cfg)
    truth_ms = [s * 1e3 for s in toy.TRUE_SLEEPS_S[1:]]  # the first call belongs to the warmup step
    assert len(truth_ms) == 6
    forward_ms = result.phase_ms["forward"]
    assert abs(forward_ms - statistics.fmean(truth_ms)) / statistics.fmean(truth_ms) < 0.01
    # The whole step contains the sleep and little else.
    assert result.metrics["step_ms_median"] >= min(truth_ms)
    assert abs(sum(result.phase_ms.values()) - result.metrics["step_ms_mean"]) < 1e-6 * 1e3


def test_step_times_add_up_to_the_window() -> None:
    cfg = resolve(TOY, {"sleep_ms": 10, "bench_warmup_steps": 1, "bench_steps": 10})
    result = run(cfg)
    window_ms = result.metrics["train_wall_s"] * 1e3
    assert abs(sum(result.step_ms) - window_ms) / window_ms < 0.05
    assert result.metrics["steps_per_s"] == 10 / result.metrics["train_wall_s"]


def test_phase_clock_charges_segments_to_phases() -> None:
    clock = PhaseClock(torch.device("cpu"))
    clock.start_step()
    time.sleep(0.02)
    clock.mark("data")
    time.sleep(0.01)
    clock.mark("forward")
    clock.end_step()
    clock.start_step()
    clock.end_step(keep=False)  # a warmup step is not kept
    step_ms, phases = clock.resolve()
    assert len(step_ms) == 1
    assert 19 < phases["data"][0] < 30 and 9 < phases["forward"][0] < 20
    assert abs(step_ms[0] - sum(p[0] for p in phases.values())) < 1e-6


@pytest.mark.slow
def test_peak_rss_sees_a_known_allocation_within_5_percent(tmp_path) -> None:
    mib = 1024
    # One intra-op thread keeps allocator arenas alike across the two processes; the lower of two
    # repeats per variant drops a run disturbed by a neighbour.
    exp = build("rss", TOY, {"bench_warmup_steps": 1, "bench_steps": 2, "threads": 1},
                {"alloc": {"alloc_mib": mib}}, repeats=2, equivalence=False, timeout_s=300,
                target_half_width_pct=0.0)
    run_experiment(exp, tmp_path)
    peaks: dict[str, float] = {}
    for r in load_records(tmp_path):
        peaks[r.variant] = min(peaks.get(r.variant, float("inf")), r.metrics["peak_rss_gib"])
    grown_mib = (peaks["alloc"] - peaks["baseline"]) * 1024
    assert abs(grown_mib - mib) / mib < 0.05, grown_mib


def test_forward_counter_counts_root_calls_only() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 1))
    counter = ForwardCounter(model)
    model(torch.randn(2, 4))
    model(torch.randn(2, 4))
    assert counter.calls == 2
    counter.remove()
    model(torch.randn(2, 4))
    assert counter.calls == 2


def test_flop_counter_matches_a_known_matmul() -> None:
    batch, d_in, d_out = 32, 64, 16
    layer = torch.nn.Linear(d_in, d_out)
    x = torch.randn(batch, d_in, requires_grad=True)

    def step() -> None:
        layer(x).sum().backward()

    _, flops = count_flops(step)
    # forward 2*B*in*out; backward: grad wrt input and wrt weight, 2*B*in*out each
    assert flops == 3 * 2 * batch * d_in * d_out


@pytest.mark.parametrize("workload,knobs", [
    ("lm", {}), ("lm", {"attention": "math"}), ("gpcm", {"forward": "scan"}), ("sudoku", {}),
    ("doctrans", {"batch_size": 2, "grad_accum": 2, "grad_checkpointing": True}),
])
def test_flop_counter_equals_torchs_flop_counter_mode_on_every_workload(workload: str, knobs: dict) -> None:
    """The lean counter against torch's own `FlopCounterMode` on the same step of each workload (same seed,
    same batches): equal totals, and the attention kernels of the step seen in the same pass. The second step is
    counted, as the engine counts a step after the first (a model may build a cached constant in its first)."""
    from torch.utils.flop_counter import FlopCounterMode

    from harness.engine import Meter
    from harness.probes.counters import FlopCounter
    from harness.trainer import Trainer

    totals = []
    for lean in (True, False):
        torch.manual_seed(0)
        tr = Trainer(resolve(workload, {"preset": "tiny", **knobs}))
        meter = Meter(tr)
        tr.train_step(meter.stream, meter.clock, None)
        counter = FlopCounter() if lean else FlopCounterMode(display=False)
        with counter:
            tr.train_step(meter.stream, meter.clock, None)
        totals.append(counter.flops if lean else counter.get_total_flops())
        if lean and workload == "lm":
            # SDPA's CPU flash kernel; the math path is plain tensor ops (no SDPA kernel)
            assert counter.kernels == (set() if knobs.get("attention") == "math" else {"flash_attention_for_cpu"})
    assert totals[0] == totals[1] > 0


def test_sampler_degrades_without_gpu_and_tracks_rss() -> None:
    sampler = ResourceSampler(None, interval_s=0.01)
    sampler.start()
    held = bytearray(64 * 1024**2)
    held[::4096] = b"x" * len(held[::4096])
    time.sleep(0.1)
    sampler.stop()
    assert sampler.nvml_status.startswith("not available")
    assert sampler.series["gpu_util_pct"] == [] and sampler.energy_j is None
    assert len(sampler.series["rss_gib"]) >= 3
    assert sampler.peak_rss_gib > 0.05
    del held


@pytest.mark.slow
def test_records_carry_env_and_warnings(tmp_path) -> None:
    exp = build("env", TOY, {"pin_memory": True, "bench_warmup_steps": 1, "bench_steps": 2}, {},
                repeats=1, equivalence=False, max_reruns=0)  # one record, even if the run was contended
    run_experiment(exp, tmp_path)
    (rec,) = load_records(tmp_path)
    assert rec.status == "ok"
    for key in ("torch", "python", "cpu_model", "cpu_cores", "git_commit", "git_dirty", "time", "hostname"):
        assert key in rec.env
    assert any("pin_memory" in w for w in rec.warnings)
    assert rec.env["note_nvml"].startswith("not available")


@pytest.mark.slow
def test_peak_rss_of_a_child_ignores_its_parents_peak(tmp_path) -> None:
    # ru_maxrss survives execve: a child started by a process that once held 1.5 GiB would report
    # 1.5 GiB. The probe reads the child's own high-water mark instead.
    import subprocess
    import sys

    script = ("import numpy as np, subprocess, sys\n"
              "big = np.ones(1536 * 1024**2 // 8)\n"
              "del big\n"
              "out = subprocess.run([sys.executable, '-c', 'from harness.probes.counters import peak_rss_self_gib;"
              "print(peak_rss_self_gib())'], capture_output=True, text=True)\n"
              "print(out.stdout.strip())\n")
    child_peak = float(subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                      timeout=120).stdout.split()[-1])
    assert child_peak < 1.0, child_peak


def test_proc_stat_counts_only_the_cpus_of_the_affinity_set() -> None:
    from harness.machine import proc_stat

    hz = os.sysconf("SC_CLK_TCK")
    text = ("cpu  900 0 0 300 0 0 0 0 0 0\n"
            "cpu0 100 0 0 100 0 0 0 0 0 0\n"   # ours: 1 s busy of 2 s
            "cpu1 0 0 0 200 0 0 0 0 0 0\n"     # ours: idle
            "cpu2 800 0 0 0 0 0 0 0 0 0\n")    # outside the set (a cpuset container's neighbour): not counted
    busy, steal, total = proc_stat(text, {0, 1})
    assert busy == pytest.approx(100 / hz) and total == pytest.approx(400 / hz) and steal == 0
    busy_all, _, total_all = proc_stat(text.splitlines()[0] + "\n", {0, 1})  # no per-CPU lines: the total line
    assert busy_all == pytest.approx(900 / hz) and total_all == pytest.approx(1200 / hz)
