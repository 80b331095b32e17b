"""Deterministic counters: forward calls per micro-step, FLOPs per step, memory peaks."""

from __future__ import annotations

import resource
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry

GIB = 1024**3


class ForwardCounter:
    """Counts forward passes through a model: calls of the module the trainer calls (the root) and, while
    `watch()`ed, calls of every parameter-owning submodule, inside and outside the root's forward.

    Root calls alone miss a second pass that goes around the root's `__call__` (``model.encode(x)``,
    ``model.blocks(h)``). A submodule run k times per root forward (weight sharing, message-passing rounds)
    and 2k times per micro-step means two passes; `passes` is the largest such count. Calls during the
    backward (gradient checkpointing recomputes the forward there) are not passes. Hooks on every
    submodule take each call off PyTorch's fast path (+3% on the DocTrans tiny step), so the engine
    watches one measured step and scales the root's count over the window by what it saw (`unwatch`).
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.calls = 0
        """Calls of the root module's forward (while enabled)."""
        self.enabled = True
        self._depth = 0
        self._inside: dict[str, int] = {}
        self._total: dict[str, int] = {}
        self._factor = 1.0
        self._handles = [module.register_forward_pre_hook(self._enter), module.register_forward_hook(self._leave)]
        self._watching: list[Any] = []

    def _enter(self, module: nn.Module, args: Any) -> None:
        self._depth += 1
        if self.enabled:
            self.calls += 1

    def _leave(self, module: nn.Module, args: Any, output: Any) -> None:
        self._depth -= 1

    def _counter(self, name: str) -> Callable[[nn.Module, Any], None]:
        def hook(module: nn.Module, args: Any) -> None:
            if self.enabled and _current_graph_task_id() == -1:  # not a backward's recomputation
                self._total[name] += 1
                if self._depth > 0:
                    self._inside[name] += 1
        return hook

    def watch(self) -> None:
        """Count parameter-owning submodules too, from now until `unwatch` (root calls restart from 0)."""
        if self._watching or hasattr(self.module, "_orig_mod"):  # compiled: its submodules run inside a graph
            return
        self.calls = 0
        for name, sub in self.module.named_modules():
            if name and any(True for _ in sub.parameters(recurse=False)):
                self._inside[name] = self._total[name] = 0
                self._watching.append(sub.register_forward_pre_hook(self._counter(name)))

    def unwatch(self) -> None:
        """Stop counting submodules; from now on `passes` = root calls x (passes per root call while watched)."""
        if not self._watching:
            return
        passes = self._watched_passes()
        self._factor = passes / self.calls if self.calls else max(passes, 1.0)
        for h in self._watching:
            h.remove()
        self._watching = []
        self._inside, self._total = {}, {}

    def _module_passes(self) -> dict[str, float]:
        """While watched: per submodule, its calls per micro-step over its calls per root forward, times the
        root's calls (a submodule only ever called outside the root: its calls)."""
        out = {}
        for name, total in self._total.items():
            inside = self._inside[name]
            out[name] = total * self.calls / inside if inside and self.calls else float(total)
        return out

    def _watched_passes(self) -> float:
        return max([float(self.calls), *self._module_passes().values()])

    @property
    def passes(self) -> float:
        """Forward passes: root calls, or more when a parameter-owning submodule ran more often than the root's
        forwards account for (its calls per root forward times the root's calls)."""
        return self._watched_passes() if self._watching else self.calls * self._factor

    def extra_passes(self) -> dict[str, float]:
        """While watched: submodules that ran more passes than the root did (name -> passes)."""
        return {name: p for name, p in self._module_passes().items() if p > self.calls}

    def reset(self) -> None:
        """Zero the root's count (the measured window starts); a watched step's factor is kept."""
        self.calls = 0
        self._inside = dict.fromkeys(self._inside, 0)
        self._total = dict.fromkeys(self._total, 0)

    def remove(self) -> None:
        """Detach the hooks."""
        self.unwatch()
        for h in self._handles:
            h.remove()


def _current_graph_task_id() -> int:
    """-1 outside a backward pass (the autograd engine's current graph task)."""
    return torch._C._current_graph_task_id()  # noqa: SLF001 (what torch.utils.checkpoint itself asks)


def count_flops(fn: Callable[[], Any]) -> tuple[Any, int]:
    """Run `fn` under `FlopCounter`; returns (fn's result, total FLOPs)."""
    with FlopCounter() as counter:
        out = fn()
    return out, counter.flops


