"""Data parallelism through torch's own launcher: ``ddp=N`` ranks under torchrun, gathered into one record.

Launch. A job whose config has ``ddp`` > 1 runs as ``python -m torch.distributed.run --nproc-per-node=N
--max-restarts=0 -m harness.worker JOB RESULT`` (`torchrun_command`): on one node a standalone rendezvous on a
free port (``--standalone``: two sweeps or two pytest processes at once never share a port), on several nodes
c10d rendezvous at ``rdzv_endpoint``. Backend gloo on a CPU, nccl on CUDA. Every rank runs the same engine
(`harness.engine.run`) and writes ``RESULT.rank<r>.json`` and ``RESULT.rank<r>.stderr``; `gather` turns them
into the one result the runner records.

Semantics (`Parallel`): each rank trains on its slice of every global batch (`harness.data.RankBatches`), so
``ddp=N, batch_size=b`` sees exactly the samples of ``ddp=1, batch_size=N*b``. Its micro-batch losses are sums
divided by the loss-element count of the whole *global* step (all-reduced once per step), and the gradient
hook all-reduces with SUM, not DDP's default average: the summed gradients are then exactly the one-process
gradient of the concatenated batch.

Communication (`CommProbe`). DDP launches one all-reduce per gradient bucket as soon as the bucket's gradients
are computed, and backward returns only after every all-reduce has finished. The hook records, per step, when
the last bucket became ready (no gradient is computed after it) and when each all-reduce completed; the
``communication`` phase of a step is ``max(completion) - last ready``, clipped at 0: the time backward waited
for the network after its compute was done, i.e. the all-reduce time that did *not* overlap compute. It is
measured on the clock of the phases (host clock on a CPU; CUDA events on a GPU, where the completion event is
recorded in the future's callback, which runs on a stream that waits for the collective), and moved out of
the ``backward`` phase. The all-reduce of the step's loss-element count is charged to ``communication`` too.
A rank that waits for a slower rank waits here: the gathered record separates the two (`gather`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from harness.rates import rates, totals_from_metrics

RANK_STATUS_ORDER = ("timeout", "crash", "oom", "nan", "ok")
"""The gathered record's status is the first of these that any rank has."""


def backend_for(device: torch.device) -> str:
    """gloo on a CPU, nccl on CUDA."""
    return "nccl" if device.type == "cuda" else "gloo"


def rank_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) set by torchrun; (0, 1, 0) outside it."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def active() -> bool:
    """Is this process one rank of several (a process group is up)?"""
    return torch.distributed.is_available() and torch.distributed.is_initialized() and \
        torch.distributed.get_world_size() > 1


def init(device: torch.device) -> None:
    """Join the process group torchrun set up (rendezvous through its environment); CUDA: this rank's GPU."""
    if device.type == "cuda":
        torch.cuda.set_device(rank_env()[2])
    torch.distributed.init_process_group(backend_for(device))


def shutdown() -> None:
    """Leave the process group after a successful run (every rank reaches this point)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def rank_device(device: torch.device) -> torch.device:
    """The device of this rank: its local GPU on CUDA."""
    return torch.device("cuda", rank_env()[2]) if device.type == "cuda" and active() else device


# --- launch ------------------------------------------------------------------------------------------------


def torchrun_command(config: Mapping[str, Any], args: Sequence[str], run_id: str = "trainbench") -> list[str]:
    """The launcher's command line for a job: torchrun with `config`'s ranks, no restarts, ``harness.worker``."""
    nproc, nnodes, endpoint = int(config.get("ddp", 1)), int(config.get("nnodes", 1)), config.get("rdzv_endpoint", "")
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}", f"--nproc-per-node={nproc}",
           "--max-restarts=0"]
    if nnodes == 1 and not endpoint:
        cmd.append("--standalone")  # c10d rendezvous on localhost:0: the OS picks a free port
    else:
        cmd += ["--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}", f"--rdzv-id={run_id}"]
    return [*cmd, "-m", "harness.worker", *args]


def rank_file(result_file: Path, rank: int, suffix: str = ".json") -> Path:
    """Where rank `rank` of a job writes its result (suffix .json) or its stderr (.stderr)."""
    return result_file.with_name(f"{result_file.stem}.rank{rank}{suffix}")


def prepare_rank(result_file: Path) -> Path:
    """In a rank: send stderr to its own file and dump every thread's stack there on SIGUSR1 (what the runner
    sends a hung run before it kills it); returns this rank's result file."""
    import faulthandler
    import signal

    rank = rank_env()[0]
    err = open(rank_file(result_file, rank, ".stderr"), "w")  # noqa: SIM115 (open for the process's lifetime)
    os.dup2(err.fileno(), 2)
    faulthandler.register(signal.SIGUSR1, file=err, all_threads=True)
    return rank_file(result_file, rank)


