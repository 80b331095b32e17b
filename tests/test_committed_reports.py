"""The committed example reports: one commit, no machine paths, each re-rendered byte for byte from the records it
carries (what `trainbench report reports/lm --out DIR` does on a fresh clone)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from harness.report import write_report
from harness.results import find_results

REPORTS = Path(__file__).resolve().parents[1] / "reports"
DIRS = sorted(p.parent for p in REPORTS.glob("*/report.json"))
MACHINE_PATH = re.compile(r"(?<![\w.])/(?:tmp|work|home|root|Users|private|var/folders)/")


def test_there_are_committed_reports() -> None:
    assert len(DIRS) >= 6, DIRS


def test_one_commit_no_machine_paths_and_a_decision_for_every_variant() -> None:
    index = (REPORTS / "README.md").read_text()
    commits = set()
    for d in DIRS:
        meta = json.loads((d / "report.json").read_text())
        commits.add(meta["commit"])
        assert f"`{meta['commit']}`" in index, d.name
        gates = meta["gates"]
        assert 0 <= gates["passed"] <= gates["total"] and len(gates["failed"]) == gates["total"] - gates["passed"]
        for name, v in meta["variants"].items():
            assert name == meta["baseline"] or v["decision"]["verdict"] in ("adopt", "reject", "unresolved"), name
        for f in [d / "README.md", d / "report.json"]:
            assert not MACHINE_PATH.search(f.read_text()), f"{f} names a path of the machine that made it"
    assert len(commits) == 1 and "dirty" not in next(iter(commits)), commits


def _rerender(d: Path, tmp_path: Path) -> None:
    out = write_report(find_results(d), tmp_path / d.name).parent
    for name in ("README.md", "report.json"):
        assert (out / name).read_text() == (d / name).read_text(), f"{d.name}/{name} does not re-render identically"


def test_lm_rerenders_identically(tmp_path: Path) -> None:
    _rerender(REPORTS / "lm", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("d", DIRS, ids=[d.name for d in DIRS])
def test_every_report_rerenders_identically(d: Path, tmp_path: Path) -> None:
    _rerender(d, tmp_path)
