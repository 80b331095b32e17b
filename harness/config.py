"""RunConfig: every knob of one run, resolved and validated.

Resolution order: knob default < preset < experiment baseline < variant < command line. Every value
passes through its `Knob.parse`, so a bad key or value is a ValueError that names the key, the bad
value and what is allowed, before anything runs or is written.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from harness.knobs import GENERIC_BY_NAME, GENERIC_KNOBS, NEEDS_WORKLOAD_SUPPORT, Knob

if TYPE_CHECKING:
    from harness.workload import Workload


@dataclass(frozen=True, kw_only=True, slots=True)
class RunConfig:
    """The resolved knobs of one run. Read knobs as attributes: ``cfg.batch_size``, ``cfg.forward``.

    Knob values live in one mapping rather than one field each so that `harness.knobs` stays the
    single table of knobs (a second hand-written list of fields would drift from it).
    """

    workload: str
    """Registered name or ``module:object`` path."""
    values: Mapping[str, Any]
    """Every knob, generic and workload-specific, resolved."""
    workload_object: Workload | None = field(default=None, compare=False, repr=False)
    """The Workload the config was resolved against; not serialized (`to_dict`) and not compared."""

    def __getattr__(self, name: str) -> Any:
        # Only called when normal attribute lookup fails, i.e. for knob names.
        try:
            return object.__getattribute__(self, "values")[name]
        except KeyError:
            raise AttributeError(name) from None

    def get_workload(self) -> Workload:
        """The workload object this config is for."""
        if self.workload_object is not None:
            return self.workload_object
        # A config built by hand carries no Workload; the registry is imported here, not at the top,
        # because it imports the workload packages (and they import this module).
        from harness import registry

        return registry.get(self.workload)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form: ``{"workload": ..., knob: value, ...}``."""
        return {"workload": self.workload, **dict(self.values)}

    def replace(self, **overrides: Any) -> RunConfig:
        """A new, re-validated config with some knobs changed."""
        return resolve(self.get_workload(), {**self.values, **overrides}, name=self.workload)

    def diff(self, other: RunConfig) -> dict[str, tuple[Any, Any]]:
        """Knobs whose values differ: name -> (self's, other's)."""
        return {k: (self.values[k], other.values.get(k)) for k in self.values
                if self.values[k] != other.values.get(k)}


def all_knobs(workload: Workload) -> dict[str, Knob]:
    """Generic knobs followed by the workload's own."""
    return {**GENERIC_BY_NAME, **{k.name: k for k in workload.knobs}}


def _unknown(key: str, known: Iterable[str], workload: str) -> ValueError:
    close = difflib.get_close_matches(key, list(known), n=1)
    hint = f"; did you mean '{close[0]}'?" if close else "; `trainbench list` shows every knob"
    return ValueError(f"unknown knob '{key}' for workload '{workload}'{hint}")


def resolve(workload: Workload, *layers: Mapping[str, Any], name: str | None = None) -> RunConfig:
    """Resolve knob layers (later wins) on top of the workload's preset and the defaults.

    `name` is what the config records as its workload (a registered name or a ``module:object``
    path, so a child process can find the workload again); default ``workload.name``. Look a
    workload up by name with `harness.registry.resolve`.
    """
    wl, recorded_name = workload, name or workload.name
    knobs = all_knobs(wl)
    merged: dict[str, Any] = {}
    for layer in layers:
        for key, raw in layer.items():
            if key == "workload":
                continue
            if key not in knobs:
                raise _unknown(key, knobs, wl.name)
            merged[key] = raw

    preset_name = knobs["preset"].parse(merged.get("preset", "")) or wl.default_preset
    if preset_name not in wl.presets:
        raise ValueError(f"knob 'preset': bad value {preset_name!r} for workload '{wl.name}'; "
                         f"allowed: {' | '.join(wl.presets)}")
    preset = wl.presets[preset_name]

    values: dict[str, Any] = {name: k.default for name, k in knobs.items()}
    for key, raw in preset.values.items():
        assert key in knobs, f"preset {wl.name}.{preset_name} sets unknown knob {key}"
        values[key] = knobs[key].parse(raw)
    for key, raw in merged.items():
        values[key] = knobs[key].parse(raw)
    values["preset"] = preset_name

    for name in sorted(NEEDS_WORKLOAD_SUPPORT - wl.supports):
        if values[name] != GENERIC_BY_NAME[name].default:
            supported = ", ".join(sorted(wl.supports)) or "none of them"
            raise ValueError(f"knob '{name}' is not supported by workload '{wl.name}' "
                             f"(it supports: {supported}); remove '{name}={values[name]}'")
    if values["compile_mode"] != "default" and not values["compile"]:
        raise ValueError(f"knob 'compile_mode': {values['compile_mode']} applies only to a compiled model; "
                         "add compile=true or drop compile_mode")
    if values["device"] == "cuda" and not torch.cuda.is_available():
        raise ValueError("knob 'device': bad value 'cuda': no CUDA GPU is visible to torch here; "
                         "use device=cpu or device=auto")
    check_parallel(values)
    cfg = RunConfig(workload=recorded_name, values=MappingProxyType(values), workload_object=wl)
    wl.validate(cfg)
    return cfg


