"""How long a sweep will take, said before its first run: each planned job's seconds from this machine's last run
of the same job (`runs/.job-seconds.json`), a median of the known ones for the rest, and a stated guess when
nothing is known; then, as jobs finish, the estimate scaled by how the measured seconds compare with it.

What is not a job is counted the same way, as a named step with its seconds remembered: the machine check before
the first run, and each experiment's overhead (its fork server's start, writing its records and its report)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path

from harness.jobs import Job

CACHE = Path("runs") / ".job-seconds.json"
GUESS_S = 5.0
"""Seconds per job when this machine has run none of them (a tiny-preset speed run with its process start)."""
MACHINE_CHECK = "sweep/-/machine-check/-"
"""The step key of the machine check a sweep runs before its first job."""


def job_key(job: Job) -> str:
    cfg = job.group[0] if job.group else job.config
    return f"{job.experiment}/{job.variant}/{job.phase}/{cfg.get('preset', '?')}"


def overhead_key(experiment: str, preset: str) -> str:
    """The step key of an experiment's seconds outside its jobs (server start, records, report)."""
    return f"{experiment}/-/overhead/{preset}"


class Eta:
    """Per-job seconds known on this machine, the sweep's planned jobs, and the running estimate of what is left."""

    def __init__(self, jobs: Iterable[Job], cache: Path = CACHE, steps: Iterable[str] = ()) -> None:
        """`steps`: keys of what the sweep does besides its jobs (`MACHINE_CHECK`, `overhead_key`)."""
        self.cache = cache
        try:
            self.known: dict[str, float] = json.loads(cache.read_text()) if cache.exists() else {}
        except (OSError, ValueError):
            self.known = {}  # a torn cache is only a worse estimate
        jobs = list(jobs)
        self.left = {job_key(j): 0 for j in jobs}
        for j in jobs:
            self.left[job_key(j)] += 1
        self.planned = len(jobs)
        for key in steps:
            self.left[key] = self.left.get(key, 0) + 1
        self.spent_s = self.estimated_done_s = 0.0
        """Seconds taken and estimated of what finished and was known before: the scale of the rest."""
        self.jobs_s = 0.0
        """Seconds the finished jobs took (what a step's own seconds are told apart from)."""
        self.measured: dict[str, float] = {}
        """This sweep's job seconds: the next sweep's estimate (this one keeps its prior, scaled)."""
        self.atypical: set[str] = set()
        """Keys whose seconds say nothing about other jobs of their phase (a quality job that reused the baseline's
        runs took no time): never part of the median that estimates an unknown job."""

    def _seconds(self, key: str) -> float:
        """The last run's seconds for `key`; else the median of this sweep's runs of the same experiment and phase
        (a never-run quality experiment's first run says more about its others than any other experiment's runs);
        else of what this machine ran of the same phase (or of any job, for a job); else `GUESS_S`."""
        if key in self.known:
            return self.known[key]
        experiment, _, phase, _ = key.split("/")
        mine = [s for k, s in self.measured.items() if k not in self.atypical
                and k.split("/")[0] == experiment and k.split("/")[2] == phase]
        if mine:
            return statistics.median(mine)
        seen = {k: v for k, v in {**self.known, **self.measured}.items() if k not in self.atypical}
        same = [s for k, s in seen.items() if k.split("/")[2] == phase] or \
            ([] if _is_step(key) else [s for k, s in seen.items() if not _is_step(k)])
        return statistics.median(same) if same else GUESS_S

    def remaining_s(self) -> float:
        """Seconds the jobs and steps still planned should take, scaled by measured / estimated so far."""
        raw = sum(self._seconds(k) * n for k, n in self.left.items())
        scale = self.spent_s / self.estimated_done_s if self.estimated_done_s > 0 else 1.0
        return raw * scale

    def basis(self) -> str:
        """What the estimate rests on, in words."""
        have = sum(n for k, n in self.left.items() if k in self.known and not _is_step(k))
        if not self.known:
            return f"a guess of {GUESS_S:g} s per run: no earlier run on this machine"
        return f"this machine's last run of {have} of the {self.planned} runs, the median for the rest"

    def done(self, job: Job, seconds: float, typical: bool = True) -> None:
        """A job finished after `seconds`: count it, remember it for the next sweep. `typical=False`: a job that did
        not run as its phase does (reused records), left out of the estimate of unknown jobs."""
        self.jobs_s += seconds
        if not typical:
            self.atypical.add(job_key(job))
        self.finish(job_key(job), seconds)

    def finish(self, key: str, seconds: float) -> None:
        """A job or step (by key) finished after `seconds`. Only what the last run knew scales the rest: a guess
        that was off says nothing about how fast this machine is today."""
        if key in self.known:
            self.estimated_done_s += self.known[key]
            self.spent_s += seconds
        if self.left.get(key, 0) > 0:
            self.left[key] -= 1
        self.measured[key] = seconds
        try:
            self.cache.parent.mkdir(parents=True, exist_ok=True)
            self.cache.write_text(json.dumps({**self.known, **self.measured}, indent=0, sort_keys=True))
        except OSError:
            pass  # a read-only runs/ only loses the next sweep's estimate

    def add(self, job: Job) -> None:
        """A job scheduled beyond the plan (an added repeat, a contention re-run)."""
        key = job_key(job)
        self.left[key] = self.left.get(key, 0) + 1


def _is_step(key: str) -> bool:
    return key.split("/")[2] in ("machine-check", "overhead")
