"""Finding workloads: the packages under `models/`, installed entry points, or a `module:object` path.

The harness never imports a model by name. A package `models/<name>/` that exposes ``WORKLOAD`` is
found by scanning; a third-party package registers under the ``trainbench.workloads`` entry-point
group; a user's own workload is named as ``package.module:object`` on the command line.
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
import zlib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from harness import config
from harness.knobs import GENERIC_BY_NAME
from harness.workload import Workload

REQUIRED = {"name": str, "description": str, "presets": Mapping, "default_preset": str, "primary_metric": str}
"""Class attributes every workload sets (see `harness.workload.Workload`)."""


def _check(obj: object, where: str) -> Workload:
    """The workload `obj` names, checked before anything runs: ValueError (one line naming the fix) for a
    missing method or attribute, a preset that is not there, or a knob that clashes with a generic one."""
    if isinstance(obj, type) and issubclass(obj, Workload):
        missing = sorted(getattr(obj, "__abstractmethods__", ()))
        if missing:
            raise ValueError(f"workload '{where}' does not implement {', '.join(missing)}; define "
                             f"{'them' if len(missing) > 1 else 'it'} (see harness/workload.py) or use "
                             "trainbench.SimpleWorkload")
        obj = obj()
    if not isinstance(obj, Workload):
        raise ValueError(f"workload '{where}' is a {type(obj).__name__}, not a harness.workload.Workload; "
                         "point to a Workload instance or subclass (or build one with trainbench.SimpleWorkload)")
    for attr, kind in REQUIRED.items():
        if not isinstance(getattr(obj, attr, None), kind):
            raise ValueError(f"workload '{where}' has no {attr} ({kind.__name__}); set the class attribute {attr} "
                             "(see harness/workload.py)")
    if obj.default_preset not in obj.presets:
        raise ValueError(f"workload '{where}': default_preset {obj.default_preset!r} is not one of its presets "
                         f"({', '.join(obj.presets) or 'none'}); add it to presets or name an existing one")
    clash = sorted({k.name for k in obj.knobs} & set(GENERIC_BY_NAME))
    if clash:
        raise ValueError(f"workload '{where}' declares knob(s) {', '.join(clash)}, which every workload already "
                         f"has (generic knobs); rename {'them' if len(clash) > 1 else 'it'} or drop the declaration "
                         "and read cfg." + clash[0])
    return obj


@cache
def builtin() -> dict[str, Workload]:
    """Workloads shipped under `models/` plus installed entry points, by name."""
    found: dict[str, Workload] = {}
    try:
        models = importlib.import_module("models")
    except ModuleNotFoundError:
        models = None
    if models is not None:
        for info in sorted(pkgutil.iter_modules(models.__path__), key=lambda m: m.name):
            if not info.ispkg:
                continue
            module = importlib.import_module(f"models.{info.name}")
            if hasattr(module, "WORKLOAD"):
                wl = _check(module.WORKLOAD, f"models.{info.name}")
                found[wl.name] = wl
    for ep in entry_points(group="trainbench.workloads"):
        if ep.name not in found:
            found[ep.name] = _check(ep.load(), ep.value)
    return found


def _package(name: str) -> Workload | None:
    """Fast path: the workload `name` from `models/<name>/` without importing every other workload."""
    if not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"models.{name}")
    except ModuleNotFoundError as exc:
        if exc.name in (f"models.{name}", "models"):
            return None
        raise
    wl = getattr(module, "WORKLOAD", None)
    return _check(wl, f"models.{name}") if wl is not None and wl.name == name else None


_importing_script = False
"""True while `script_module` runs a script's top level (`harness.api` refuses to start an experiment then)."""


def importing_script() -> bool:
    """Whether a workload script's top level is running now, imported by `script_module`."""
    return _importing_script


def script_module(path: str) -> ModuleType:
    """The module of a workload script (``path/to/script.py``): the running ``__main__`` when it is that
    script, else the file imported once under a private name (its ``if __name__ == "__main__":`` block,
    which starts the experiment, does not run again)."""
    file = Path(path).resolve()
    main = sys.modules.get("__main__")
    if getattr(main, "__file__", None) and Path(main.__file__).resolve() == file:
        return main
    if not file.is_file():
        raise ValueError(f"workload script '{path}' does not exist; give the path of the .py file that defines it")
    name = f"trainbench_script_{file.stem}_{zlib.crc32(str(file).encode()):08x}"
    if name not in sys.modules:
        global _importing_script
        spec = importlib.util.spec_from_file_location(name, file)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        _importing_script = True
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[name]
            raise
        finally:
            _importing_script = False
    return sys.modules[name]


def get(name: str) -> Workload:
    """A workload by registered name, ``module:object`` or ``script.py:object`` path; ValueError names the
    choices."""
    if ":" in name:
        module_name, _, attr = name.rpartition(":")
        try:
            module = script_module(module_name) if module_name.endswith(".py") else \
                importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"workload '{name}': cannot import module '{module_name}' ({exc}); "
                             "check the path and that it is on PYTHONPATH") from None
        if not hasattr(module, attr):
            raise ValueError(f"workload '{name}': module '{module_name}' has no attribute '{attr}'")
        return _check(getattr(module, attr), name)
    fast = _package(name)
    if fast is not None:
        return fast
    workloads = builtin()
    if name not in workloads:
        raise ValueError(f"unknown workload '{name}'; available: {', '.join(sorted(workloads)) or 'none'} "
                         "(or a module:object path to your own Workload)")
    return workloads[name]


def resolve(name: str, *layers: Mapping[str, Any]) -> config.RunConfig:
    """`harness.config.resolve` for the workload registered as (or at the path) `name`."""
    return config.resolve(get(name), *layers, name=name)
