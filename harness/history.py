"""Sessions of the same experiment over time: a summary per sweep, kept on this machine, and what a report needs.

A session is one run of an experiment into one results directory. When it ends, `snapshot` writes
``sessions.json`` beside its records: this session's summary (each variant's ratio and interval, the machine-state
index per kernel, the code and machine it ran on), the earlier sessions of the *same* experiment, code, configs and
machine from the history file, and the best state this machine had shown before. The report reads that file only,
so a results directory still renders the same report elsewhere. Then the summary is appended to the history.

The history is a JSON-lines file, ``$TRAINBENCH_HISTORY`` or ``<cache>/history/sessions.jsonl`` (the cache is
``$TRAINBENCH_CACHE``, default ``~/.cache/trainbench``), one summary per line, appended under an exclusive lock;
the same session written again (``--resume``) replaces its earlier line when read. Sessions from a dirty tree are
summarised but never pooled with others: their code is not known.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.analysis import reproducibility, speedup
from harness.analysis.summary import latest_attempts
from harness.probes.state import KERNELS
from harness.results import Record, iter_records

SESSIONS_FILE = "sessions.json"
"""Beside the records: this session, the comparable earlier ones, and the machine's best state before it."""


def history_path() -> Path:
    """Where session summaries accumulate on this machine."""
    if os.environ.get("TRAINBENCH_HISTORY"):
        return Path(os.environ["TRAINBENCH_HISTORY"])
    from harness.workload import cache_dir

    return cache_dir() / "history" / "sessions.jsonl"


def mde_path() -> Path:
    """Where `trainbench doctor --mde` keeps its measurements: beside the session history."""
    return history_path().parent / "mde.jsonl"


def latest_mde(machine: str, path: Path | None = None) -> dict[str, dict[str, Any]]:
    """Per workload label, the newest `doctor --mde` measurement on `machine` ({} without one)."""
    path = path or mde_path()
    out: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            e = json.loads(line)
        except json.JSONDecodeError:
            continue
        if e.get("machine") == machine:
            out[str(e.get("workload"))] = e
    return out


def mde_for(workload: str, env: Mapping[str, Any], path: Path | None = None) -> dict[str, Any] | None:
    """The newest `doctor --mde` of `workload` (any knobs) on the machine `env` describes; None without one."""
    found = [e for label, e in latest_mde(machine_fingerprint(env), path).items() if label.split()[0] == workload]
    return max(found, key=lambda e: str(e.get("time"))) if found else None


def machine_fingerprint(env: Mapping[str, Any]) -> str:
    """What makes two sessions the same machine: CPU model and cores, GPU, torch build (a new one is a new series)."""
    keys = ("cpu_model", "cpu_cores", "gpu_name", "torch")
    return " | ".join(str(env.get(k)) for k in keys)


def config_hash(config: Mapping[str, Any]) -> str:
    """A short hash of a resolved config (every knob)."""
    return hashlib.sha256(json.dumps(dict(config), sort_keys=True, default=str).encode()).hexdigest()[:12]


def session_summary(records: Sequence[Record], baseline: str, session: str) -> dict[str, Any]:
    """One session's figures: per variant the speedup over the baseline and its interval, the state per key."""
    latest = latest_attempts(records)
    speed = [r for r in latest if r.phase == "speed"]
    env = next((dict(r.env) for r in speed if r.env), next((dict(r.env) for r in records if r.env), {}))
    by_variant: dict[str, list[Record]] = {}
    for r in speed:
        by_variant.setdefault(r.variant, []).append(r)
    base = by_variant.get(baseline, [])
    variants = {}
    for v, recs in by_variant.items():
        if v == baseline:
            continue
        est, clock = speedup.estimate(base, recs)
        variants[v] = {"ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n,
                       "widen": est.widen, "method": est.method, "clock": clock, "config": config_hash(recs[0].config)}
    dates = sorted(str(r.env.get("time", "")) for r in speed if r.env.get("time"))
    return {"session": session, "experiment": records[0].experiment if records else "", "baseline": baseline,
            "baseline_config": config_hash(base[0].config) if base else "",
            "commit": env.get("git_commit"), "dirty": bool(env.get("git_dirty")),
            "machine": machine_fingerprint(env), "started": dates[0] if dates else "",
            "ended": dates[-1] if dates else "", "state": reproducibility.session_state(records),
            "interfered": len(reproducibility.interfered_runs(records)), "variants": variants}


def comparable(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Same experiment and baseline config on the same machine from the same clean code."""
    return (a.get("experiment") == b.get("experiment") and a.get("baseline_config") == b.get("baseline_config")
            and a.get("machine") == b.get("machine") and a.get("commit") == b.get("commit")
            and not a.get("dirty") and not b.get("dirty") and a.get("session") != b.get("session"))


def read_history(path: Path | None = None) -> list[dict[str, Any]]:
    """Every session summary, the last line of each session winning; [] without a history."""
    path = path or history_path()
    if not path.exists():
        return []
    out: dict[str, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        try:
            s = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a crash mid-write: the others still count
        out[str(s.get("session"))] = s
    return list(out.values())


def append_history(summary: Mapping[str, Any], path: Path | None = None) -> None:
    """Append one session summary under an exclusive lock (two sweeps at once lose nothing)."""
    path = path or history_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        fh.write(json.dumps(summary, default=str, allow_nan=True) + "\n")
        fh.flush()
        fcntl.flock(fh, fcntl.LOCK_UN)


def best_state(sessions: Sequence[Mapping[str, Any]], machine: str) -> dict[str, dict[str, float]]:
    """Per state key, the fastest session median of each kernel this machine has shown (any code, any experiment)."""
    best: dict[str, dict[str, float]] = {}
    for s in sessions:
        if s.get("machine") != machine:
            continue
        for key, state in (s.get("state") or {}).items():
            for k in KERNELS:
                if state.get(k) and (k not in best.get(key, {}) or state[k] < best[key][k]):
                    best.setdefault(key, {})[k] = float(state[k])
    return best


def snapshot(results_dir: str | os.PathLike[str], baseline: str, *, record: bool = True,
             path: Path | None = None) -> dict[str, Any]:
    """Write ``sessions.json`` beside the records (this session, comparable earlier ones, the machine's best state
    before this session) and, with `record`, append this session to the history. Returns what was written."""
    out = Path(results_dir)
    records = list(iter_records(out))
    if not records:
        return {}
    previous = {}
    if (out / SESSIONS_FILE).exists():
        previous = json.loads((out / SESSIONS_FILE).read_text())
    session = (previous.get("this") or {}).get("session") or f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    this = session_summary(records, baseline, session)
    history = [s for s in read_history(path) if s.get("session") != session]
    earlier = [s for s in history if comparable(this, s)]
    data = {"this": this, "earlier": earlier, "best": best_state(history, this["machine"]),
            "mde": latest_mde(this["machine"], (path or history_path()).parent / "mde.jsonl"),
            "history_sessions_on_machine": sum(s.get("machine") == this["machine"] for s in history)}
    tmp = out / (SESSIONS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str, allow_nan=True))
    os.replace(tmp, out / SESSIONS_FILE)
    if record:
        append_history(this, path)
    return data


def load_sessions(results_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``sessions.json`` of a results directory ({} when the sweep predates it)."""
    p = Path(results_dir) / SESSIONS_FILE
    return json.loads(p.read_text()) if p.exists() else {}
