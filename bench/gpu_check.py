"""A prepared, unattended GPU check: every workload x amp through the trainer, its clocks and probes checked.

Run it once, the moment a CUDA machine is lent (8 minutes at most, start-up and report included):

    PYTHONPATH=. python bench/gpu_check.py --out DIR [--budget-s 460] [--workloads lm,gpcm,sudoku,doctrans]

Each run (workload x amp off | bf16 | fp16, device=cuda) trains in its own process through
`harness.worker` with a timeout. Checked per run: the CUDA-event step times (PhaseClock) summed against
the synchronized host clock over the same window (`train_wall_s`), within 2%; NVML utilisation, memory,
power and energy present and plausible; MFU against the cited peak in `harness.analysis.cost`; CUDA
memory peaks. Writes DIR/gpu_check.md and DIR/gpu_check.json and prints the markdown. Exit 0 when it
ran (failed checks are in the files), 2 for bad arguments. Without a GPU: one line, exit 0, nothing
written. `--device cpu --preset tiny` (hidden) runs the whole pipeline on a CPU for tests.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1
AMPS = ("off", "bf16", "fp16")
CLOCK_TOLERANCE = 0.02
POWER_RANGE_W = (10.0, 1500.0)
RUN_TIMEOUT_S = 150.0  # one run's ceiling, start-up included
MIN_RUN_S = 30.0  # a run is skipped when less than this is left: process + CUDA start-up alone takes ~10 s
RESERVE_S = 10.0  # kept back for writing the report

# The GPU size of each workload: its source-note preset at the preset's batch size, with a budget short
# enough for three precisions in the time box. Step counts aim at a measured window of about a second or
# more on an H200, so NVML (sampled every 0.2 s) has several samples; estimated from FLOPs, not yet measured.
GPU_RUNS: dict[str, tuple[str, dict[str, Any]]] = {
    "lm": ("seed_large", {"bench_warmup_steps": 5, "bench_steps": 100}),
    "gpcm": ("seed", {"bench_warmup_steps": 5, "bench_steps": 30}),
    # n_train: the seed's 360k puzzles only change how long generation takes, not a step.
    "sudoku": ("seed", {"bench_warmup_steps": 5, "bench_steps": 50, "n_train": 8192, "n_eval": 256}),
    # 213M params at 768x512: micro-batch 2 as in the seed note, but 4 micro-batches per step instead of
    # 16 (an fp32 step of 2 x 16 takes seconds) and few pages, which only shortens generation.
    "doctrans": ("seed", {"bench_warmup_steps": 3, "bench_steps": 12, "grad_accum": 4,
                          "train_samples": 16, "eval_samples": 4}),
}


# --- the seam to the harness: every call into it goes through these functions -----------------------

def _resolve(workload: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """The full, validated knobs of one run as a plain dict (ValueError names a bad knob)."""
    from harness.registry import resolve

    return resolve(workload, dict(overrides)).to_dict()


def _launcher(workloads: Sequence[str]) -> Any:
    """The harness's process launcher: a fork server preloaded with the workloads, or plain processes."""
    import subprocess

    from harness.launch import ForkServer, Launcher

    try:
        return ForkServer([f"models.{name}" for name in workloads])
    except (OSError, RuntimeError, subprocess.TimeoutExpired):
        return Launcher()


