"""How far a speedup moves between sessions, against its within-session interval: the reproducibility study.

Runs the same experiment as N sessions spread over time, each exactly as a user would (`trainbench sweep FILE`,
the default path, in a subprocess), some of them beside one busy process, with a shared session history of
their own (``OUT/history.jsonl``) so that each session's report pools the sessions before it. Per session it
also measures chosen variants in the engine's paired mode (their optimizer steps interleaved in one process, a
few processes) to see whether finer interleaving shrinks the between-session shift. Then it writes the study:
per variant each session's ratio and interval, the between-session SD (random effects) against the
within-session half-width, the prediction interval for a new session, the machine-state index per session and
whether normalising ratios by it would remove the shift.

    python bench/measure_sessions.py --out runs/sessions --sessions 6 --every-min 12 --busy 2,4 \
        --back-to-back 2 --report docs/reproducibility
    python bench/measure_sessions.py --out runs/sessions --summarize --report docs/reproducibility

A session already in OUT is not run again (the study can be resumed). The last line reads
``sessions: N over M min; largest between-session SD: VARIANT ±X% (within-session ±Y%)``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from harness.analysis import reproducibility as repro
from harness.analysis import speedup
from harness.experiment import load_experiments
from harness.history import load_sessions
from harness.jobs import group_job, records_from
from harness.launch import Launcher
from harness.probes.state import KERNELS
from harness.report.reproducibility import ratio_text
from harness.results import Record, append, iter_records

PAIRED_FILE = "paired"
"""Per session, the records of the paired-mode processes (a results directory of their own)."""


def run_session(i: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """One session: the sweep through the CLI, then the paired-mode processes; returns its metadata."""
    session_dir = out / f"session-{i}"
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if i in args.busy else None
    env = {**os.environ, "TRAINBENCH_HISTORY": str(out / "history.jsonl")}
    start = time.time()
    try:
        # `python -m harness.cli` is `trainbench`, importing the harness of the working directory (a worktree of
        # the commit under study), not whichever tree the console script was installed from
        cmd = [sys.executable, "-m", "harness.cli", "sweep", args.experiment, "--out", str(session_dir), "--reports",
               str(out / f"reports-{i}")]
        with open(out / f"session-{i}.log", "w") as log:
            code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        sweep_s = time.time() - start
        paired_s = run_paired(i, args, out) if args.paired else 0.0
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    meta = {"session": i, "busy": busy is not None, "started": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(start)),
            "sweep_s": sweep_s, "paired_s": paired_s, "exit_code": code}
    (out / f"session-{i}.json").write_text(json.dumps(meta))
    return meta


def run_paired(i: int, args: argparse.Namespace, out: Path) -> float:
    """`args.paired_processes` fresh processes, each running the baseline and the paired variants step by step."""
    exp = load_experiments(Path(args.experiment), {})[0]
    names = [exp.baseline_name, *args.paired]
    configs = {v: exp.configs[v] for v in names}
    folder = out / f"session-{i}-{PAIRED_FILE}"
    folder.mkdir(parents=True, exist_ok=True)
    launcher = Launcher()
    start = time.time()
    for repeat in range(args.paired_processes):
        order = names[repeat % len(names):] + names[:repeat % len(names)]
        job = group_job(exp.name, {v: configs[v] for v in order}, repeat=repeat, rounds=args.rounds)
        work = folder / "work"
        work.mkdir(exist_ok=True)
        for rec in records_from(exp.name, job, launcher.launch(job, work)):
            append(folder, rec)
    return time.time() - start


def _estimate(base: Sequence[Record], variant: Sequence[Record]) -> dict[str, float]:
    est, _ = speedup.estimate(base, variant, clock="wall")
    return {"ratio": est.ratio, "ci_low": est.ci_low, "ci_high": est.ci_high, "n": est.n}


def collect(out: Path) -> list[dict[str, Any]]:
    """Every finished session in OUT: its metadata, its sessions.json summary, its paired-mode estimates."""
    sessions = []
    for meta_file in sorted(out.glob("session-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        meta = json.loads(meta_file.read_text())
        i = meta["session"]
        data = load_sessions(out / f"session-{i}")
        if not data:
            continue
        paired = {}
        folder = out / f"session-{i}-{PAIRED_FILE}"
        recs = [r for r in iter_records(folder) if r.status == "ok"] if folder.exists() else []
        if recs:
            base_name = data["this"]["baseline"]
            base = [r for r in recs if r.variant == base_name]
            for v in sorted({r.variant for r in recs} - {base_name}):
                paired[v] = _estimate(base, [r for r in recs if r.variant == v])
        state_s = sum(float(r.state.get("cost_s") or 0.0) for r in iter_records(out / f"session-{i}"))
        sessions.append({**meta, "summary": data["this"], "paired": paired, "state_cost_s": state_s})
    return sessions


def _estimates(sessions: Sequence[Mapping[str, Any]], variant: str, key: str) -> list[repro.SessionEstimate]:
    """`variant`'s estimate per session: the sweep's own (``key="sweep"``) or the paired-mode one."""
    summaries = [s["summary"] if key == "sweep" else {"session": s["session"], "variants": s["paired"]}
                 for s in sessions]
    return repro.session_estimates(summaries, variant)


def _best_fit(x: np.ndarray, y: np.ndarray) -> tuple[int, float, float]:
    """(column of `x` whose one-slope least-squares fit explains most of `y`, its R^2, the residual SD)."""
    best = (-1, -1.0, float("nan"))
    total = float(np.sum((y - y.mean()) ** 2))
    for j in range(x.shape[1]):
        if np.std(x[:, j]) == 0 or total == 0:
            continue
        slope, intercept = np.polyfit(x[:, j], y, 1)
        resid = y - (slope * x[:, j] + intercept)
        r2 = 1 - float(np.sum(resid ** 2)) / total
        if r2 > best[1]:
            best = (j, r2, float(np.sqrt(np.sum(resid ** 2) / (len(y) - 2))))
    return best


def normalisation(sessions: Sequence[Mapping[str, Any]], variant: str, permutations: int = 2000) -> dict[str, Any]:
    """Would dividing out the state index remove the shift? The kernel whose session medians best explain the
    session log ratios (least squares, one slope), the share of their variance it explains (R^2), the SD left
    after it, and how often the best of the three kernels explains as much of *shuffled* session ratios (a
    permutation p-value: with few sessions and three kernels to pick from, a high R^2 comes by chance often)."""
    keyed = [s for s in sessions if s["summary"]["variants"].get(variant)]
    y = np.log([s["summary"]["variants"][variant]["ratio"] for s in keyed])
    out: dict[str, Any] = {"kernel": None, "r2": float("nan"), "sd_pct": float("nan"), "raw_sd_pct": float("nan"),
                           "p": float("nan")}
    if len(y) < 4:
        return out
    x = np.log([[next(iter(s["summary"]["state"].values()))[k] for k in KERNELS] for s in keyed])
    j, r2, resid_sd = _best_fit(x, y)
    if j < 0:
        return out
    rng = np.random.default_rng(0)
    chance = [_best_fit(x, rng.permutation(y))[1] for _ in range(permutations)]
    return {"kernel": KERNELS[j], "r2": r2, "raw_sd_pct": (math.exp(float(np.std(y, ddof=1))) - 1) * 100,
            "sd_pct": (math.exp(resid_sd) - 1) * 100, "p": float(np.mean(np.array(chance) >= r2 - 1e-12))}


def _sessions_section(sessions: Sequence[Mapping[str, Any]]) -> list[str]:
    """One row per session: when, quiet or busy, how long, its state, its interfered runs and the index's cost."""
    lines: list[str] = []
    rows = []
    for s in sessions:
        state = next(iter(s["summary"]["state"].values()), {})
        rows.append([s["session"], s["started"], "busy" if s["busy"] else "quiet", f"{s['sweep_s'] / 60:.1f}",
                     *[f"{state.get(k, float('nan')):.3f}" for k in KERNELS], s["summary"].get("interfered", 0),
                     f"{s['state_cost_s']:.1f} s ({s['state_cost_s'] / s['sweep_s'] * 100:.1f}%)"])
    lines += _table(["session", "started (UTC)", "machine", "sweep min", *[f"{k} ms" for k in KERNELS],
                     "interfered runs", "state index cost (of the sweep)"], rows)
    return lines