def check_parallel(values: Mapping[str, Any]) -> None:
    """ValueError (one line, naming the knob and what is allowed) for a data-parallel setting this machine cannot
    run: more ranks than cores (CPU) or GPUs (CUDA), fsdp off CUDA, several nodes without a rendezvous endpoint."""
    from harness.machine import usable_cores

    ddp, cuda = values["ddp"], device_type(values["device"]) == "cuda"
    if cuda:
        gpus = torch.cuda.device_count()
        if ddp > gpus:
            raise ValueError(f"knob 'ddp': bad value {ddp} with device=cuda: {gpus} GPU(s) visible here, one rank "
                             f"per GPU; allowed: 1..{gpus}")
    elif ddp > usable_cores():
        raise ValueError(f"knob 'ddp': bad value {ddp} on the CPU: {usable_cores()} usable cores here, one rank per "
                         f"core at least; allowed: 1..{usable_cores()}")
    if values["parallelism"] == "fsdp" and not cuda:
        # fully_shard runs on gloo, but 1 of 5 two-rank trial runs aborted (SIGABRT) on torch 2.13 CPU: not a
        # figure to publish.
        raise ValueError("knob 'parallelism': bad value 'fsdp' on the CPU: fully_shard is supported here on CUDA "
                         "(nccl) only; allowed on the CPU: ddp")
    if values["nnodes"] > 1 and not values["rdzv_endpoint"]:
        raise ValueError(f"knob 'nnodes': bad value {values['nnodes']} without rdzv_endpoint; allowed: 1, or set "
                         "rdzv_endpoint=HOST:PORT (the same on every node)")
    endpoint = values["rdzv_endpoint"]
    if endpoint and not (endpoint.rpartition(":")[0] and endpoint.rpartition(":")[2].isdigit()):
        raise ValueError(f"knob 'rdzv_endpoint': bad value {endpoint!r}; allowed: HOST:PORT, e.g. node0:29400")


def parse_overrides(items: Iterable[str]) -> dict[str, str]:
    """``["a=1", "b=x"]`` -> ``{"a": "1", "b": "x"}``; ValueError for an item without '='."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"override '{item}' is not key=value; write e.g. batch_size=64")
        out[key.strip()] = value
    return out


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML file; ValueError with the file and the parser's message when malformed."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"experiment file '{p}' does not exist; `trainbench list` shows the bundled ones")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"malformed TOML in '{p}': {exc}") from None


def device_type(device: str) -> str:
    """"cuda" or "cpu" for the `device` knob's value (auto: cuda when torch sees a GPU)."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_device(cfg: RunConfig) -> torch.device:
    """The torch device a config runs on."""
    return torch.device(device_type(cfg.device))


def runtime_warnings(cfg: RunConfig, device: torch.device) -> list[str]:
    """Legal settings that do nothing or hurt on this machine: one line each, recorded in the run."""
    warnings: list[str] = []
    cores = os.cpu_count() or 1
    if device.type == "cpu":
        if cfg.pin_memory:
            warnings.append("pin_memory=true has no effect on a CPU run (nothing is copied to a GPU)")
        if cfg.amp == "fp16":
            warnings.append("amp=fp16 on a CPU: autocast fp16 is emulated on most CPUs and usually slower")
        if cfg.tf32:
            warnings.append("tf32=true has no effect on a CPU run")
    if cfg.ddp == 1 and cfg.parallelism != GENERIC_BY_NAME["parallelism"].default:
        warnings.append(f"parallelism={cfg.parallelism} is ignored with ddp=1 (one process)")
    if cfg.num_workers > cores:
        warnings.append(f"num_workers={cfg.num_workers} exceeds the {cores} CPU cores here; "
                        f"capped at {cores}")
    if cfg.num_workers == 0 and cfg.persistent_workers:
        warnings.append("persistent_workers=true is ignored with num_workers=0")
    if cfg.num_workers == 0 and cfg.prefetch_factor != GENERIC_BY_NAME["prefetch_factor"].default:
        warnings.append("prefetch_factor is ignored with num_workers=0")
    return warnings


def knob_table(workload: Workload) -> list[dict[str, Any]]:
    """Rows describing every knob for `trainbench list`."""
    rows = []
    for knob in [*GENERIC_KNOBS, *workload.knobs]:
        if knob.name in NEEDS_WORKLOAD_SUPPORT and knob.name not in workload.supports:
            continue
        rows.append({"knob": knob.name, "type": knob.type.__name__, "allowed": knob.allowed(),
                     "default": knob.default, "kind": knob.kind, "doc": knob.doc})
    return rows