# --- training ------------------------------------------------------------------------------------------------


class CommProbe:
    """The gradient communication hook: all-reduce SUM of each bucket, and when each became ready and completed.

    See the module docstring for what is measured. `now` is the phase clock's reading (a host time or a CUDA
    event), so spans move between phases on the same clock."""

    def __init__(self, now: Callable[[], object], cuda: bool) -> None:
        self.now, self.cuda = now, cuda
        self.ready: list[object] = []
        self.done: list[object] = []

    def hook(self, state, bucket):  # noqa: ANN001, ANN201 (DDP checks the annotations: none, or GradBucket objects)
        """DDP comm hook: sum (no averaging: each rank's loss is already its share of the global step's)."""
        self.ready.append(self.now())
        future = torch.distributed.all_reduce(bucket.buffer(), async_op=True).get_future()

        def completed(fut: torch.futures.Future) -> torch.Tensor:
            self.done.append(self.now())  # CUDA: recorded on the stream that waited for the collective
            return fut.value()[0]

        return future.then(completed)

    def exposed_span(self) -> tuple[object, object] | None:
        """(last bucket ready, last all-reduce done) of the backward that just returned; None without overlap."""
        readies, dones = list(self.ready), list(self.done)
        self.ready.clear()
        self.done.clear()
        if not readies or not dones:
            return None
        if self.cuda:
            return readies[-1], dones[-1]  # one NCCL stream: the last bucket launched completes last
        ready, done = max(readies), max(dones)  # gloo's threads may finish buckets out of order
        return (ready, done) if done > ready else None


class Parallel:
    """What one rank of a data-parallel run adds to the training step (`harness.trainer.forward_backward`)."""

    def __init__(self, model: nn.Module, cfg: Any, device: torch.device, now: Callable[[], object]) -> None:
        if not active():
            raise ValueError(f"knob 'ddp': ddp={cfg.ddp} nnodes={cfg.nnodes} needs torchrun's ranks, which `trainbench "
                             "run` and `sweep` launch; this face trains in one process: use ddp=1 here")
        self.world = torch.distributed.get_world_size()
        self.rank = torch.distributed.get_rank()
        self.device = device
        self.parallelism = cfg.parallelism
        self.comm: CommProbe | None = None
        if cfg.parallelism == "fsdp":
            from torch.distributed.fsdp import fully_shard

            fully_shard(model)
            model.set_gradient_divide_factor(1.0)  # sum, as the DDP hook: losses are shares of the global step
            self.handle: nn.Module = model
        else:
            from torch.nn.parallel import DistributedDataParallel

            ids = [device.index] if device.type == "cuda" else None
            self.handle = DistributedDataParallel(model, device_ids=ids)
            self.comm = CommProbe(now, device.type == "cuda")
            self.handle.register_comm_hook(None, self.comm.hook)
        self.grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)

    def sync_context(self, last: bool) -> contextlib.AbstractContextManager:
        """Gradient accumulation: communicate only in the step's last micro-batch."""
        if self.parallelism == "fsdp":
            self.handle.set_requires_gradient_sync(last)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if last else self.handle.no_sync()

    def global_count(self, local: int) -> int:
        """The loss-element count of the whole step over every rank (an all-reduce; a sync on CUDA)."""
        total = torch.tensor([local], dtype=torch.int64, device=self.device)
        torch.distributed.all_reduce(total)
        return int(total.item())  # sync: the divisor is needed on the host before the forward

    def exposed_span(self) -> tuple[object, object] | None:
        """The step's communication that did not overlap compute (None for fsdp: not measured)."""
        return self.comm.exposed_span() if self.comm is not None else None

    def allreduce_busbw_gbps(self, min_mib: int = 4, max_mib: int = 64, reps: int = 5) -> float:
        """All-reduce bus bandwidth, GB/s: a float32 buffer of the gradients' size (within [`min_mib`, `max_mib`]:
        smaller buffers measure latency, not bandwidth), median of `reps` timed all-reduces after one untimed; bus
        bandwidth = 2 (N - 1) / N x bytes / time (the ring's traffic per rank, comparable across world sizes).
        Measured after the window, outside every timed step."""
        numel = min(max(self.grad_bytes, min_mib * 1024**2), max_mib * 1024**2) // 4
        buffer = torch.ones(numel, dtype=torch.float32, device=self.device)
        times = []
        for i in range(reps + 1):
            torch.distributed.barrier()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # sync: time the collective alone
            start = time.perf_counter()
            torch.distributed.all_reduce(buffer)
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)  # sync: the collective's end
            if i:
                times.append(time.perf_counter() - start)
        return 2 * (self.world - 1) / self.world * numel * 4 / statistics.median(times) / 1e9


# --- gathering ---------------------------------------------------------------------------------------------