def _speedup_section(sessions: Sequence[Mapping[str, Any]], variants: Sequence[str],
                     heads: Sequence[str]) -> tuple[list[str], tuple[str, float, float]]:
    """Each session's ratio per variant with the pooled figures; and the variant that moves most between sessions."""
    lines: list[str] = []
    lines += ["", "## Speedup per session (separate processes, the sweep's own figures)", ""]
    rows, worst = [], ("", -1.0, 0.0)
    for v in variants:
        ests = _estimates(sessions, v, "sweep")
        pooled = repro.pool(ests)
        cells = [ratio_text(s["summary"]["variants"].get(v)) for s in sessions]
        ratios = [e.ratio for e in ests]
        moved = (max(ratios) / min(ratios) - 1) * 100 if ratios else float("nan")
        if pooled is None:
            rows.append([f"`{v}`", *cells, "–", "–", "–", "–"])
            continue
        rows.append([f"`{v}`", *cells, f"{moved:.0f}%", f"±{pooled.tau_pct:.1f}%", f"±{pooled.within_pct:.1f}%",
                     f"x{pooled.ratio:.3g} [{pooled.pred_low:.3g}, {pooled.pred_high:.3g}]"
                     if pooled.sessions >= 3 else "–"])
        if pooled.tau_pct > worst[1]:
            worst = (v, pooled.tau_pct, pooled.within_pct)
    lines += _table(["variant", *heads, "max/min - 1", "between-session SD", "within-session ±",
                     "next session (95% prediction)"], rows)
    return lines, worst


