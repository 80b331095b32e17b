"""Does a speed knob still compute the same function?

Both configs build their model independently from the same seed (so a variant that changes the
initialisation is caught, not hidden by copying weights), take the same first effective batch of
training samples in file order, and run one optimizer step's forward + loss + backward through the
trainer's own `forward_backward`. Compared: the step loss, every parameter gradient by name, and
the model outputs when both use the same micro-batch size. The error of a tensor is its relative L2
error ||a - b|| / ||reference|| (scale-free, and robust to a few tiny entries), and the check passes
when the largest one is within the dtype's tolerance; the largest absolute error is reported too.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from harness.config import RunConfig, resolve_device
from harness.distributed import Parallel, rank_device
from harness.knobs import global_batch, world_of
from harness.probes.timers import reading
from harness.trainer import autocast, compiled, forward_backward, seed_everything
from harness.workload import map_tensors

# Tolerance on the scale-free error, by the dtype the variant computes in.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10, "bf16": 1e-2, "fp16": 1e-2, "compiled": 1e-4}


def tolerance_for(cfg: RunConfig, dtype: torch.dtype) -> tuple[float, str]:
    """(tolerance, label) for a config."""
    if cfg.amp != "off":
        return TOLERANCE[cfg.amp], cfg.amp
    if cfg.compile or cfg.tf32:
        return TOLERANCE["compiled"], "float32 (compiled/tf32)"
    label = "float64" if dtype == torch.float64 else "float32"
    return TOLERANCE[label], label


def _step(cfg: RunConfig, device: torch.device, samples: list[Any], dtype: torch.dtype):
    wl = cfg.get_workload()
    seed_everything(cfg.seed)
    model = wl.build_model(cfg).to(device=device, dtype=dtype)
    model.train()
    parallel, rank, world = None, 0, 1
    if world_of(cfg.values) > 1:  # one rank of several (under torchrun): DDP, as the trainer runs it
        parallel = Parallel(model, cfg, device, partial(reading, device.type == "cuda"))
        rank, world = parallel.rank, parallel.world
    handle = parallel.handle if parallel else model
    handle = compiled(handle, cfg)
    collate = wl.collate(cfg) or torch.utils.data.default_collate
    # micro-batch j of the step is samples [j*B, (j+1)*B) at the global micro-batch B = world x batch_size; this
    # rank takes its slice of it, as `harness.data.RankBatches` does
    step = world * cfg.batch_size
    host = [collate(samples[i + rank * cfg.batch_size:i + (rank + 1) * cfg.batch_size])
            for i in range(0, len(samples), step)]
    if dtype != torch.float32:
        host = [map_tensors(b, lambda t: t.to(dtype) if t.is_floating_point() else t) for b in host]
    counts = [wl.batch_counts(b, cfg) for b in host]
    batches = [wl.to_device(b, device) for b in host]
    seed_everything(cfg.seed)  # same dropout stream for both (models meant to compare use dropout 0)
    # fp16 gradients underflow without loss scaling; scale as training does, then unscale exactly.
    scale = 2.0**16 if cfg.amp == "fp16" else 1.0
    scaler = _ConstantScale(scale) if scale != 1.0 else None
    loss = forward_backward(wl, cfg, handle, batches, counts, device, scaler=scaler, parallel=parallel)
    if parallel is not None:
        torch.distributed.all_reduce(loss)  # each rank's loss is its share of the global step's
    with torch.no_grad(), autocast(cfg, device):
        first_out = wl.compare_outputs(wl.forward(model if parallel else handle, batches[0], cfg), batches[0])
    grads = {n: p.grad.detach().double() / scale for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach().double(), grads, [t.detach().double() for t in first_out]


class _ConstantScale:
    """The part of GradScaler that `forward_backward` uses, with a fixed power-of-two scale."""

    def __init__(self, scale: float) -> None:
        self.factor = scale

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.factor


def _err(a: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max absolute error, relative L2 error ||a - ref|| / ||ref||); infinite on a shape mismatch."""
    if a.shape != ref.shape:
        return float("inf"), float("inf")
    if not a.numel():
        return 0.0, 0.0
    diff = a - ref
    norm = float(ref.norm())
    rel = float(diff.norm()) / norm if norm > 0 else (0.0 if float(diff.abs().max()) == 0 else float("inf"))
    return float(diff.abs().max()), rel