class SavedTensors:
    """Bytes autograd keeps for the backward of one micro-step: activation memory, measured on any device.

    While active, every tensor saved for backward passes through a pack hook; its storage is counted once (views
    of one storage share it), parameters and buffers are left out (they exist anyway). A micro-step's forward
    ends where the first unpack (its backward) begins; `peak_bytes` is the largest micro-step's total over every
    step the probe was entered for. Regions under non-reentrant gradient checkpointing save through checkpoint's
    own hooks, so what they recompute is not counted: exactly the memory checkpointing saves, which a process's
    peak RSS (allocator caching, the optimizer's state) cannot show.
    """

    def __init__(self, model: nn.Module) -> None:
        self._kept = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        self._live: dict[int, int] = {}
        self._total = 0
        self._backward = False
        self.peak_bytes = 0
        """The largest micro-step's total over every use of this probe (one or several steps)."""

    def _pack(self, t: torch.Tensor) -> torch.Tensor:
        if self._backward:  # a save after a backward began: the next micro-step's forward
            self._live.clear()
            self._total, self._backward = 0, False
        try:
            storage = t.untyped_storage()
            ptr, nbytes = storage.data_ptr(), storage.nbytes()
        except (RuntimeError, NotImplementedError, TypeError):  # a tensor subclass without plain storage
            return t
        if ptr and ptr not in self._kept and ptr not in self._live:
            self._live[ptr] = nbytes
            self._total += nbytes
            self.peak_bytes = max(self.peak_bytes, self._total)
        return t

    def _unpack(self, t: torch.Tensor) -> torch.Tensor:
        self._backward = True
        return t

    def __enter__(self) -> SavedTensors:
        self._live.clear()  # a new step: its first micro-step starts from nothing
        self._total, self._backward = 0, False
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooks.__exit__(*exc)


class AttentionKernels(TorchDispatchMode):
    """Which fused-attention kernels ran while active: `torch.nn.functional.scaled_dot_product_attention` picks
    one per call (flash, memory-efficient, cuDNN, or the math fallback) by device, dtype and shape, and the pick
    reaches the dispatcher as its own aten op (`aten._scaled_dot_product_flash_attention_for_cpu`, ...).
    `kernels` holds the names without the ``_scaled_dot_product_`` prefix (backward ops folded into theirs)."""

    PREFIX = "_scaled_dot_product_"

    def __init__(self) -> None:
        super().__init__()
        self.kernels: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = func.overloadpacket.__name__
        if name.startswith(self.PREFIX):
            self.kernels.add(name[len(self.PREFIX):].removesuffix("_backward"))
        return func(*args, **(kwargs or {}))


class FlopCounter(AttentionKernels):
    """FLOPs of what runs while active, with torch's own formulas (`torch.utils.flop_counter`: matmul, conv and
    attention, forward and backward; optimizer and elementwise work are not counted, as in the usual 6N-per-token
    estimates), and the attention kernels that ran (`AttentionKernels`), in one dispatch pass.

    `FlopCounterMode` gives the same total (tested against it on every workload) at about three times the cost:
    it also tracks which module each op ran in (global module hooks), which a total does not need; on the DocTrans
    tiny preset's 32-micro-step step it took 7.2 s against 2.3 s here (the step alone: 0.7 s). As there, an op
    without a formula that has a composite decomposition is decomposed, so the matmuls inside it are counted.
    """

    def __init__(self) -> None:
        super().__init__()
        self.flops = 0
        self._composite: dict[Any, bool] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        formula = flop_registry.get(func._overloadpacket)
        if formula is None and self._decomposes(func):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = super().__torch_dispatch__(func, types, args, kwargs)
        if formula is not None:
            self.flops += int(formula(*args, **kwargs, out_val=out))
        return out

    def _decomposes(self, func: Any) -> bool:
        known = self._composite.get(func)
        if known is None:
            known = self._composite[func] = torch._C._dispatch_has_kernel_for_dispatch_key(
                func.name(), torch._C.DispatchKey.CompositeImplicitAutograd)
        return known


def peak_rss_self_gib() -> float:
    """This process's peak resident set size since it started (kernel high-water mark).

    On Linux this reads VmHWM of the current address space: ru_maxrss is carried across execve, so
    a worker started by a large parent (a pytest session, a notebook) would report the parent's peak.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024 / GIB  # kB
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is KiB on Linux, bytes on macOS.
    return peak / GIB if sys.platform == "darwin" else peak * 1024 / GIB


def reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark to its current RSS (Linux: ``echo 5 > clear_refs``), so
    `peak_rss_self_gib` measures a window rather than the process's whole life; False where unsupported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def cuda_peaks_gib(device: torch.device) -> tuple[float | None, float | None]:
    """(peak allocated, peak reserved) on a CUDA device since the last reset; (None, None) on CPU."""
    if device.type != "cuda":
        return None, None
    return (torch.cuda.max_memory_allocated(device) / GIB, torch.cuda.max_memory_reserved(device) / GIB)


def live_tensor_bytes() -> int:
    """Bytes of every tensor storage a Python object still reaches, each storage once, after a full garbage
    collection: parameters, optimizer state, whatever the step keeps. A deterministic count (not the allocator's,
    which a CPU does not expose and which caching blurs): a tensor kept per step is a slope over steps, to the byte.
    Walks every tracked object (~0.15 s in a process with torch loaded): for traced reference runs, never timed ones."""
    import gc
    import warnings

    gc.collect()
    seen: set[int] = set()
    total = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # isinstance on some torch module proxies warns of deprecation
        for obj in gc.get_objects():
            if not isinstance(obj, torch.Tensor) or obj.is_meta:
                continue
            try:
                storage = obj.untyped_storage()
                ptr = storage.data_ptr()
            except (RuntimeError, NotImplementedError):  # a fake or functional tensor: no storage of its own
                continue
            if ptr and ptr not in seen:
                seen.add(ptr)
                total += storage.nbytes()
    return total
