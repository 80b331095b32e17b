"""`trainbench profile WORKLOAD key=value...`: a few training steps under torch.profiler for one config.

Writes a Chrome trace (chrome://tracing, Perfetto) and a TensorBoard-compatible trace, and returns a
text report: the top operators by self time, kernel launches per step (CUDA) and the advisor's findings
for the config. Without a GPU it profiles CPU activity only and says so.

The steps are measured by the engine (`harness.engine.Meter`: the same loader, bucketing, accumulation, AMP,
compile, duplicate-forward switch and optimizer as a measured run); a first step is the profiler's
warm-up, so one-time costs stay out of the trace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, schedule, tensorboard_trace_handler

from harness.analysis.advisor import advise
from harness.config import RunConfig
from harness.results import collect_env

TOP_OPERATORS = 15
CHROME_TRACE = "trace.json"
TENSORBOARD_DIR = "tensorboard"
_LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                  "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


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


@contextlib.contextmanager
def _without_usdt_lines() -> Iterator[None]:
    """Kineto writes ``USDT: ... profiler_start`` / ``profiler_stop`` to the C-level stderr: catch fd 2
    while the profiler runs and pass every other line on (warnings and errors stay visible)."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            caught.seek(0)
            kept = [line for line in caught.read().decode(errors="replace").splitlines(keepends=True)
                    if not line.startswith("USDT:")]
            sys.stderr.write("".join(kept))


def profile(cfg: RunConfig, out_dir: Path, steps: int = 5) -> str:
    """Profile `steps` optimizer steps of a config; write traces into out_dir; return the text report."""
    from harness.engine import Meter
    from harness.trainer import Trainer

    if steps < 1:
        raise ValueError(f"steps={steps}; profile at least 1 step")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg)
    on_cuda = trainer.device.type == "cuda"
    meter = Meter(trainer)  # the engine measures; the profiler only records what ran
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    tb_dir = out_dir / TENSORBOARD_DIR
    with _without_usdt_lines(), torch.profiler.profile(
            activities=activities, record_shapes=True, schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(tb_dir))) as prof:
        for i in range(steps + 1):  # step 0 is the profiler's warm-up: allocator, lazy init, first calls
            if i == 1:
                meter.open()
            meter.step(measured=i > 0)
            prof.step()
    result = meter.finish()
    # Kineto saves a trace once; the TensorBoard file is itself a Chrome trace, so copy it for Perfetto.
    tb_trace = max(tb_dir.glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    shutil.copyfile(tb_trace, out_dir / (CHROME_TRACE + (".gz" if tb_trace.suffix == ".gz" else "")))

    events = prof.key_averages()
    launches = sum(e.count for e in events if e.key in _LAUNCH_EVENTS) / steps if on_cuda else None
    m = result.metrics
    median_ms = m["step_ms_median"]
    data_ms = result.phase_ms.get("data", 0.0)
    env = collect_env()
    facts: dict[str, Any] = {
        "variant": "profile", "config": cfg.to_dict(), "env": env, "step_ms_median": median_ms,
        **{f"phase_ms_{k}": v for k, v in result.phase_ms.items()},
        "forward_calls_per_step": m["forward_calls_per_step"],
        "real_tokens_per_step": m["real_tokens_per_step"], "padded_tokens_per_step": m["padded_tokens_per_step"],
        "peak_rss_gib": m["peak_rss_gib"], "cuda_peak_reserved_gib": m["cuda_peak_reserved_gib"],
    }
    if on_cuda:
        capacity = torch.cuda.get_device_properties(trainer.device).total_memory / 1024**3
    else:
        import psutil

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