def read_ranks(result_file: Path, world: int) -> tuple[list[dict[str, Any] | None], list[str]]:
    """(each rank's result or None, each rank's stderr tail) as the ranks left them."""
    results: list[dict[str, Any] | None] = []
    tails = []
    for r in range(world):
        path, err = rank_file(result_file, r), rank_file(result_file, r, ".stderr")
        try:
            results.append(json.loads(path.read_text()) if path.exists() else None)
        except json.JSONDecodeError:
            results.append(None)  # killed mid-write
        tails.append(err.read_text(errors="replace")[-20000:] if err.exists() else "")
    return results, tails


def _excerpt(stderr: str, timed_out: bool) -> str:
    """What a rank's stderr says about its end: on a timeout the start of its main thread's stack as faulthandler
    dumped it (innermost frame first: where it waited), else the last lines."""
    at = stderr.rfind("Current thread") if timed_out else -1
    return stderr[at:at + 1500].rstrip() if at >= 0 else stderr[-1500:].rstrip()


def _exit_codes(launcher_stderr: str) -> dict[int, int]:
    """{rank: exit code} of the failed ranks torchrun lists in its failure summary (``rank : R ... exitcode : C``)."""
    found = re.findall(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)", launcher_stderr)
    return {int(rank): int(code) for rank, code in found}


def _missing_rank_error(r: int, timed_out: bool, code: int | None, tail: str) -> str:
    """Why rank `r` left no result, from how it ended."""
    import signal

    if timed_out:
        why = "still running at the timeout and killed; its main thread's stack then (innermost frame first):"
    elif code is not None and code < 0:
        name = signal.Signals(-code).name if -code in signal.Signals._value2member_map_ else f"signal {-code}"
        why = (f"killed by {name} before writing a result" +
               (" (torchrun stops the other ranks with SIGTERM after one fails)" if name == "SIGTERM" else
                " (the OS out of memory, or a kill from outside)"))
    else:
        why = f"exited{'' if code is None else f' with code {code}'} without a result"
    return f"{why}\n{_excerpt(tail, timed_out)}".rstrip()


