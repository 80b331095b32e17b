"""Data parallelism under torchrun (gloo, 2 ranks on the CPU): the same samples as one process, gradients and
loss equal to one process on the concatenated batch, the gathered record's arithmetic on a known load, faults
that end as records within the timeout with no process left, and two launches at once on free ports."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from harness import distributed
from harness.config import check_parallel
from harness.data import make_loader
from harness.experiment import build, knob_kinds
from harness.jobs import Job, records_from
from harness.launch import Launcher, child_env
from harness.registry import resolve
from harness.results import load_records
from harness.runner import run_experiment
from tests.conftest import TOY

SLEEP_MS = 150.0
STEPS = 4


def test_rank_batches_are_the_one_process_batches_split_step_for_step() -> None:
    one = resolve(TOY, {"batch_size": 16})
    ranks = resolve(TOY, {"batch_size": 8})
    whole = [b[0] for _, b in zip(range(20), make_loader(one.get_workload().build_datasets(one)[0], one,
                                                         one.get_workload(), torch.device("cpu")), strict=False)]
    parts = [[b[0] for b in make_loader(ranks.get_workload().build_datasets(ranks)[0], ranks, ranks.get_workload(),
                                         torch.device("cpu"), rank=r, world=2)] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(whole) == 256 // 16
    for step, batch in enumerate(whole):
        assert torch.equal(torch.cat([parts[0][step], parts[1][step]]), batch), step


def test_ddp_is_exact_at_equal_global_batch_and_quality_otherwise() -> None:
    exp = build("kinds", TOY, {"batch_size": 16}, {"split": {"ddp": 2, "batch_size": 8},
                                                  "weak": {"ddp": 2}}, repeats=1)
    assert knob_kinds(exp, "split") == {"exact"}
    assert knob_kinds(exp, "weak") == {"quality"}


def test_torchrun_command_standalone_and_multi_node() -> None:
    one = distributed.torchrun_command({"ddp": 2, "nnodes": 1, "rdzv_endpoint": ""}, ["J", "R"])
    assert "--standalone" in one and "--nproc-per-node=2" in one and "--max-restarts=0" in one
    assert one[-4:] == ["-m", "harness.worker", "J", "R"]
    many = distributed.torchrun_command({"ddp": 8, "nnodes": 4, "rdzv_endpoint": "node0:29400"}, ["J", "R"], "run7")
    assert "--standalone" not in many and "--nnodes=4" in many and "--rdzv-endpoint=node0:29400" in many
    assert "--rdzv-backend=c10d" in many and "--rdzv-id=run7" in many


def test_bad_parallel_settings_name_the_knob(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"ddp": 1, "device": "cpu", "parallelism": "ddp", "nnodes": 1, "rdzv_endpoint": ""}
    too_many = distributed_cores() + 1
    with pytest.raises(ValueError, match=f"knob 'ddp': bad value {too_many} on the CPU.*allowed: 1..") as exc:
        check_parallel({**base, "ddp": too_many})
    assert "\n" not in str(exc.value)
    with pytest.raises(ValueError, match="knob 'parallelism': bad value 'fsdp' on the CPU"):
        check_parallel({**base, "ddp": 2, "parallelism": "fsdp"})
    with pytest.raises(ValueError, match="knob 'nnodes': bad value 2 without rdzv_endpoint"):
        check_parallel({**base, "nnodes": 2})
    with pytest.raises(ValueError, match="knob 'rdzv_endpoint'"):
        check_parallel({**base, "nnodes": 2, "rdzv_endpoint": "node0"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="knob 'ddp': bad value 2 with device=cuda: 1 GPU.*allowed: 1..1"):
        check_parallel({**base, "ddp": 2, "device": "cuda"})


def distributed_cores() -> int:
    from harness.machine import usable_cores

    return usable_cores()


def test_cli_refuses_bad_ddp_with_one_line_and_writes_nothing(capsys: pytest.CaptureFixture[str],
                                                              tmp_path: Path) -> None:
    from harness.cli import main

    for item, needle in (("ddp=0", "knob 'ddp': bad value '0'"),
                         (f"ddp={distributed_cores() + 1}", "knob 'ddp': bad value"),
                         ("parallelism=fsdp", "knob 'parallelism'")):
        out = tmp_path / item.replace("=", "_")
        assert main(["run", TOY, item, "ddp=2" if item.startswith("par") else "seed=0", "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
        assert not out.exists()


def _rank(i: int, sps: float, wall: float, step_ms: list[float], comm_ms: float) -> dict:
    return {"status": "ok", "env": {"hostname": "h"}, "step_ms": step_ms, "step_cpu_ms": step_ms,
            "phase_ms": {"backward": 1.0, "communication": comm_ms},
            "metrics": {"samples_per_s": sps, "train_wall_s": wall, "steps_per_s": len(step_ms) / wall,
                        "it_per_s": len(step_ms) / wall, "peak_rss_gib": 1.0 + i, "final_loss": 0.5,
                        "samples_per_step": 8}}


def test_gather_arithmetic_on_known_numbers() -> None:
    # rank 1 computes 100 ms per step; rank 0 computes 20 ms and waits 80 ms for it in the all-reduce
    ranks = [_rank(0, 32 / 0.4, 0.4, [100.0] * 4, 80.0), _rank(1, 32 / 0.41, 0.41, [100.0, 101.0, 100.0, 110.0], 2.0)]
    out = distributed.gather(ranks, ["", ""])
    m = out["metrics"]
    assert m["world_size"] == 2 and [r["samples"] for r in out["ranks"]] == [32, 32]
    assert m["samples_per_s"] == pytest.approx(64 / 0.41)  # all samples / the slowest window
    assert m["train_wall_s"] == 0.41
    assert out["step_ms"] == [100.0, 101.0, 100.0, 110.0]  # the per-step maximum
    assert m["rank_skew_ms"] == pytest.approx((102.75 - 2.0) - (100.0 - 80.0))
    assert m["communication_ms"] == 2.0  # the slowest rank's: what the network cost, not the straggler
    assert m["peak_rss_gib"] == 2.0 and m["final_loss"] == 1.0 and m["samples_per_step"] == 16
    assert [r["status"] for r in out["ranks"]] == ["ok", "ok"]


def _job(variant: str, phase: str, config: dict, base: dict | None = None, timeout_s: float = 120.0) -> Job:
    return Job(experiment="ddp", variant=variant, phase=phase, repeat=0, config=config, base_config=base,
               timeout_s=timeout_s)


@pytest.mark.slow
def test_two_ranks_equal_one_process_and_a_sleeping_rank_bounds_throughput(tmp_path: Path) -> None:
    """Two torchrun launches at once, from two processes (free ports, no clash): the equivalence check (a launcher
    here) and a straggler run through the CLI (`trainbench run ... ddp=2` in a subprocess)."""
    one = resolve(TOY, {"batch_size": 16, "grad_accum": 2}).to_dict()
    split = resolve(TOY, {"batch_size": 8, "grad_accum": 2, "ddp": 2}).to_dict()
    jobs = {"equivalence": _job("split", "equivalence", split, one)}
    out = tmp_path / "run"
    cli = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", TOY, "ddp=2", "batch_size=8",
                            f"sleep_ms={SLEEP_MS}", "fault_rank=1", "bench_warmup_steps=1", f"bench_steps={STEPS}",
                            "--out", str(out)], stdout=subprocess.DEVNULL, stderr=open(tmp_path / "cli.err", "w"),
                           env=child_env())
    work = tmp_path / "equivalence"
    work.mkdir()
    outcomes = {"equivalence": Launcher().launch(jobs["equivalence"], work)}
    assert cli.wait(timeout=300) == 0, (tmp_path / "cli.err").read_text()
    equiv = records_from("ddp", jobs["equivalence"], outcomes["equivalence"])[0]
    assert equiv.status == "ok", equiv.error
    e = equiv.equivalence
    assert e["passed"] and e["compared"] == ["loss", "2 parameter gradients"], e
    assert e["max_rel_err"] <= 1e-5 and e["dtype"] == "float32"

    rec = max(load_records(out), key=lambda r: r.attempt)  # a run judged contended is run again
    assert rec.status == "ok", rec.error
    m, ranks = rec.metrics, rec.ranks
    assert m["world_size"] == 2 and len(ranks) == 2 and m["forward_calls_per_step"] == 1
    assert m["measured_steps"] == STEPS and all(len(r["step_ms"]) == STEPS for r in ranks)
    total = sum(r["samples"] for r in ranks)
    assert total == pytest.approx(2 * 8 * STEPS)
    window = max(r["window_s"] for r in ranks)
    assert m["samples_per_s"] == pytest.approx(total / window)
    # the sleep bounds the slowest window from below, so it bounds global throughput from above
    assert window >= STEPS * SLEEP_MS / 1e3
    assert m["samples_per_s"] <= total / (STEPS * SLEEP_MS / 1e3)
    # rank 1 sleeps; rank 0 waits for it in the all-reduce: the skew shows it, rank 0's communication holds it
    busy = {r["rank"]: r["busy_ms"] for r in ranks}
    assert busy[1] - busy[0] == pytest.approx(m["rank_skew_ms"])
    assert m["rank_skew_ms"] >= 0.5 * SLEEP_MS
    assert ranks[0]["communication_ms"] >= 0.5 * SLEEP_MS
    assert m["communication_ms"] == ranks[1]["communication_ms"] < ranks[0]["communication_ms"]
    assert rec.phase_ms["communication"] == m["communication_ms"]
    assert m["allreduce_busbw_gbps"] > 0


def _our_processes(marker: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(marker in part for part in proc.info["cmdline"] or []) and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc)
        except psutil.Error:
            pass
    return found


@pytest.mark.slow
def test_raising_killed_and_hanging_ranks_end_as_records_with_nothing_left(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    timeout = 20.0
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(work))  # the runner's job files, hence the ranks' command lines
    exp = build("faults", TOY, {"ddp": 2, "batch_size": 8, "fault_rank": 1, "bench_warmup_steps": 1,
                                "bench_steps": 2, "fail": "raise"},
                {"killed": {"fail": "kill"}, "hangs": {"fail": "hang"}}, baseline_name="raises",
                repeats=1, equivalence=False, timeout_s=timeout, target_half_width_pct=0.0, max_reruns=0)
    run_experiment(exp, tmp_path / "out", launcher=Launcher())
    recs = {r.variant: r for r in load_records(tmp_path / "out")}
    assert list(recs) == ["raises", "killed", "hangs"]  # each failure a record, and the sweep went on
    raised = recs["raises"]
    assert raised.status == "crash" and [r["status"] for r in raised.ranks] == ["crash", "crash"]
    assert "RuntimeError: planted failure in forward" in raised.ranks[1]["error"]
    assert "rank 1 (crash): RuntimeError: planted failure" in raised.error
    killed = recs["killed"]
    assert killed.status == "crash" and "killed by SIGKILL before writing a result" in killed.ranks[1]["error"]
    assert killed.ranks[0]["status"] == "crash"  # its all-reduce lost its peer, or torchrun stopped it
    hung = recs["hangs"]
    assert hung.status == "timeout" and f"exceeded timeout_s={timeout:g}" in hung.error
    assert [r["status"] for r in hung.ranks] == ["timeout", "timeout"]
    # where it hung: its main thread's stack, dumped before the kill, innermost frame first
    assert "Current thread" in hung.ranks[1]["error"] and "most recent call first" in hung.ranks[1]["error"]
    assert hung.wall_s < timeout + 15
    assert _our_processes(str(work)) == []
    assert all(asdict(r) for r in recs.values())


def test_scaling_table_and_advisor_on_known_records(tmp_path: Path) -> None:
    from harness.analysis import advise, summarize
    from harness.analysis.scaling import scaling_table
    from harness.report import write_report
    from harness.results import append
    from tests.fixtures.synthetic import base_config, speed_record

    two = base_config(ddp=2)
    recs = [speed_record("ddp1", i) for i in range(3)] + [
        speed_record("ddp2", i, speedup=1.5, config=two, world_size=2, communication_pct=40.0, rank_skew_pct=20.0,
                     rank_skew_ms=4.0, allreduce_busbw_gbps=0.9) for i in range(3)] + [
        speed_record("threads2", i, speedup=1.7, config=base_config(threads=2)) for i in range(3)]
    s = summarize(recs, "ddp1")
    t = scaling_table(s)
    assert list(t["ranks"]) == [1, 1, 2] and t.loc["ddp2", "global_batch"] == 2 * t.loc["ddp1", "global_batch"]
    assert np.isnan(t.loc["threads2", "efficiency"])  # one process on more threads: no scaling efficiency
    assert t.loc["ddp2", "efficiency"] == pytest.approx(s.loc["ddp2", "speedup"] / 2)
    assert t.loc["ddp2", "efficiency_ci_low"] == pytest.approx(s.loc["ddp2", "speedup_ci_low"] / 2)
    assert t.loc["ddp2", "communication_pct"] == 40.0
    rules = {f.rule for f in advise(s.loc["ddp2"])}
    assert {"communication_bound", "stragglers"} <= rules
    assert not {"communication_bound", "stragglers"} & {f.rule for f in advise(s.loc["ddp1"])}
    assert scaling_table(summarize(recs[:3], "ddp1")) is None  # nothing varies the ranks
    for r in recs:
        append(tmp_path / "res", r)
    text = write_report(tmp_path / "res", tmp_path / "rep").read_text()
    assert "## Data-parallel scaling" in text and "| `ddp2` | 2 |" in text
    assert (tmp_path / "rep" / "ddp_scaling.png").exists()


def test_an_in_process_face_refuses_ddp() -> None:
    from harness.trainer import Trainer

    with pytest.raises(ValueError, match="knob 'ddp': ddp=2 nnodes=1 needs torchrun's ranks"):
        Trainer(resolve(TOY, {"ddp": 2, "batch_size": 8}))
