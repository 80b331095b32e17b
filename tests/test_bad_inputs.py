"""Bad input a user can give: one `error:` line naming the key or file and the fix, exit code 2, and
nothing written; refused before any run starts where it can be known before."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from harness.cli import main
from tests.conftest import TOY


def _refused(capsys: pytest.CaptureFixture[str], argv: list[str], *needles: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    for needle in needles:
        assert needle in err[0], err[0]
    return err[0]


def test_run_without_a_workload(capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["run"], "run needs a workload", "trainbench list")


def test_an_item_without_equals_is_named(capsys: pytest.CaptureFixture[str]) -> None:
    _refused(capsys, ["run", "lm", "batch_size"], "'batch_size' is not key=value", "batch_size=VALUE")
    _refused(capsys, ["profile", "lm", "preset"], "'preset' is not key=value")


def test_a_batch_larger_than_the_split_is_refused_before_any_run(capsys: pytest.CaptureFixture[str],
                                                                   tmp_path: Path) -> None:
    _refused(capsys, ["run", TOY, "batch_size=100000", "--out", str(tmp_path / "r")],
             "batch_size=100000 exceeds the 256 training samples", "use batch_size <= 256")
    assert not (tmp_path / "r").exists()


def test_a_missing_data_file_is_refused_before_any_run(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    _refused(capsys, ["run", "sudoku", f"data_path={missing}", "--out", str(tmp_path / "r")],
             "knob 'data_path'", "does not exist")
    _refused(capsys, ["profile", "sudoku", f"data_path={missing}", "--out", str(tmp_path / "p")], "data_path")
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("kind", ["file", "under_a_file"])
def test_an_out_that_cannot_be_a_directory(capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str) -> None:
    afile = tmp_path / "a.txt"
    afile.write_text("x")
    out = afile if kind == "file" else afile / "x"
    needle = "is a file, not a directory" if kind == "file" else "is not a writable directory"
    _refused(capsys, ["run", TOY, "--out", str(out)], f"--out '{out}'", needle)
    _refused(capsys, ["sweep", "--out", str(out)], needle)
    assert afile.read_text() == "x"


def test_dev_null_as_a_parent(capsys: pytest.CaptureFixture[str]) -> None:
    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null here")
    _refused(capsys, ["run", TOY, "--out", "/dev/null/x"], "--out '/dev/null/x' cannot be created")


def make_results(out: Path) -> Path:
    """A copy of the recorded fixture: a small valid results directory."""
    import shutil

    from tests.fixtures.synthetic import RECORDED_DIR

    shutil.copytree(RECORDED_DIR, out)
    return out


def _results(tmp_path: Path, line: str) -> Path:
    out = make_results(tmp_path / "r")
    with (out / "records.jsonl").open("a") as f:
        f.write(line + "\n")
        f.write("{}\n")  # a last line that is not torn: the bad line above is not skipped
    return out


@pytest.mark.parametrize("line, needle", [
    ("[1, 2, 3]", "is a JSON list, not a record object"),
    ('{"status": "weird"}', "lacks the record field(s)"),
])
def test_a_corrupt_records_file_names_file_and_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                                    line: str, needle: str) -> None:
    out = _results(tmp_path, line)
    n = len((out / "records.jsonl").read_text().splitlines()) - 1
    _refused(capsys, ["report", str(out), "--out", str(tmp_path / "rep")], f"records.jsonl:{n}", needle)
    _refused(capsys, ["compare", str(out), str(out)], f"records.jsonl:{n}")


def test_an_unknown_status_is_named(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = make_results(tmp_path / "r")
    lines = (out / "records.jsonl").read_text().splitlines()
    rec = json.loads(lines[0])
    rec["status"] = "exploded"
    lines[0] = json.dumps(rec)
    (out / "records.jsonl").write_text("\n".join(lines) + "\n")
    _refused(capsys, ["report", str(out), "--out", str(tmp_path / "rep")], "records.jsonl:1",
             "status 'exploded' is not one of ok | oom | nan | crash | timeout")


def test_a_corrupt_experiment_json_names_the_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = make_results(tmp_path / "r")
    (out / "experiment.json").write_text("{not json")
    _refused(capsys, ["report", str(out), "--out", str(tmp_path / "rep")], "experiment.json' is not valid JSON")