def _paired_section(sessions: Sequence[Mapping[str, Any]], paired_variants: Sequence[str],
                    heads: Sequence[str]) -> list[str]:
    """The same ratios from the engine's paired mode, beside the separate processes'."""
    lines: list[str] = []
    if paired_variants:
        lines += ["", "## Finer interleaving: the same ratios in the engine's paired mode", "",
                  "Each session also ran the baseline and these variants step by step in the same processes "
                  f"({sessions[0].get('paired_processes', 3)} processes; wall clock, the process as the unit).", ""]
        rows = []
        for v in paired_variants:
            sep, par = repro.pool(_estimates(sessions, v, "sweep")), repro.pool(_estimates(sessions, v, "paired"))
            rows.append([f"`{v}`", *[ratio_text(s["paired"].get(v)) for s in sessions],
                         f"±{par.tau_pct:.1f}%" if par else "–", f"±{sep.tau_pct:.1f}%" if sep else "–",
                         f"x{par.ratio:.3g}" if par else "–", f"x{sep.ratio:.3g}" if sep else "–"])
        lines += _table(["variant", *heads, "between-session SD, paired", "between-session SD, separate",
                         "pooled ratio, paired", "pooled ratio, separate"], rows)
    return lines


def _normalisation_section(sessions: Sequence[Mapping[str, Any]], variants: Sequence[str]) -> list[str]:
    """Whether dividing by a state kernel would remove the between-session shift."""
    lines: list[str] = []
    lines += ["", "## Would the state index remove the shift?", "",
              "Per variant, the kernel whose session medians best explain the session log ratios (one slope, least "
              "squares), the share of their variance it explains (R²), the SD of the session ratios before and after "
              "dividing it out, and the permutation p-value of that R² (how often the best of the three kernels "
              "explains as much of the same ratios shuffled across sessions).", ""]
    rows = []
    for v in variants:
        n = normalisation(sessions, v)
        rows.append([f"`{v}`", n["kernel"] or "–", f"{n['r2']:.2f}" if math.isfinite(n["r2"]) else "–",
                     f"±{n['raw_sd_pct']:.1f}%" if math.isfinite(n["raw_sd_pct"]) else "–",
                     f"±{n['sd_pct']:.1f}%" if math.isfinite(n["sd_pct"]) else "–",
                     f"{n['p']:.2f}" if math.isfinite(n["p"]) else "–"])
    lines += _table(["variant", "best kernel", "R²", "SD of the session ratios", "SD after normalising",
                     "permutation p"], rows)
    return lines