def _evidence(ranks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One machine-wide contention verdict for the ranks of one node: each rank sees its siblings as 'other
    processes', so their CPU is moved back to the run's own; a rank waiting for its peer has wall time beyond its
    CPU time for that reason alone, so the single-thread 'waited' test does not apply."""
    from harness.probes.contention import verdict

    evs = [r["contention"] for r in ranks if r.get("contention")]
    if not evs:
        return {}
    own = sum(e["own_cpu_cores"] for e in evs)
    other = statistics.fmean(max(0.0, e["other_cpu_cores"] - (own - e["own_cpu_cores"])) for e in evs)
    combined = {**evs[0], "own_cpu_cores": own, "other_cpu_cores": other, "waited_pct": None,
                "demand_cores": min(sum(e.get("demand_cores", 1.0) for e in evs), float(evs[0]["usable_cores"])),
                "steal_pct": max(e["steal_pct"] for e in evs),
                "involuntary_switches_per_s": sum(e["involuntary_switches_per_s"] for e in evs)}
    return {**combined, "verdict": verdict(combined)}


def rank_summary(r: int, res: Mapping[str, Any]) -> dict[str, Any]:
    """What the record keeps of one rank: status, error, its window and samples, step times, communication, peaks."""
    m = res.get("metrics") or {}
    step_ms = list(res.get("step_ms") or [])
    comm_ms = float((res.get("phase_ms") or {}).get("communication", 0.0))
    totals = res.get("totals") or totals_from_metrics(m)
    return {"rank": r, "status": res.get("status", "crash"), "error": res.get("error", ""),
            "window_s": totals.get("window_s"), "samples": totals.get("samples"), "totals": dict(totals),
            "real_tokens": totals.get("real_tokens") or 0, "padded_tokens": totals.get("padded_tokens") or 0,
            "samples_per_s": m.get("samples_per_s"), "step_ms": step_ms,
            "step_ms_median": statistics.median(step_ms) if step_ms else None,
            "communication_ms": comm_ms,
            "busy_ms": statistics.fmean(step_ms) - comm_ms if step_ms else None,
            "peak_rss_gib": m.get("peak_rss_gib"), "cuda_peak_allocated_gib": m.get("cuda_peak_allocated_gib"),
            "allreduce_busbw_gbps": m.get("allreduce_busbw_gbps"), "final_loss": m.get("final_loss")}


def combined_totals(ranks: Sequence[Mapping[str, Any]], steps: int) -> dict[str, Any]:
    """The world's totals: every rank's samples, tokens and FLOPs over the slowest rank's window (a straggler
    bounds the throughput), `steps` optimizer steps (the fewest any rank measured)."""
    def total(key: str) -> float | None:
        values = [t.get(key) for t in ranks]
        return sum(values) if all(v is not None for v in values) else None

    first = ranks[0]
    micro = (first.get("micro_steps") or 0) / first["measured_steps"] if first.get("measured_steps") else 1.0
    return {"measured_steps": steps, "micro_steps": round(steps * micro), "samples": total("samples"),
            "real_tokens": total("real_tokens") or 0, "padded_tokens": total("padded_tokens") or 0,
            "window_s": max(t.get("window_s") or 0.0 for t in ranks), "flops": total("flops")}


def gather(results: Sequence[Mapping[str, Any] | None], tails: Sequence[str], *, timed_out: bool = False,
           launcher_stderr: str = "") -> dict[str, Any]:
    """The ranks' results as one result (the fields of one `Record`), with ``ranks`` (one summary each).

    Throughput: `harness.rates.rates` of the ranks' `combined_totals` (every rank's samples over the slowest
    rank's measured window, so one straggler bounds it). Per
    rank, busy time = mean step time - its communication wait; skew = slowest busy - fastest busy (ms per step):
    a rank that computes longer makes every other rank wait in its all-reduce, which the skew shows and the
    communication phase of the slowest rank does not. Phases and step CPU times are the slowest rank's (the
    critical path); step times are the per-step maximum over ranks; peaks are the maximum over ranks.
    """
    codes = _exit_codes(launcher_stderr)
    ranks = []
    for r, res in enumerate(results):
        if res is None:
            ranks.append({"rank": r, "status": "timeout" if timed_out else "crash",
                          "error": _missing_rank_error(r, timed_out, codes.get(r), tails[r])})
        else:
            ranks.append(rank_summary(r, res))
    status = next(s for s in RANK_STATUS_ORDER if s == "ok" or any(x["status"] == s for x in ranks))
    first_ok = next((res for res in results if res is not None), None)
    env = dict((first_ok or {}).get("env") or {})
    if status != "ok":
        errors = "\n".join(f"rank {x['rank']} ({x['status']}): {x['error']}" for x in ranks if x["status"] != "ok")
        failed = next((res for res in results if res is not None and res.get("status") != "ok"), first_ok) or {}
        return {"status": status, "error": errors, "env": env, "ranks": ranks, "warnings": failed.get("warnings", []),
                "equivalence": failed.get("equivalence", {})}
    out = dict(results[0])  # rank 0: equivalence verdict, quality and its curve (every rank holds the same model)
    out["ranks"] = ranks
    if any(x["step_ms"] for x in ranks):
        out.update(_world_speed(results, ranks))
    return out


def _world_speed(results: Sequence[Mapping[str, Any]], ranks: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The speed fields of the gathered record (`gather`'s docstring says how each is combined)."""
    slowest = max(range(len(ranks)), key=lambda r: ranks[r]["busy_ms"])
    n = min(len(x["step_ms"]) for x in ranks)
    base = results[slowest]
    m = dict(base["metrics"])
    totals = combined_totals([x["totals"] for x in ranks], n)
    m.update(rates(totals))
    losses = [x["final_loss"] for x in ranks]
    m.update(world_size=len(ranks), peak_rss_gib=max(x["peak_rss_gib"] or 0.0 for x in ranks),
             cuda_peak_allocated_gib=_max_or_none(x["cuda_peak_allocated_gib"] for x in ranks),
             final_loss=sum(losses) if None not in losses else None)  # each rank's loss: its share of the step's
    for key in ("samples_per_step", "flops_per_step"):  # the counted step's, summed over ranks
        values = [res.get("metrics", {}).get(key) for res in results]
        m[key] = sum(values) if None not in values else None
    if m.get("flops_per_step") and m.get("samples_per_step"):
        m["flops_per_sample"] = m["flops_per_step"] / m["samples_per_step"]
    step_ms = [max(x["step_ms"][i] for x in ranks) for i in range(n)]
    mean = statistics.fmean(step_ms)
    busy = [x["busy_ms"] for x in ranks]
    comm = ranks[slowest]["communication_ms"]
    m.update(step_ms_median=statistics.median(step_ms), step_ms_mean=mean, rank_skew_ms=max(busy) - min(busy),
             rank_skew_pct=(max(busy) - min(busy)) / mean * 100 if mean else None, communication_ms=comm,
             communication_pct=comm / mean * 100 if mean else None,
             allreduce_busbw_gbps=_max_or_none(x["allreduce_busbw_gbps"] for x in ranks))
    return {"metrics": m, "totals": totals, "step_ms": step_ms, "step_cpu_ms": base.get("step_cpu_ms", []),
            "phase_ms": base.get("phase_ms", {}), "contention": _evidence(results),
            "timeline": base.get("timeline", {})}


def _max_or_none(values: Any) -> float | None:
    present = [v for v in values if v is not None]
    return max(present) if present else None
