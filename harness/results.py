"""Run records: immutable, schema-versioned, appended atomically to `records.jsonl`.

One record per (variant, phase, repeat). ``phase`` is ``speed`` (a timed window of optimizer steps),
``quality`` (training for epochs, with evals and a curve), or ``equivalence`` (one step of a
variant against the baseline from the same weights and batch). A crash, OOM, NaN or timeout is a
record too, with its status and the child's error text, so a sweep never loses the other variants.
"""

from __future__ import annotations

import fcntl
import gzip
import json
import os
import platform
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 5
READABLE_SCHEMA_VERSIONS = (1, 2, 3, 4, 5)
"""Version 2 added step_cpu_ms, contention, pairing and attempt; version 3 ranks; version 4 state; version 5 totals
(defaults make older lines valid; `totals_of` recovers an older record's totals from its rates)."""
STATUSES = ("ok", "oom", "nan", "crash", "timeout", "skipped")
PHASES = ("speed", "quality", "equivalence")
RECORDS_FILE = "records.jsonl"
EXPERIMENT_FILE = "experiment.json"
"""The experiment a results directory was produced by (written by the runner)."""
WORKLOAD_FILE = "workload.json"
"""What analysis needs about the workload: knob kinds, metric directions, cost model."""
PRECISION_FILE = "precision.json"
"""Beside the records: contention re-runs, seconds spent on added repeats, and what stayed unresolved."""