def write_study(sessions: Sequence[Mapping[str, Any]], report: Path, command: str) -> str:
    """docs/reproducibility: README.md and sessions.json; returns the closing line."""
    report.mkdir(parents=True, exist_ok=True)
    variants = list(dict.fromkeys(v for s in sessions for v in s["summary"]["variants"]))
    paired_variants = list(dict.fromkeys(v for s in sessions for v in s["paired"]))
    first, last = sessions[0], sessions[-1]
    span_min = (time.mktime(time.strptime(last["started"], "%Y-%m-%d %H:%M:%S")) -
                time.mktime(time.strptime(first["started"], "%Y-%m-%d %H:%M:%S")) + last["sweep_s"]) / 60
    commit = str(first["summary"].get("commit"))[:10]
    heads = [f"{s['session']}{' (busy)' if s['busy'] else ''}" for s in sessions]
    lines = [f"# Reproducibility: {first['summary']['experiment']} over {len(sessions)} sessions", "",
             f"The same experiment run as {len(sessions)} sessions over {span_min:.0f} minutes on one machine "
             f"(commit `{commit}`, {first['summary']['machine']}), each exactly as a user runs it "
             "(`trainbench sweep`, default settings), sessions marked busy beside one `python -c 'while True: pass'`. "
             "Per variant: each session's speedup over the baseline with its within-session 95% interval, the "
             "between-session SD of the ratio (random effects, DerSimonian-Laird) beside the median within-session "
             "half-width, and the 95% prediction interval for a new session (Higgins et al. 2009).", "",
             "## Sessions", ""]
    lines += _sessions_section(sessions)
    speed_lines, worst = _speedup_section(sessions, variants, heads)
    lines += speed_lines + _paired_section(sessions, paired_variants, heads)
    lines += _normalisation_section(sessions, variants)
    _plot(sessions, variants, report / "sessions.png")
    lines += ["", "## Plot", "", "![Each session's ratio with its 95% interval; the band is the pooled prediction "
              "interval for a new session](sessions.png)", ""]
    lines += ["", "## Reproduce", "", "```", command, "```", ""]
    (report / "README.md").write_text("\n".join(lines))
    (report / "sessions.json").write_text(json.dumps(
        [{k: v for k, v in s.items()} for s in sessions], indent=1, default=str, allow_nan=True))
    line = (f"sessions: {len(sessions)} over {span_min:.0f} min; largest between-session SD: {worst[0]} "
            f"±{worst[1]:.1f}% (within-session ±{worst[2]:.1f}%)")
    env_cpu = str(first["summary"]["machine"]).split(" | ")[0]
    (report / "report.json").write_text(json.dumps(  # what the reports index shows (`harness.report.write_index`)
        {"experiment": f"reproducibility: {first['summary']['experiment']} over {len(sessions)} sessions",
         "headline": line, "device": env_cpu, "when": f"{first['started']} – {last['started']}"}, indent=1))
    return line


