"""`trainbench profile WORKLOAD key=value...`: a few training steps under torch.profiler for one config.

Writes a Chrome trace (chrome://tracing, Perfetto) and a TensorBoard-compatible trace, and returns a
text report: the top operators by self time, kernel launches per step (CUDA) and the advisor's findings
for the config. Without a GPU it profiles CPU activity only and says so.

The step is driven through the Workload interface directly (build model, DataLoader over the train
split with the workload's collate, forward, loss, backward, optimizer step), honouring grad_accum, amp
and duplicate_forward; a first (profiler warm-up) step keeps one-time costs out of the trace.
"""

from __future__ import annotations

import shutil
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, record_function, schedule, tensorboard_trace_handler

from harness.analysis.advisor import advise
from harness.config import RunConfig, resolve_device
from harness.results import collect_env

TOP_OPERATORS = 15
CHROME_TRACE = "trace.json"
TENSORBOARD_DIR = "tensorboard"
_LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx",
                  "cudaLaunchCooperativeKernel", "cudaGraphLaunch")


def _optimizer(cfg: RunConfig, params: Any) -> torch.optim.Optimizer:
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}
    return kinds[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _loader(cfg: RunConfig, dataset: Any, collate: Any, device: torch.device) -> torch.utils.data.DataLoader:
    workers = cfg.num_workers
    extra = {"persistent_workers": cfg.persistent_workers, "prefetch_factor": cfg.prefetch_factor} if workers else {}
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                                       collate_fn=collate, num_workers=workers,
                                       pin_memory=cfg.pin_memory and device.type == "cuda",
                                       generator=torch.Generator().manual_seed(cfg.seed), **extra)


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
    if steps < 1:
        raise ValueError(f"steps={steps}; profile at least 1 step")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wl = cfg.get_workload()
    device = resolve_device(cfg)
    on_cuda = device.type == "cuda"
    torch.manual_seed(cfg.seed)
    model = wl.build_model(cfg).to(device)
    model.train()
    train, _ = wl.build_datasets(cfg)
    loader = _loader(cfg, train, wl.collate(cfg), device)
    opt = _optimizer(cfg, model.parameters())
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.amp == "fp16" and on_cuda)
    calls = [0]
    hook = model.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    state: dict[str, Any] = {"it": iter(loader)}
    tally = {"data_ms": [], "step_ms": [], "real": 0, "padded": 0, "micro": 0}

    def next_batch() -> Any:
        try:
            return next(state["it"])
        except StopIteration:  # a short split: start another epoch
            state["it"] = iter(loader)
            return next(state["it"])

    def one_step(measure: bool) -> None:
        start = time.perf_counter()
        data_s, losses = 0.0, []
        opt.zero_grad(set_to_none=True)
        for _ in range(cfg.grad_accum):
            t0 = time.perf_counter()
            with record_function("trainbench.data"):
                host = next_batch()
                counts = wl.batch_counts(host, cfg)
                batch = wl.to_device(host, device, non_blocking=cfg.pin_memory and on_cuda)
            data_s += time.perf_counter() - t0
            if measure:
                tally["real"] += counts.real_tokens
                tally["padded"] += counts.padded_tokens
                tally["micro"] += 1
            with torch.autocast(device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
                with record_function("trainbench.forward"):
                    outputs = wl.forward(model, batch, cfg)
                    if cfg.duplicate_forward:  # the seed-004 bug, reproduced on purpose
                        outputs = wl.forward(model, batch, cfg)
                with record_function("trainbench.loss"):
                    losses.append(wl.loss(outputs, batch, cfg).total)
            with record_function("trainbench.backward"):
                # normalised per micro-batch (the trainer normalises by the whole step's count; same cost)
                scaler.scale(losses[-1] / max(counts.loss_elements * cfg.grad_accum, 1)).backward()
        with record_function("trainbench.optimizer"):
            scaler.step(opt)
            scaler.update()
        if on_cuda:
            torch.cuda.synchronize()  # sync point: the step's queued kernels must finish before the clock stops
        if measure:
            tally["data_ms"].append(data_s * 1000)
            tally["step_ms"].append((time.perf_counter() - start) * 1000)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    tb_dir = out_dir / TENSORBOARD_DIR
    with torch.profiler.profile(activities=activities, record_shapes=True,
                                schedule=schedule(wait=0, warmup=1, active=steps, repeat=1),
                                on_trace_ready=tensorboard_trace_handler(str(tb_dir))) as prof:
        for i in range(steps + 1):  # step 0 is the profiler's warm-up: allocator, lazy init, first calls
            one_step(measure=i > 0)
            if i == 0:
                calls[0] = 0
                if on_cuda:
                    torch.cuda.reset_peak_memory_stats()
            prof.step()
    hook.remove()
    # Kineto saves a trace once; the TensorBoard file is itself a Chrome trace, so copy it for Perfetto.
    tb_trace = max(tb_dir.glob("*.pt.trace.json*"), key=lambda p: p.stat().st_mtime)
    shutil.copyfile(tb_trace, out_dir / (CHROME_TRACE + (".gz" if tb_trace.suffix == ".gz" else "")))

    launches = sum(e.count for e in prof.key_averages() if e.key in _LAUNCH_EVENTS) / steps if on_cuda else None
    step_ms, data_ms = statistics.median(tally["step_ms"]), statistics.median(tally["data_ms"])
    env = collect_env()
    facts: dict[str, Any] = {
        "variant": "profile", "config": cfg.to_dict(), "env": env, "step_ms_median": step_ms,
        "phase_ms_data": data_ms, "phase_ms_other": step_ms - data_ms,
        "forward_calls_per_step": calls[0] / max(tally["micro"], 1),
        "real_tokens_per_step": tally["real"] / steps, "padded_tokens_per_step": tally["padded"] / steps,
    }
    capacity = None
    if on_cuda:
        facts["cuda_peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 1024**3
        capacity = torch.cuda.get_device_properties(device).total_memory / 1024**3
    else:
        import psutil

        facts["peak_rss_gib"] = psutil.Process().memory_info().rss / 1024**3
        capacity = psutil.virtual_memory().total / 1024**3
    findings = advise(facts, capacity_gib=capacity, kernel_launches_per_step=launches)

    where = env.get("gpu_name") if on_cuda else f"CPU ({env.get('cpu_model', '?')})"
    lines = [f"profile: workload {cfg.workload}, preset {cfg.preset}, on {where}: {steps} optimizer step(s) "
             f"after 1 warm-up step (batch_size={cfg.batch_size}, grad_accum={cfg.grad_accum}, amp={cfg.amp})",
             f"traces: {out_dir / CHROME_TRACE} (chrome://tracing or ui.perfetto.dev), "
             f"{out_dir / TENSORBOARD_DIR}/ (TensorBoard profiler plugin)",
             f"step time under the profiler: median {step_ms:.2f} ms, data wait {data_ms:.2f} ms "
             "(profiler overhead included: use `trainbench run` for speed figures)",
             "" if on_cuda else "CPU only: no GPU visible, CPU activity profiled", "",
             f"top {TOP_OPERATORS} operators by self {'CUDA' if on_cuda else 'CPU'} time:",
             *_operator_table(prof, on_cuda, steps), ""]
    lines.append(f"kernel launches per step: {launches:.0f}" if on_cuda else
                 "kernel launches per step: CPU only: no kernel launches counted")
    lines.append(f"forward calls per micro-step: {facts['forward_calls_per_step']:g}")
    lines += ["", "advisor:"]
    lines += [f"- {f.rule}: {f.message} ({f.evidence})" for f in findings] or ["- no rule fired"]
    return "\n".join(lines) + "\n"