# Scalar speed / resource metrics every run may carry (None when not measured here).
METRICS = (
    "steps_per_s", "it_per_s", "samples_per_s", "tokens_per_s", "padded_tokens_per_s",
    "step_ms_median", "step_ms_p10", "step_ms_p90", "step_ms_mean",
    "forward_calls_per_step", "flops_per_step", "flops_per_sample", "achieved_tflops", "mfu",
    "peak_rss_gib", "cuda_peak_allocated_gib", "cuda_peak_reserved_gib", "saved_tensors_gib",
    "gpu_util_pct", "gpu_mem_used_gib", "gpu_power_w", "energy_j_per_sample", "cpu_util_pct",
    "samples_per_step", "real_tokens_per_step", "padded_tokens_per_step", "param_count",
    "train_wall_s", "measured_steps", "final_loss", "best_epoch", "epochs_run", "instrument_overhead_pct",
    "step_cpu_ms_median", "torch_threads", "compile_s", "recompiles", "compile_in_window_s",
    # data-parallel runs (`harness.distributed.gather`)
    "world_size", "communication_ms", "communication_pct", "rank_skew_ms", "rank_skew_pct", "allreduce_busbw_gbps",
)
PHASE_NAMES = ("data", "forward", "loss", "backward", "communication", "optimizer", "other")
"""``communication``: data-parallel runs only, the gradient all-reduce time that did not overlap compute."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Record:
    """The result of one (variant, phase, repeat)."""

    experiment: str
    variant: str
    phase: str
    repeat: int
    workload: str
    preset: str
    seed: int
    config: Mapping[str, Any]
    """All knobs, resolved."""
    status: str
    error: str = ""
    """The child's error text (traceback tail) when status != ok."""
    env: Mapping[str, Any] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    metrics: Mapping[str, float | None] = field(default_factory=dict)
    """Named in `METRICS`."""
    phase_ms: Mapping[str, float] = field(default_factory=dict)
    """Median ms per optimizer step spent in each of `PHASE_NAMES`."""
    step_ms: tuple[float, ...] = ()
    """Every measured (post-warmup) optimizer step's wall time."""
    step_cpu_ms: tuple[float, ...] = ()
    """This process's CPU time of every measured step (host side), aligned with `step_ms`."""
    quality: Mapping[str, float] = field(default_factory=dict)
    """Final quality metrics (workload-defined names; ``ema_`` prefix for EMA weights)."""
    curve: tuple[Mapping[str, float], ...] = ()
    """Per eval: {"epoch", "step", "wall_s", "train_loss", <metrics>}; wall_s excludes eval time."""
    equivalence: Mapping[str, Any] = field(default_factory=dict)
    """For phase=equivalence: passed, max_abs_err, max_rel_err, tolerance, dtype, compared, reason."""
    timeline: Mapping[str, tuple[float, ...]] = field(default_factory=dict)
    """Sampler series: "t_s", "gpu_util_pct", "gpu_mem_used_gib", "gpu_power_w", "cpu_util_pct", "rss_gib"."""
    contention: Mapping[str, Any] = field(default_factory=dict)
    """The kernel's evidence over the measured window (`harness.probes.contention`) and its ``verdict``
    ("" when the run had its cores to itself)."""
    pairing: Mapping[str, Any] = field(default_factory=dict)
    """Runs of a group interleaved in one process: ``group`` (the members' labels), ``member`` (this
    record's index), ``variants`` (the members' variant names), ``first`` (per measured step: did this
    member go first in its round), ``shared`` (metrics that measured the whole process, every member's work:
    the sampler's on member 0, the peaks on all; not this member's own figure)."""
    state: Mapping[str, Any] = field(default_factory=dict)
    """The machine-state index (`harness.probes.state`): reference-kernel ms ``before`` the window opened and
    ``after`` it closed, the ``threads`` they ran on and their ``cost_s``; empty where not measured."""
    ranks: tuple[Mapping[str, Any], ...] = ()
    """Data-parallel runs (``ddp`` > 1): one summary per rank (`harness.distributed.rank_summary`): rank, status,
    error, window_s, samples, step_ms, busy_ms, communication_ms, peaks."""
    totals: Mapping[str, Any] = field(default_factory=dict)
    """The measured window's raw totals (`harness.rates.TOTAL_KEYS`: steps, micro-steps, samples, real and padded
    tokens, window seconds, FLOPs); every throughput in `metrics` is `harness.rates.rates(totals)`."""
    reused_from: str = ""
    """Quality records only: the variant whose run of the same seed this record repeats without training (the
    baseline's, for a variant proven to compute its function: `Experiment.quality_reuse`); empty when it ran."""
    attempt: int = 0
    """0 for the first run of this (variant, phase, repeat); n for the n-th re-run after contention."""
    wall_s: float = 0.0
    """Child process lifetime, seconds."""
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        assert self.status in STATUSES, self.status
        assert self.phase in PHASES, self.phase
        unknown = set(self.metrics) - set(METRICS)
        assert not unknown, f"unknown metrics {sorted(unknown)}"

    @property
    def window_totals(self) -> Mapping[str, Any]:
        """`totals`, or for a record written before records kept them, recovered from its rates."""
        from harness.rates import totals_from_metrics

        return self.totals or totals_from_metrics(self.metrics)

    @property
    def key(self) -> tuple[str, str, int]:
        """Identity within a sweep, used by --resume."""
        return (self.variant, self.phase, self.repeat)

    def to_json(self) -> str:
        """One JSON line."""
        return json.dumps(asdict(self), sort_keys=True, allow_nan=True, default=_json_default)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Record:
        """Inverse of `to_json` (tuples restored)."""
        version = data.get("schema_version")
        if version not in READABLE_SCHEMA_VERSIONS:
            raise ValueError(f"record schema version {version} is not {SCHEMA_VERSION}; "
                             "re-run the sweep with this trainbench version")
        d = dict(data)
        d["schema_version"] = SCHEMA_VERSION
        for key in ("warnings", "step_ms", "step_cpu_ms", "curve", "ranks"):
            d[key] = tuple(d.get(key, ()))
        d["timeline"] = {k: tuple(v) for k, v in d.get("timeline", {}).items()}
        return cls(**d)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def append(directory: str | os.PathLike[str], record: Record) -> None:
    """Append one record as one line: a single O_APPEND write under an exclusive lock, then fsync."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    line = (record.to_json() + "\n").encode()
    fd = os.open(path / RECORDS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def iter_records(directory: str | os.PathLike[str]) -> Iterator[Record]:
    """Records of a results directory in file order (`records.jsonl`, or a report's compressed copy
    `records.jsonl.gz`); a torn last line (killed writer) is skipped."""
    path = Path(directory) / RECORDS_FILE
    packed = path.with_name(RECORDS_FILE + ".gz")
    if path.exists():
        lines = path.read_text().splitlines()
    elif packed.exists():
        path = packed
        lines = gzip.decompress(packed.read_bytes()).decode().splitlines()
    else:
        return
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                continue  # the writer died mid-line; the run will be redone by --resume
            raise ValueError(f"{path}:{i + 1} is not valid JSON; the file was edited or corrupted") from None
        yield _parse_record(data, f"{path}:{i + 1}")


def _parse_record(data: Any, where: str) -> Record:
    """One line of records.jsonl as a `Record`; ValueError naming the file, line and problem."""
    fix = "the file was edited or corrupted: restore it or re-run the sweep"
    if not isinstance(data, dict):
        raise ValueError(f"{where} is a JSON {type(data).__name__}, not a record object; {fix}")
    required = [f.name for f in fields(Record) if f.default is MISSING and f.default_factory is MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{where} lacks the record field(s) {', '.join(missing)}; {fix}")
    unknown = sorted(set(data) - {f.name for f in fields(Record)})
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {', '.join(unknown)}; {fix}")
    if data["status"] not in STATUSES:
        raise ValueError(f"{where}: status {data['status']!r} is not one of {' | '.join(STATUSES)}; {fix}")
    try:
        return Record.from_dict(data)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ValueError(f"{where}: {exc}") from None


BUNDLE_DIR = "results"
"""The folder of a report that holds the results it was rendered from (records compressed)."""


def find_results(directory: str | os.PathLike[str]) -> Path:
    """The results directory `directory` names: itself, or the `results/` a report carries beside it."""
    path = Path(directory)
    bundled = path / BUNDLE_DIR
    has = [(d / RECORDS_FILE).exists() or (d / (RECORDS_FILE + ".gz")).exists() for d in (path, bundled)]
    return bundled if has[1] and not has[0] else path


def bundle(results_dir: str | os.PathLike[str], dest: str | os.PathLike[str]) -> Path:
    """Copy a results directory's records (gzip, no timestamp: the same records give the same bytes) and its
    JSON descriptions into `dest`, so a report carries what it was rendered from; returns `dest`."""
    src, dest = Path(results_dir), Path(dest)
    if src.resolve() == dest.resolve():
        return dest
    if dest.is_dir():  # an earlier bundle: none of its files may outlive it
        for old in [*dest.glob("*.json"), dest / (RECORDS_FILE + ".gz")]:
            old.unlink(missing_ok=True)
    dest.mkdir(parents=True, exist_ok=True)
    plain = src / RECORDS_FILE
    if plain.exists():
        with open(dest / (RECORDS_FILE + ".gz"), "wb") as raw, \
                gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as out:
            out.write(plain.read_bytes())
    elif (src / (RECORDS_FILE + ".gz")).exists():
        shutil.copyfile(src / (RECORDS_FILE + ".gz"), dest / (RECORDS_FILE + ".gz"))
    for f in sorted(src.glob("*.json")):
        shutil.copyfile(f, dest / f.name)
    return dest


def load_records(directory: str | os.PathLike[str]) -> list[Record]:
    """All records of a directory; ValueError if there is none."""
    records = list(iter_records(directory))
    if not records:
        raise ValueError(f"no records in '{directory}' (expected {RECORDS_FILE}); run `trainbench sweep` first")
    return records


def load(directory: str | os.PathLike[str], allow_mixed_machines: bool = False):
    """A pandas DataFrame, one row per record: identity columns, metrics, phase_ms_*, quality metrics.

    Refuses (ValueError) to mix records from different machines unless asked: speed figures from two
    machines are not comparable. Records that never ran on any machine (no env, or an equivalence check
    skipped by design: ``passed`` is None) do not count, as long as some that ran remain.
    """
    import pandas as pd

    records = load_records(directory)
    ran = [r for r in records if r.env and not (r.phase == "equivalence" and r.status == "ok"
                                                and r.equivalence.get("passed") is None)]
    machines = {machine_id(r.env) for r in ran or records}
    if len(machines) > 1 and not allow_mixed_machines:
        raise ValueError(f"'{directory}' mixes records from {len(machines)} machines ({sorted(machines)}); "
                         "compare them with `trainbench compare` or pass allow_mixed_machines=True")
    rows = []
    for r in records:
        row: dict[str, Any] = {
            "experiment": r.experiment, "variant": r.variant, "phase": r.phase, "repeat": r.repeat,
            "workload": r.workload, "preset": r.preset, "seed": r.seed, "status": r.status,
            "error": r.error, "wall_s": r.wall_s, "n_warnings": len(r.warnings),
        }
        row.update({m: r.metrics.get(m) for m in METRICS})
        row.update({f"phase_ms_{p}": r.phase_ms.get(p) for p in PHASE_NAMES})
        row.update(dict(r.quality))
        if r.equivalence:
            row.update({f"equiv_{k}": v for k, v in r.equivalence.items()})
        rows.append(row)
    return pd.DataFrame(rows)


def machine_id(env: Mapping[str, Any]) -> str:
    """What makes two records' timings comparable: host, CPU model and GPU."""
    return f"{env.get('hostname', '?')}/{env.get('cpu_model', '?')}/{env.get('gpu_name') or 'no-gpu'}"