def _plot(sessions: Sequence[Mapping[str, Any]], variants: Sequence[str], path: Path) -> None:
    """Per variant, each session's ratio with its interval (filled: quiet, open: busy) and the prediction band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 4
    rows = math.ceil(len(variants) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax, v in zip(axes.flat, variants, strict=False):
        ests = _estimates(sessions, v, "sweep")
        pooled = repro.pool(ests)
        if pooled is not None and pooled.sessions >= 3:
            ax.axhspan(pooled.pred_low, pooled.pred_high, color="tab:blue", alpha=0.12, lw=0)
            ax.axhline(pooled.ratio, color="tab:blue", lw=0.8)
        for s in sessions:
            e = s["summary"]["variants"].get(v)
            if not e:
                continue
            lo, hi = e["ratio"] - e["ci_low"], e["ci_high"] - e["ratio"]
            ax.errorbar([s["session"]], [e["ratio"]], yerr=[[lo], [hi]], fmt="o", color="black", capsize=3,
                        mfc="white" if s["busy"] else "black", ms=5)
        ax.set_title(v, fontsize=9)
        ax.set_xticks([s["session"] for s in sessions])
        ax.tick_params(labelsize=7)
        ax.set_xlabel("session", fontsize=7)
    for ax in list(axes.flat)[len(variants):]:
        ax.axis("off")
    fig.suptitle(f"{sessions[0]['summary']['experiment']}: speedup over the baseline per session (95% CI; open: "
                 "busy); band: prediction for a new session", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    from harness.report.tables import table

    return table(headers, rows)


def check_args(args: argparse.Namespace) -> None:
    """Refuse what cannot be run before anything runs (ValueError naming the option and the fix)."""
    if args.sessions < 1:
        raise ValueError(f"--sessions {args.sessions}: run at least 1 session (3 or more give a prediction interval)")
    if args.every_min < 0 or args.back_to_back < 0 or args.paired_processes < 1 or args.rounds < 1:
        raise ValueError("--every-min and --back-to-back take values >= 0, --paired-processes and --rounds >= 1")
    try:
        args.busy = {int(x) for x in args.busy.split(",") if x.strip()}
    except ValueError:
        raise ValueError(f"--busy {args.busy!r}: give session numbers separated by commas, e.g. 2,4") from None
    if any(not 1 <= i <= args.sessions for i in args.busy):
        raise ValueError(f"--busy {sorted(args.busy)}: session numbers run from 1 to --sessions {args.sessions}")
    args.paired = [x for x in args.paired.split(",") if x.strip()]
    if not args.summarize:
        exp = load_experiments(Path(args.experiment), {})[0]
        unknown = [v for v in args.paired if v not in exp.configs]
        if unknown:
            raise ValueError(f"--paired {','.join(unknown)}: not a variant of {args.experiment}; its variants: "
                             f"{', '.join(exp.variants)}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="bench/experiments/lm.toml")
    parser.add_argument("--out", required=True, help="the study's folder (sessions, their records, the history)")
    parser.add_argument("--sessions", type=int, default=6)
    parser.add_argument("--every-min", type=float, default=12.0, help="minutes from one session's start to the next")
    parser.add_argument("--busy", default="", help="comma-separated session numbers run beside one busy process")
    parser.add_argument("--back-to-back", type=int, default=2, help="the last K sessions start as the one before ends")
    parser.add_argument("--paired", default="per_sequence,chunk64", help="variants also measured in paired mode")
    parser.add_argument("--paired-processes", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=30, help="measured rounds per paired-mode process")
    parser.add_argument("--summarize", action="store_true", help="only write the study from the sessions in OUT")
    parser.add_argument("--report", default="", help="folder for the study's README.md and sessions.json")
    args = parser.parse_args(argv)
    try:
        check_args(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python bench/measure_sessions.py " + " ".join(argv)
    if not args.summarize:
        t0 = time.time()
        for i in range(1, args.sessions + 1):
            if (out / f"session-{i}.json").exists():
                continue
            if i > 1 and i <= args.sessions - args.back_to_back + 1:
                wait = t0 + (i - 1) * args.every_min * 60 - time.time()
                if wait > 0:
                    print(f"waiting {wait / 60:.1f} min for session {i}", flush=True)
                    time.sleep(wait)
            marker = Path(os.environ.get("TMPDIR", "/tmp")) / "trainbench-session-running"
            marker.write_text(str(i))
            try:
                meta = run_session(i, args, out)
            finally:
                marker.unlink(missing_ok=True)
            print(f"session {i}: {meta['started']} {'busy' if meta['busy'] else 'quiet'} "
                  f"sweep {meta['sweep_s']:.0f} s, paired {meta['paired_s']:.0f} s, exit {meta['exit_code']}",
                  flush=True)
    sessions = collect(out)
    for s in sessions:
        s["paired_processes"] = args.paired_processes
    if not sessions:
        print(f"error: no finished session in {out}; run without --summarize first", file=sys.stderr)
        raise SystemExit(2)
    line = write_study(sessions, Path(args.report) if args.report else out / "study", command)
    print(line)


if __name__ == "__main__":
    main(sys.argv[1:])
