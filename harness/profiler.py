"""`trainbench profile WORKLOAD key=value...`: a few training steps under torch.profiler for one config.

Writes a Chrome trace (chrome://tracing, Perfetto) and a TensorBoard-compatible trace, and returns a
text report: the top operators by self time, kernel launches per step (CUDA) and the advisor's findings
for the config. Without a GPU it profiles CPU activity only and says so.

The step is the trainer's own (`Trainer.stepper()`: the same loader, bucketing, accumulation, AMP,
compile, duplicate-forward switch and optimizer as a measured run); a first step is the profiler's
warm-up, so one-time costs stay out of the trace.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, schedule, tensorboard_trace_handler

from harness.analysis.advisor import advise
from harness.config import RunConfig
from harness.probes.counters import ForwardCounter
from harness.results import collect_env

TOP_OPERATORS = 15
CHROME_TRACE = "trace.json"
TENSORBOARD_DIR = "tensorboard"
_LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                  "cudaLaunchCooperativeKernel", "cudaGraphLaunch")
_DATA_EVENT = "enumerate(DataLoader)"
"""torch's DataLoader wraps each `__next__` in a profiler range with this prefix: the data wait."""


def _self_us(evt: Any, device: bool) -> float:
    if device:
        return float(getattr(evt, "self_device_time_total", getattr(evt, "self_cuda_time_total", 0.0)))
    return float(evt.self_cpu_time_total)


def _operator_table(prof: Any, on_cuda: bool, steps: int) -> list[str]:
    events = [e for e in prof.key_averages() if not e.key.startswith("ProfilerStep")]
    events.sort(key=lambda e: _self_us(e, on_cuda), reverse=True)
    total = sum(_self_us(e, on_cuda) for e in events) or 1.0
    unit = "CUDA" if on_cuda else "CPU"
    extra = " self CPU ms/step |" if on_cuda else ""
    lines = [f"| operator | calls/step | self {unit} ms/step | share |{extra}",
             "|---|---:|---:|---:|" + ("---:|" if on_cuda else "")]
    for e in events[:TOP_OPERATORS]:
        cpu = f" {_self_us(e, False) / 1000 / steps:.3f} |" if on_cuda else ""
        lines.append(f"| {e.key[:60]} | {e.count / steps:.1f} | {_self_us(e, on_cuda) / 1000 / steps:.3f} | "
                     f"{_self_us(e, on_cuda) / total:.1%} |{cpu}")
    return lines


def profile(cfg: RunConfig, out_dir: Path, steps: int = 5) -> str:
    """Profile `steps` optimizer steps of a config; write traces into out_dir; return the text report."""
    from harness.trainer import Trainer

    if steps < 1:
        raise ValueError(f"steps={steps}; profile at least 1 step")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    on_cuda = trainer.device.type == "cuda"
    step = trainer.stepper()
    counter = ForwardCounter(trainer.handle)
    step_ms: list[float] = []
    real = padded = micro = 0
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    tb_dir = out_dir / TENSORBOARD_DIR
    with torch.profiler.profile(activities=activities, record_shapes=True,
                                schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                                on_trace_ready=tensorboard_trace_handler(str(tb_dir))) as prof:
        for i in range(steps + 1):  # step 0 is the profiler's warm-up: allocator, lazy init, first calls
            start = time.perf_counter()
            counts = step()  # drains the GPU before returning, so the host clock is valid
            if i == 0:
                counter.calls = 0
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats()
            else:
                step_ms.append((time.perf_counter() - start) * 1000)
                real += sum(c.real_tokens for c in counts)
                padded += sum(c.padded_tokens for c in counts)
                micro += len(counts)
            prof.step()
    counter.remove()
    # Kineto saves a trace once; the TensorBoard file is itself a Chrome trace, so copy it for Perfetto.
    tb_trace = max(tb_dir.glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    shutil.copyfile(tb_trace, out_dir / (CHROME_TRACE + (".gz" if tb_trace.suffix == ".gz" else "")))

    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in _LAUNCH_EVENTS) / steps if on_cuda else None
    data_ms = sum(e.cpu_time_total for e in events if e.key.startswith(_DATA_EVENT)) / 1000 / steps
    median_ms = statistics.median(step_ms)
    env = collect_env()
    facts: dict[str, Any] = {
        "variant": "profile", "config": cfg.to_dict(), "env": env, "step_ms_median": median_ms,
        "phase_ms_data": data_ms, "phase_ms_other": max(median_ms - data_ms, 0.0),
        "forward_calls_per_step": counter.calls / max(micro, 1),
        "real_tokens_per_step": real / steps, "padded_tokens_per_step": padded / steps,
    }
    if on_cuda:
        facts["cuda_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 1024**3
        capacity = torch.cuda.get_device_properties(trainer.device).total_memory / 1024**3
    else:
        import psutil

        facts["peak_rss_gib"] = psutil.Process().memory_info().rss / 1024**3
        capacity = psutil.virtual_memory().total / 1024**3
    findings = advise(facts, capacity_gib=capacity, kernel_launches_per_step=launches)

    where = env.get("gpu_name") if on_cuda else f"CPU ({env.get('cpu_model', '?')})"
    lines = [f"profile: workload {cfg.workload}, preset {cfg.preset}, on {where}: {steps} optimizer step(s) "
             f"after 1 warm-up step (batch_size={cfg.batch_size}, grad_accum={cfg.grad_accum}, amp={cfg.amp})",
             f"traces: {out_dir / CHROME_TRACE} (chrome://tracing or ui.perfetto.dev), "
             f"{tb_dir}/ (TensorBoard profiler plugin)",
             f"step time under the profiler: median {median_ms:.2f} ms, data wait {data_ms:.2f} ms "
             "(profiler overhead included: use `trainbench run` for speed figures)"]
    if not on_cuda:
        lines.append("CPU only: no GPU visible, CPU activity profiled")
    lines += ["", f"top {TOP_OPERATORS} operators by self {'CUDA' if on_cuda else 'CPU'} time:",
              *_operator_table(prof, on_cuda, steps), "",
              f"kernel launches per step: {launches:.0f}" if on_cuda else
              "kernel launches per step: CPU only: no kernel launches counted",
              f"forward calls per micro-step: {facts['forward_calls_per_step']:g}", "", "advisor:"]
    lines += [f"- {f.rule}: {f.message} ({f.evidence})" for f in findings] or ["- no rule fired"]
    return "\n".join(lines) + "\n"