def _git(*args: str, cwd: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=5,
                             cwd=cwd or Path(__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _ram_total_gib() -> float | None:
    try:
        import psutil

        return psutil.virtual_memory().total / 1024**3
    except Exception:  # psutil missing or restricted: capacity unknown
        return None


def check_writable_dir(path: str | os.PathLike[str], what: str = "--out") -> Path:
    """`path` as a directory that exists or can be created; ValueError (one line) before anything is written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{what} '{p}' is a file, not a directory; name a directory (it is created if missing)")
    ancestor = p
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise ValueError(f"{what} '{p}' cannot be created: '{ancestor}' is not a writable directory; "
                         f"choose another {what}")
    return p


def folder_name(label: str) -> str:
    """A workload name or ``module:object`` path as a folder name (no ':' or '/'); a ``script.py:object``
    path by the script's name, not its directories."""
    module, _, attr = label.rpartition(":")
    if module.endswith(".py"):
        label = f"{Path(module).stem}:{attr}"
    return label.replace(":", "-").replace("/", "-")


def code_dirty(cwd: Path | None = None) -> bool:
    """Uncommitted changes to tracked files of the checkout; what trainbench itself writes there
    (`reports/`, `runs/`) does not count, so a regenerated report does not mark the next run dirty."""
    return bool(_git("status", "--porcelain", "--untracked-files=no", "--", ":(top)", ":(top,exclude)reports",
                     ":(top,exclude)runs", cwd=cwd))


def collect_env() -> dict[str, Any]:
    """Versions, hardware and code identity of this process's environment."""
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "hostname": socket.gethostname(),
        "cpu_model": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu_name": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "gpu_driver": None,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": code_dirty(),
        "malloc": " ".join(f"{k}={os.environ[k]}" for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
                           if k in os.environ) or "glibc defaults",
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ram_total_gib": _ram_total_gib(),
        "gpu_mem_total_gib": (torch.cuda.get_device_properties(0).total_memory / 1024**3
                              if torch.cuda.is_available() else None),
    }
    if env["gpu_name"]:
        try:
            import pynvml

            pynvml.nvmlInit()
            env["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
        except Exception:  # NVML missing or unusable: the driver stays unknown, the run goes on
            pass
    return env