def check_equivalence(base: RunConfig, variant: RunConfig, dtype: torch.dtype = torch.float32,
                      steps: int = 1) -> dict[str, Any]:
    """Compare one optimizer step of `variant` with `base` from the same seed and samples; with `steps` > 1
    also `steps` optimizer steps as the trainer runs them (`check_trajectory`)."""
    if steps > 1:
        one = check_equivalence(base, variant, dtype)
        if not one["passed"]:
            return one
        return check_trajectory(base, variant, steps)
    if global_batch(base.values) != global_batch(variant.values):
        return {"passed": False, "reason": "effective batch differs (batch_size x grad_accum x ddp x nnodes); "
                "equivalence is defined only at equal effective batch", "compared": []}
    device = rank_device(resolve_device(base))
    wl = base.get_workload()
    seed_everything(base.seed)
    train_ds, _ = wl.build_datasets(base)
    n = global_batch(base.values)
    if len(train_ds) < n:
        raise ValueError(f"equivalence needs {n} training samples, the split has {len(train_ds)}")
    samples = [train_ds[i] for i in range(n)]
    loss_a, grads_a, out_a = _step(base, device, samples, dtype)
    loss_b, grads_b, out_b = _step(variant, device, samples, dtype)
    tol, label = tolerance_for(variant, dtype)
    errors: dict[str, tuple[float, float]] = {"loss": _err(loss_b, loss_a)}
    missing = sorted(set(grads_a) ^ set(grads_b))
    for name in sorted(set(grads_a) & set(grads_b)):
        errors[f"grad:{name}"] = _err(grads_b[name], grads_a[name])
    compared = ["loss", f"{len(grads_a)} parameter gradients"]
    if base.batch_size == variant.batch_size and world_of(base.values) == world_of(variant.values):
        # outputs line up only for the same micro-batches
        if len(out_a) != len(out_b):
            errors["outputs"] = (float("inf"), float("inf"))
        for i, (a, b) in enumerate(zip(out_a, out_b, strict=False)):
            errors[f"output:{i}"] = _err(b, a)  # a shape mismatch is an infinite error, never skipped
        compared.append("outputs")
    worst = max(errors, key=lambda k: errors[k][1])
    max_abs = max(e[0] for e in errors.values())
    max_rel = errors[worst][1]
    passed = not missing and max_rel <= tol
    reason = (f"parameters differ: {missing[:3]}" if missing else
              f"worst: {worst} (relative L2 error {max_rel:.2e} vs tolerance {tol:.0e})")
    if not passed and base.batch_size != variant.batch_size:
        reason += ("; only the micro-batching differs, so check that the workload's loss() is a sum over the "
                   "batch's loss elements, not a mean (a mean is averaged again across micro-batches)")
    return {"passed": bool(passed), "max_abs_err": max_abs, "max_rel_err": max_rel, "tolerance": tol,
            "dtype": label, "compared": compared, "reason": reason}


MULTI_STEP_FACTOR = 10.0
"""Multi-step tolerance = the dtype's one-step tolerance x this: after the first update two equivalent configs
differ by rounding, and the optimizer (Adam divides by the gradient's running scale) amplifies that."""


def _train_steps(cfg: RunConfig, steps: int) -> tuple[list[float], dict[str, torch.Tensor]]:
    from harness.trainer import Trainer

    tr = Trainer(cfg)
    losses = tr.run_steps(steps)
    return losses, {n: p.detach().double().cpu() for n, p in tr.model.named_parameters()}


def check_trajectory(base: RunConfig, variant: RunConfig, steps: int) -> dict[str, Any]:
    """Run `steps` optimizer steps of both configs through the trainer (optimizer, scheduler, zero_grad and
    all) from the same seed and sample order; compare each step's loss and the final parameters."""
    if not 2 <= steps <= 50:
        raise ValueError(f"steps: bad value {steps}; a multi-step equivalence check takes 2-50 optimizer steps")
    losses_a, params_a = _train_steps(base, steps)
    losses_b, params_b = _train_steps(variant, steps)
    tol = tolerance_for(variant, torch.float32)[0] * MULTI_STEP_FACTOR
    errors = {f"loss after step {i + 1}": _err(torch.tensor(b), torch.tensor(a))
              for i, (a, b) in enumerate(zip(losses_a, losses_b, strict=True))}
    missing = sorted(set(params_a) ^ set(params_b))
    shared = sorted(set(params_a) & set(params_b))
    if shared and all(params_a[n].shape == params_b[n].shape for n in shared):
        # One error over all parameters: per tensor, Adam's update g / (sqrt(v) + eps) turns rounding in a
        # near-zero gradient (a fresh bias) into a visible relative difference of that small tensor.
        errors["parameters"] = _err(torch.cat([params_b[n].flatten() for n in shared]),
                                    torch.cat([params_a[n].flatten() for n in shared]))
    elif shared:
        errors["parameters"] = (float("inf"), float("inf"))
    worst = max(errors, key=lambda k: errors[k][1])
    max_rel = errors[worst][1]
    passed = not missing and max_rel <= tol
    reason = (f"parameters differ: {missing[:3]}" if missing else
              f"after {steps} optimizer steps, worst: {worst} (relative L2 error {max_rel:.2e} vs tolerance {tol:.0e})")
    return {"passed": bool(passed), "max_abs_err": max(e[0] for e in errors.values()), "max_rel_err": max_rel,
            "tolerance": tol, "dtype": tolerance_for(variant, torch.float32)[1],
            "compared": [f"loss at each of {steps} steps", f"{len(params_a)} parameters after them"],
            "reason": reason}
