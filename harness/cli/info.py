"""What is here: `list` (workloads, presets, knobs, experiments) and `doctor` (the machine; --mde)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from harness import registry
from harness.cli.common import (
    experiments_dir,
    machine_text,
    progress,
    split_args,
)
from harness.config import knob_table
from harness.experiment import (
    build,
)
from harness.registry import resolve
from harness.results import load_records
from harness.runner import run_experiment


def cmd_list(args: argparse.Namespace) -> int:
    """Workloads, presets (with parameter counts), knobs and bundled experiments."""
    workloads = registry.builtin()
    names = [args.workload] if args.workload else sorted(workloads)
    shown_generic = False
    for name in names:
        wl = registry.get(name)
        print(f"## {wl.name}: {wl.description}\n")
        print("| preset | parameters | for | description |\n|---|---|---|---|")
        for pname, preset in wl.presets.items():
            try:
                params = f"{wl.parameter_count(resolve(name, {'preset': pname})):,}"
            except ValueError as exc:
                params = f"n/a ({exc})"
            default = " (default)" if pname == wl.default_preset else ""
            print(f"| {pname}{default} | {params} | {preset.device_hint} | {preset.doc} |")
        rows = [r for r in knob_table(wl) if args.all_knobs or not shown_generic or
                r["knob"] in {k.name for k in wl.knobs}]
        shown_generic = True
        print("\n| knob | type | allowed | default | kind | what it does |\n|---|---|---|---|---|---|")
        for r in rows:
            allowed = r["allowed"].replace("|", "\\|") if r["knob"] != "preset" else "a preset above"
            default = str(r["default"]).lower() if isinstance(r["default"], bool) else r["default"]
            print(f"| {r['knob']} | {r['type']} | {allowed} | {default} | {r['kind']} | {r['doc']} |")
        print()
    print("kinds: exact = same function; approx = same within dtype tolerance; quality = changes training; "
          "budget = how long it runs")
    exps = sorted(experiments_dir().glob("*.toml"))
    if exps:
        print("\nexperiments: " + ", ".join(str(p) for p in exps))
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    """What this machine can measure; with --mde, the smallest slowdown its comparisons detect."""
    if args.mde:
        return _doctor_mde(args)
    if args.items:
        raise ValueError(f"doctor: {' '.join(args.items)}: a workload and knobs go with --mde "
                         "(trainbench doctor --mde WORKLOAD [key=value ...])")
    import platform

    import psutil
    import torch

    from harness.probes.sampler import ResourceSampler
    from harness.results import collect_env

    env = collect_env()
    print("| fact | value |\n|---|---|")
    for key in ("python", "os", "cpu_model", "cpu_cores", "torch", "cuda", "cudnn", "gpu_name", "gpu_driver",
                "git_commit", "git_dirty"):
        print(f"| {key} | {env.get(key)} |")
    print(f"| memory | {psutil.virtual_memory().total / 1024**3:.1f} GiB |")
    print(f"| machine | {platform.machine()} |")
    cuda = torch.cuda.is_available()
    sampler = ResourceSampler(0 if cuda else None)
    bf16_cpu = torch.backends.mkldnn.is_available()
    print("\nwill be measured here:")
    print(f"  step timing: {'CUDA events' if cuda else 'host clock (perf_counter)'}")
    print("  phase breakdown, forward calls, FLOPs (torch.utils.flop_counter), peak RSS incl. workers, CPU util")
    print(f"  CUDA memory peaks: {'yes' if cuda else 'no (no CUDA device)'}")
    print(f"  NVML GPU util / memory / power / energy: {sampler.nvml_status}")
    print(f"  amp=bf16: {'yes' if cuda or bf16_cpu else 'no'}; amp=fp16: "
          f"{'yes, with GradScaler' if cuda else 'runs on CPU but is usually slower (warned)'}")
    print(f"  DataLoader workers: up to {os.cpu_count()} (more are capped with a warning)")
    print("\nthe machine now:")
    print(machine_text())
    return 0


MDE_AT = (5, 10)
"""Repeats `doctor --mde` quotes: the fewest a sweep stops on (`stats.MIN_STOP_REPEATS`) and the most a sweep or the
old-against-new gate adds (their default `max_repeats`)."""


def _doctor_mde(args: argparse.Namespace) -> int:
    """Run an A/A experiment of WORKLOAD (default: lm) through the sweep path and print the slowdown detected with
    80% power at a sweep's and the gate's repeats; the figure goes to the history, where reports quote it."""
    import tempfile

    from harness import history
    from harness.analysis.power import Detectable, aa_log_ratios
    from harness.results import collect_env

    names, knobs = split_args(args.items)
    if len(names) > 1:
        raise ValueError(f"doctor --mde: one workload, got {' '.join(names)}; e.g. trainbench doctor --mde lm")
    if args.repeats < 3:
        raise ValueError(f"doctor --mde --repeats {args.repeats}: use 3 or more (an interval needs 3 per side)")
    workload = names[0] if names else "lm"
    seed = registry.resolve(workload, knobs).seed
    exp = build(f"mde-{workload}", workload, knobs, {"aa": {"seed": seed}}, repeats=args.repeats, equivalence=False,
                allow_same=True, target_half_width_pct=0.0)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="trainbench-mde-") as tmp:
        run_experiment(exp, Path(tmp) / "aa", progress=progress)
        records = load_records(Path(tmp) / "aa")
    took = time.perf_counter() - start
    label = " ".join([workload, *(f"{k}={v}" for k, v in knobs.items())])
    found = Detectable.from_log_ratios(label, aa_log_ratios(records, "baseline", "aa"), MDE_AT)
    env = next((r.env for r in records if r.env), collect_env())
    entry = {"machine": history.machine_fingerprint(env), "workload": label, "repeats": found.repeats,
             "sd_pct": found.sd_pct, "aa_ratio": found.aa_ratio,
             "slowdown_pct": {str(n): p for n, p in found.slowdown_pct.items()},
             "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "commit": env.get("git_commit"), "seconds": took}
    history.append_history(entry, history.mde_path())
    print(found.describe())
    print(f"  a sweep stopping at {MDE_AT[0]} repeats resolves a slowdown of {found.slowdown_pct[MDE_AT[0]]:.1f}% "
          f"4 times in 5; at its maximum of {MDE_AT[1]} (and the old-against-new gate's), "
          f"{found.slowdown_pct[MDE_AT[1]]:.1f}%")
    print(f"  smaller changes are not \"no regression\" on this machine, only undetected; measured in {took:.0f} s, "
          f"recorded in {history.mde_path()}")
    return 0
