"""bench/gpu_check.py: the no-GPU message, the pure checks on synthetic runs, and a CPU dry run end to end."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from harness.jobs import Outcome

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "bench" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


gc = _load()


def _script(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, cwd=REPO,
                          env=env, timeout=timeout)


def _good_row(**changes) -> dict:
    """A finished CUDA run whose every value is plausible."""
    row = {"workload": "lm", "preset": "seed_large", "amp": "bf16", "status": "ok", "error": "",
           "step_ms": [10.0] * 100, "train_wall_s": 1.01, "gpu_util_pct": 93.0, "gpu_mem_used_gib": 12.5,
           "gpu_power_w": 450.0, "energy_j_per_sample": 0.2, "mfu": 0.31, "nvml_status": "ok",
           "cuda_peak_allocated_gib": 8.0, "cuda_peak_reserved_gib": 9.5,
           "peak": {"tflops": 989.0, "precision": "bf16", "entry": "H200", "source": "datasheet"}}
    row.update(changes)
    return row


def _checks(row: dict, on_cuda: bool = True) -> dict:
    return gc.check_run(row, on_cuda=on_cuda, gpu_mem_total_gib=139.8)


# --- (a) no GPU: one line, exit 0, nothing written -----------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for real")
def test_no_gpu_prints_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _script("--out", str(out), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "gpu_check: no CUDA GPU visible to torch here; nothing to check (run it on a GPU machine)"]
    assert proc.stderr == ""
    assert not out.exists()


@pytest.mark.parametrize("args", [[], ["--out", "x", "--workloads", "nope"], ["--out", "x", "--budget-s", "0"]])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    proc = _script(*args, timeout=120)
    assert proc.returncode == 2
    assert "error:" in proc.stderr


# --- (b) the pure parts ------------------------------------------------------------------------------------

def test_clock_agreement_pass_fail_and_empty() -> None:
    rel, check = gc.clock_agreement([10.0] * 100, 1.01)  # 1.000 s of events vs a 1.010 s window
    assert check.verdict == "PASS" and rel == pytest.approx(-0.0099, abs=1e-4)
    rel, check = gc.clock_agreement([10.0] * 100, 1.05)  # -4.8%
    assert check.verdict == "FAIL" and rel == pytest.approx(-0.0476, abs=1e-4)
    assert gc.clock_agreement([10.0] * 100, 0.97)[1].verdict == "FAIL"  # events longer than the window
    assert gc.clock_agreement([], 1.0)[1].verdict == "FAIL"
    assert gc.clock_agreement([10.0], None)[1].verdict == "FAIL"


def test_plausible_run_passes_every_check() -> None:
    checks = _checks(_good_row())
    assert {name: c.verdict for name, c in checks.items()} == dict.fromkeys(
        ["run", "clock_agreement", "gpu_util_pct", "gpu_mem_used_gib", "gpu_power_w", "energy_j_per_sample",
         "mfu", "cuda_memory"], "PASS")


@pytest.mark.parametrize(("check", "changes"), [
    ("clock_agreement", {"train_wall_s": 1.2}),
    ("gpu_util_pct", {"gpu_util_pct": 0.0}),
    ("gpu_util_pct", {"gpu_util_pct": 100.5}),
    ("gpu_util_pct", {"gpu_util_pct": None, "nvml_status": "not available: NVML Shared Library Not Found"}),
    ("gpu_mem_used_gib", {"gpu_mem_used_gib": 0.0}),
    ("gpu_mem_used_gib", {"gpu_mem_used_gib": 150.0}),
    ("gpu_power_w", {"gpu_power_w": 5.0}),
    ("gpu_power_w", {"gpu_power_w": 2000.0}),
    ("energy_j_per_sample", {"energy_j_per_sample": 0.0}),
    ("energy_j_per_sample", {"energy_j_per_sample": None}),
    ("mfu", {"mfu": 1.7}),
    ("mfu", {"mfu": None}),
    ("cuda_memory", {"cuda_peak_allocated_gib": 10.0, "cuda_peak_reserved_gib": 9.5}),
    ("cuda_memory", {"cuda_peak_allocated_gib": None}),
])
def test_each_check_fails_on_an_implausible_value(check: str, changes: dict) -> None:
    checks = _checks(_good_row(**changes))
    assert checks[check].verdict == "FAIL", checks[check]
    assert [name for name, c in checks.items() if c.verdict == "FAIL"] == [check]


def test_missing_nvml_value_says_why() -> None:
    checks = _checks(_good_row(gpu_power_w=None, nvml_status="sampling failed: GPU is lost"))
    assert "sampling failed: GPU is lost" in checks["gpu_power_w"].detail


def test_cpu_run_and_unknown_peak_are_not_applicable() -> None:
    cpu = _checks(_good_row(gpu_util_pct=None, gpu_power_w=None, peak=None), on_cuda=False)
    assert cpu["clock_agreement"].verdict == "PASS"
    assert {cpu[n].verdict for n in ("gpu_util_pct", "gpu_power_w", "mfu", "cuda_memory")} == {"N/A"}
    assert "not available" in cpu["gpu_util_pct"].detail
    assert _checks(_good_row(peak=None, mfu=None))["mfu"].verdict == "N/A"


def test_a_crashed_run_fails_run_only() -> None:
    checks = _checks(_good_row(status="oom", error="OutOfMemoryError: CUDA out of memory.\nTried to allocate"))
    assert list(checks) == ["run"] and checks["run"].verdict == "FAIL"
    assert checks["run"].detail == "oom: OutOfMemoryError: CUDA out of memory."


def test_summary_one_line_per_check() -> None:
    rows = [_good_row(), _good_row(amp="fp16", gpu_power_w=3000.0), _good_row(amp="off", status="crash")]
    for row in rows:
        row["checks"] = _checks(row)
    summary = gc.summarize(rows)
    assert summary["gpu_power_w"].verdict == "FAIL" and "lm/fp16" in summary["gpu_power_w"].detail
    assert summary["gpu_power_w"].detail.startswith("1/2 pass")
    assert summary["run"].verdict == "FAIL" and "lm/off" in summary["run"].detail
    assert summary["clock_agreement"].verdict == "PASS"


def test_report_writer_markdown_and_json(tmp_path: Path) -> None:
    rows = [_good_row(batch="32 x 1", tokens_per_s=1e6, samples_per_s=800.0, step_ms_median=10.0),
            _good_row(amp="fp16", status="crash", error="RuntimeError: boom | bad", peak=None)]
    for row in rows:
        row["checks"] = _checks(row)
    report = {"schema_version": 1, "device": "cuda", "budget_s": 460.0, "notes": ["lm/off skipped: budget"],
              "env": {"gpu_name": "NVIDIA H200", "gpu_driver": "570.1", "torch": "2.13.0", "cuda": "12.8",
                      "gpu_mem_total_gib": 139.8},
              "summary": gc.summarize(rows), "runs": rows}
    markdown = gc.write_report(report, tmp_path / "out")
    assert (tmp_path / "out" / "gpu_check.md").read_text() == markdown
    assert "GPU: NVIDIA H200 (139.8 GiB), driver 570.1, torch 2.13.0, CUDA 12.8" in markdown
    assert "- **PASS** clock_agreement: 1/1 pass" in markdown
    assert "- **FAIL** run: 1/2 pass; failed: lm/fp16" in markdown
    assert "| lm | seed_large | bf16 | 32 x 1 | ok | 800.0 | 1000000 | 10.00 |" in markdown
    assert "989 bf16 (H200)" in markdown and "-0.99%" in markdown
    assert "RuntimeError: boom" in markdown  # the crash's error, below the table
    table = [line for line in markdown.splitlines() if line.startswith("| lm |")]
    assert all(line.count("|") == 20 for line in table)  # a '|' in an error cell cannot break the table
    data = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert data["runs"][0]["checks"]["gpu_power_w"] == {"verdict": "PASS", "detail": "450 within [10, 1500] W"}
    assert data["summary"]["run"]["verdict"] == "FAIL"
    assert data["runs"][1]["status"] == "crash"


def test_peak_names_the_matching_table_entry() -> None:
    assert gc._peak("NVIDIA H200", {"amp": "bf16"}) == {
        "tflops": 989.0, "precision": "bf16", "entry": "H200",
        "source": "NVIDIA H200 Tensor Core GPU datasheet (SXM; sparsity figures halved)"}
    assert gc._peak("NVIDIA H100 PCIe", {"amp": "off", "tf32": False})["entry"] == "H100 PCIe"
    assert gc._peak(None, {"amp": "bf16"}) is None
    assert gc._peak("Some Future GPU", {"amp": "bf16"}) is None


class _FakeLauncher:
    def __init__(self, outcome: Outcome) -> None:
        self.outcome, self.jobs = outcome, []

    def launch(self, job, workdir):
        self.jobs.append(job)
        return self.outcome


def test_run_isolated_maps_a_timeout_and_a_result() -> None:
    config = {"workload": "lm", "amp": "fp16"}
    launcher = _FakeLauncher(Outcome(None, -9, "still running", True, 150.0))
    row = gc._run_isolated(launcher, config, 42.0)
    assert row["status"] == "timeout" and "still running" in row["error"]
    assert launcher.jobs[0].timeout_s == 42.0 and launcher.jobs[0].config == config
    result = {"status": "ok", "error": "", "env": {"gpu_name": "X", "note_nvml": "ok"}, "step_ms": [1.0, 2.0],
              "metrics": {"samples_per_s": 10.0, "train_wall_s": 0.003, "gpu_power_w": float("nan")},
              "timeline": {"t_s": [0.0, 0.2, 0.4]}}
    row = gc._run_isolated(_FakeLauncher(Outcome(result, 0, "", False, 5.0)), config, 42.0)
    assert row["samples_per_s"] == 10.0 and row["gpu_power_w"] is None  # NaN becomes missing
    assert row["nvml_status"] == "ok" and row["nvml_samples"] == 3 and row["step_ms"] == [1.0, 2.0]


def test_spent_budget_skips_every_run_with_a_note() -> None:
    args = argparse.Namespace(device="cpu", preset="tiny", workloads=["lm"], budget_s=1.0)
    report = gc.run_all(args, deadline=time.monotonic())
    assert [r["status"] for r in report["runs"]] == ["skipped"] * 3
    assert len(report["notes"]) == 3 and report["summary"]["run"].verdict == "FAIL"


class _BrokenLauncher:
    def launch(self, job, workdir):
        raise RuntimeError("fork server exited")

    def close(self):
        raise OSError("already gone")


def test_a_broken_launcher_is_a_row_not_the_end(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gc, "_launcher", lambda workloads: _BrokenLauncher())
    args = argparse.Namespace(device="cpu", preset="tiny", workloads=["lm"], budget_s=600.0)
    report = gc.run_all(args, deadline=time.monotonic() + 600)
    assert [r["status"] for r in report["runs"]] == ["crash"] * 3
    assert "fork server exited" in report["runs"][0]["error"]


# --- (c) the whole pipeline on a CPU with tiny presets --------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)  # ~50 s on an idle 2-core machine, 2 min with a core taken; no timing asserted
def test_cpu_dry_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "report"
    proc = _script("--out", str(out), "--device", "cpu", "--preset", "tiny", timeout=850)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert [(r["workload"], r["amp"]) for r in data["runs"]] == [
        (w, a) for w in ("lm", "gpcm", "sudoku", "doctrans") for a in ("off", "bf16", "fp16")]
    for run in data["runs"]:
        if run["amp"] == "off":  # fp16 autocast on a CPU is an emulation some ops may refuse
            assert run["status"] == "ok", run["error"]
        if run["status"] == "ok":
            assert run["samples_per_s"] > 0 and len(run["step_ms"]) == run["measured_steps"] > 0
            assert run["clock_rel_diff"] is not None
            assert run["checks"]["gpu_util_pct"]["verdict"] == "N/A"
            assert "not available" in run["checks"]["energy_j_per_sample"]["detail"]
    assert data["summary"]["gpu_power_w"]["verdict"] == "N/A"
    assert proc.stdout == (out / "gpu_check.md").read_text()
    assert proc.stdout.count("\n| ") == 1 + 12  # the header row and one row per workload x amp