def _run_isolated(launcher: Any, config: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    """Train `config` in a fresh process via harness.worker; gpu_check's row fields (metric names live here)."""
    from harness.jobs import Job

    job = Job(experiment="gpu_check", variant=f"{config['workload']}_{config['amp']}", phase="speed", repeat=0,
              config=config, timeout_s=timeout_s)
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        outcome = launcher.launch(job, Path(tmp))
    if outcome.result is None:  # hard death: killed on timeout, segfault
        status = "timeout" if outcome.timed_out else "crash"
        return {"status": status, "error": f"exit {outcome.returncode}; stderr: {outcome.stderr_tail[-1500:]}",
                "env": {}}
    res, m = outcome.result, outcome.result.get("metrics") or {}
    names = ("samples_per_s", "tokens_per_s", "step_ms_median", "train_wall_s", "measured_steps",
             "gpu_util_pct", "gpu_mem_used_gib", "gpu_power_w", "energy_j_per_sample", "mfu",
             "achieved_tflops", "cuda_peak_allocated_gib", "cuda_peak_reserved_gib")
    row = {name: _finite(m.get(name)) for name in names}
    env = res.get("env") or {}
    row.update(status=res.get("status", "crash"), error=res.get("error", ""), env=env,
               step_ms=[float(x) for x in res.get("step_ms") or []],
               nvml_status=env.get("note_nvml"), nvml_samples=len((res.get("timeline") or {}).get("t_s", [])),
               warnings=res.get("warnings") or [])
    return row


def _close(launcher: Any) -> None:
    """Stop the launcher (the fork server) if one was started; a stuck server must not cost the report."""
    if launcher is not None:
        with contextlib.suppress(Exception):
            launcher.close()


def _peak(gpu_name: str | None, config: Mapping[str, Any]) -> dict[str, Any] | None:
    """The peak TFLOP/s the trainer's MFU used, the precision, and which table entry matched."""
    from harness.analysis.cost import PEAK_TFLOPS, peak_tflops, precision

    found = peak_tflops(gpu_name, precision(config))
    if found is None:
        return None
    entry = next(key for key, _, source in PEAK_TFLOPS if source == found[1])
    return {"tflops": found[0], "precision": precision(config), "entry": entry, "source": found[1]}


# --- checks: pure functions of a run's row ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Check:
    """One verdict: PASS | FAIL | N/A, and why."""

    verdict: str
    detail: str


def _finite(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def clock_agreement(step_ms: Sequence[float], train_wall_s: float | None,
                    tolerance: float = CLOCK_TOLERANCE) -> tuple[float | None, Check]:
    """(relative difference, verdict) of sum(step_ms) / 1000 against the host window clock."""
    if not step_ms or not train_wall_s or train_wall_s <= 0:
        return None, Check("FAIL", "no measured steps or no window time")
    events_s = sum(step_ms) / 1000.0
    rel = (events_s - train_wall_s) / train_wall_s
    verdict = "PASS" if abs(rel) <= tolerance else "FAIL"
    return rel, Check(verdict, f"events {events_s:.4f} s vs window {train_wall_s:.4f} s: {rel:+.2%} "
                               f"(limit {tolerance:.0%})")


def _in_range(value: float | None, ok: Callable[[float], bool], rule: str, missing: str) -> Check:
    if value is None:
        return Check("FAIL", f"missing ({missing})")
    inside = ok(value)
    return Check("PASS" if inside else "FAIL", f"{value:.4g} {'within' if inside else 'outside'} {rule}")


def plausibility(row: Mapping[str, Any], *, on_cuda: bool, gpu_mem_total_gib: float | None) -> dict[str, Check]:
    """NVML, MFU and CUDA-memory checks of one run; N/A where they cannot apply (CPU, no cited peak)."""
    if not on_cuda:
        names = ("gpu_util_pct", "gpu_mem_used_gib", "gpu_power_w", "energy_j_per_sample", "mfu", "cuda_memory")
        return {name: Check("N/A", "not available (no CUDA device)") for name in names}
    total = gpu_mem_total_gib or math.inf
    lo, hi = POWER_RANGE_W
    rules: dict[str, tuple[Callable[[float], bool], str]] = {
        "gpu_util_pct": (lambda v: 0 < v <= 100, "(0, 100] %"),
        "gpu_mem_used_gib": (lambda v: 0 < v <= total, f"(0, {total:.4g}] GiB"),
        "gpu_power_w": (lambda v: lo <= v <= hi, f"[{lo:g}, {hi:g}] W"),
        "energy_j_per_sample": (lambda v: v > 0, "(0, inf) J"),
    }
    why = f"nvml: {row.get('nvml_status')}"
    out = {name: _in_range(row.get(name), ok, rule, why) for name, (ok, rule) in rules.items()}
    out["mfu"] = Check("N/A", "no cited peak for this GPU and precision") if row.get("peak") is None else \
        _in_range(row.get("mfu"), lambda v: 0 < v <= 1, "(0, 1]", "no FLOP count")
    alloc, reserved = row.get("cuda_peak_allocated_gib"), row.get("cuda_peak_reserved_gib")
    ok = alloc is not None and reserved is not None and 0 < alloc <= reserved <= total
    out["cuda_memory"] = Check("PASS" if ok else "FAIL", f"allocated {alloc} <= reserved {reserved} <= {total:.4g} GiB")
    return out


def check_run(row: dict[str, Any], *, on_cuda: bool, gpu_mem_total_gib: float | None) -> dict[str, Check]:
    """Every check of one run; a run that did not finish fails 'run' and has N/A elsewhere."""
    if row["status"] != "ok":
        first_line = (row.get("error") or "").strip().splitlines()[:1]
        return {"run": Check("FAIL", f"{row['status']}: {first_line[0] if first_line else 'no error text'}")}
    row["clock_rel_diff"], clock = clock_agreement(row["step_ms"], row["train_wall_s"])
    return {"run": Check("PASS", "ok"), "clock_agreement": clock,
            **plausibility(row, on_cuda=on_cuda, gpu_mem_total_gib=gpu_mem_total_gib)}


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Check]:
    """One PASS/FAIL line per check over all runs (N/A runs excluded; none applicable = N/A)."""
    names = dict.fromkeys(name for row in rows for name in row["checks"])
    out = {}
    for name in names:
        verdicts = [row["checks"][name].verdict for row in rows if name in row["checks"]]
        failed = [f"{row['workload']}/{row['amp']}" for row in rows
                  if name in row["checks"] and row["checks"][name].verdict == "FAIL"]
        applicable = [v for v in verdicts if v != "N/A"]
        if not applicable:
            out[name] = Check("N/A", "not applicable to any run")
        else:
            out[name] = Check("FAIL" if failed else "PASS", f"{len(applicable) - len(failed)}/{len(applicable)} pass"
                              + (f"; failed: {', '.join(failed)}" if failed else ""))
    return out


# --- report ----------------------------------------------------------------------------------------------

def _fmt(x: Any, spec: str = ".4g") -> str:
    return "—" if x is None else format(x, spec)


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as markdown: header, one PASS/FAIL line per check, one table row per workload x amp."""
    env = report["env"]
    lines = ["# trainbench GPU check", "",
             f"GPU: {env.get('gpu_name') or '—'} ({_fmt(env.get('gpu_mem_total_gib'), '.1f')} GiB), "
             f"driver {env.get('gpu_driver') or '—'}, torch {env.get('torch') or '—'}, CUDA {env.get('cuda') or '—'}, "
             f"device {report['device']}, budget {report['budget_s']:g} s", ""]
    lines += [f"- **{c['verdict']}** {name}: {c['detail']}" for name, c in report["summary"].items()]
    lines += [f"- note: {note}" for note in report["notes"]]
    lines += ["", "| workload | preset | amp | batch | status | samples/s | tokens/s | step ms (median, events) "
              "| Σ step s | window s | clock Δ | util % | mem GiB | power W | J/sample | MFU | peak TFLOP/s (entry) "
              "| alloc / reserved GiB | failed checks |", "|" + "---|" * 19]
    for r in report["runs"]:
        peak = r.get("peak")
        failed = [name for name, c in r["checks"].items() if c["verdict"] == "FAIL"]
        events_s = sum(r["step_ms"]) / 1000 if r.get("step_ms") else None
        cells = [r["workload"], r["preset"], r["amp"], r.get("batch", "—"), r["status"],
                 _fmt(r.get("samples_per_s"), ".1f"), _fmt(r.get("tokens_per_s"), ".0f"),
                 _fmt(r.get("step_ms_median"), ".2f"), _fmt(events_s, ".3f"), _fmt(r.get("train_wall_s"), ".3f"),
                 _fmt(r.get("clock_rel_diff"), "+.2%"), _fmt(r.get("gpu_util_pct"), ".0f"),
                 _fmt(r.get("gpu_mem_used_gib"), ".2f"), _fmt(r.get("gpu_power_w"), ".0f"),
                 _fmt(r.get("energy_j_per_sample"), ".3g"), _fmt(r.get("mfu"), ".1%"),
                 f"{peak['tflops']:g} {peak['precision']} ({peak['entry']})" if peak else "N/A",
                 f"{_fmt(r.get('cuda_peak_allocated_gib'), '.2f')} / {_fmt(r.get('cuda_peak_reserved_gib'), '.2f')}",
                 ", ".join(failed) or "none"]
        lines.append("| " + " | ".join(str(c).replace("|", "/") for c in cells) + " |")
    errors = [r for r in report["runs"] if r["status"] != "ok"]
    if errors:
        lines += ["", "## Runs that did not finish", ""]
        for r in errors:
            text = (r.get("error") or "").strip()[-1500:]
            lines += [f"**{r['workload']} / {r['amp']}**: {r['status']}", "", "```", text, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(report: dict[str, Any], out_dir: Path) -> str:
    """Write gpu_check.md and gpu_check.json into `out_dir`; returns the markdown."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = json.loads(json.dumps(report, default=lambda o: asdict(o) if isinstance(o, Check) else str(o)))
    markdown = render_markdown(report)
    (out_dir / "gpu_check.md").write_text(markdown)
    (out_dir / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    return markdown


# --- driver ----------------------------------------------------------------------------------------------

def run_all(args: argparse.Namespace, deadline: float) -> dict[str, Any]:
    """Every workload x amp in its own process, skipping what the budget no longer allows."""
    on_cuda = args.device == "cuda"
    launcher = None  # started with the first run: a check whose budget is already spent starts nothing
    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    try:
        for workload in args.workloads:
            preset, budget = (args.preset, {}) if args.preset else GPU_RUNS[workload]
            for amp in AMPS:
                row: dict[str, Any] = {"workload": workload, "preset": preset, "amp": amp, "step_ms": []}
                rows.append(row)
                # Budget bookkeeping only (a monotonic clock for the time box); nothing here is measured.
                left = deadline - time.monotonic() - RESERVE_S
                if left < MIN_RUN_S:
                    row.update(status="skipped", error=f"time budget: {left + RESERVE_S:.0f} s left")
                    notes.append(f"{workload}/{amp} skipped: the time budget ran low")
                    row["checks"] = check_run(row, on_cuda=on_cuda, gpu_mem_total_gib=None)
                    continue
                print(f"gpu_check: {workload} {preset} amp={amp} (timeout {min(RUN_TIMEOUT_S, left):.0f} s)",
                      file=sys.stderr, flush=True)
                try:
                    config = _resolve(workload, {"preset": preset, **budget, "amp": amp, "device": args.device})
                except ValueError as exc:
                    row.update(status="config-error", error=str(exc))
                else:
                    row["batch"] = f"{config['batch_size']} x {config['grad_accum']}"
                    launcher = launcher or _launcher(args.workloads)
                    try:
                        row.update(_run_isolated(launcher, config, min(RUN_TIMEOUT_S, left)))
                    except Exception as exc:  # the launcher itself broke (fork server died): a row, not the end
                        row.update(status="crash", error=f"launcher: {type(exc).__name__}: {exc}", env={})
                        _close(launcher)
                        launcher = None
                    row["peak"] = _peak(row["env"].get("gpu_name"), config)
                row["checks"] = check_run(row, on_cuda=on_cuda,
                                          gpu_mem_total_gib=(row.get("env") or {}).get("gpu_mem_total_gib"))
    finally:
        _close(launcher)
    import torch

    env = next((r["env"] for r in rows if r.get("env")), {"torch": torch.__version__, "cuda": torch.version.cuda})
    for r in rows:
        r.pop("env", None)  # one environment for the whole check, in the header
    return {"schema_version": SCHEMA_VERSION, "device": args.device, "budget_s": args.budget_s,
            "env": {k: v for k, v in env.items() if not k.startswith("note_")},
            "summary": summarize(rows), "notes": notes, "runs": rows}


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    """The command line; argparse exits 2 on a bad argument."""
    parser = argparse.ArgumentParser(prog="gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="directory for gpu_check.md and gpu_check.json")
    parser.add_argument("--budget-s", type=float, default=460.0, help="total wall-time budget in seconds")
    parser.add_argument("--workloads", default=",".join(GPU_RUNS), help="comma-separated subset of workloads")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda", help=argparse.SUPPRESS)
    parser.add_argument("--preset", default="", help=argparse.SUPPRESS)  # e.g. tiny: a CPU dry run for tests
    args = parser.parse_args(argv)
    args.workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]
    unknown = [w for w in args.workloads if w not in GPU_RUNS]
    if unknown or not args.workloads:
        parser.error(f"--workloads: unknown {unknown or 'empty list'}; allowed: {', '.join(GPU_RUNS)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s: {args.budget_s:g} must be positive")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out: '{args.out}' exists and is not a directory")
    return args


def main(argv: Sequence[str]) -> int:
    """Parse, check for a GPU, run, write and print the report."""
    start = time.monotonic()  # for the time box only
    args = parse_args(argv)
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("gpu_check: no CUDA GPU visible to torch here; nothing to check (run it on a GPU machine)")
        return 0
    report = run_all(args, start + args.budget_s)
    print(write_report(report, args.out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
