"""Sudoku data: board layout, generator validity, curriculum schedule, and the sudoku.csv reader/writer."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from models.sudoku.data import (
    STAGE_GIVENS,
    SudokuDataset,
    blank_cells,
    collate_puzzles,
    curriculum_stage_index,
    generate,
    read_sudoku_csv,
    solved_grids,
    write_sudoku_csv,
)
from models.sudoku.grid import adjacency, edges, is_valid_solution, units, violations

# A valid grid: row r is 123456789 shifted left by 3*(r%3) + r//3.
SOLVED = "123456789456789123789123456234567891567891234891234567345678912678912345912345678"


def grid(text: str) -> torch.Tensor:
    return torch.tensor([int(ch) for ch in text])


# --- board layout -------------------------------------------------------------------------------

def test_peer_graph_has_1620_unique_symmetric_edges_20_per_cell():
    src, dst = edges()
    assert src.numel() == 1620
    pairs = set(zip(src.tolist(), dst.tolist(), strict=True))
    assert len(pairs) == 1620                                   # no duplicates
    assert all(s != d for s, d in pairs)                        # no self loops
    assert all((d, s) in pairs for s, d in pairs)               # symmetric
    assert torch.bincount(dst, minlength=81).eq(20).all() and torch.bincount(src, minlength=81).eq(20).all()
    assert adjacency().sum() == 1620


def test_peers_of_the_corner_cell_by_hand():
    src, dst = edges()
    peers = set(src[dst == 0].tolist())
    row = {1, 2, 3, 4, 5, 6, 7, 8}
    col = {9, 18, 27, 36, 45, 54, 63, 72}
    box = {10, 11, 19, 20}
    assert peers == row | col | box


def test_units_by_hand():
    u = units()
    assert u.shape == (27, 9)
    assert u[1].tolist() == list(range(9, 18))                 # row 1
    assert u[9 + 2].tolist() == [2 + 9 * r for r in range(9)]  # column 2
    assert u[18 + 4].tolist() == [30, 31, 32, 39, 40, 41, 48, 49, 50]  # centre box


def test_validity_and_violations_by_hand():
    good = grid(SOLVED)
    assert is_valid_solution(good[None]).tolist() == [True]
    one_changed = good.clone()
    one_changed[40] = 1 if good[40] != 1 else 2               # a duplicate in its row, column and box
    assert violations(one_changed[None]).tolist() == [3]
    assert is_valid_solution(one_changed[None]).tolist() == [False]
    swapped = good.clone()
    swapped[[0, 1]] = swapped[[1, 0]]                          # row still fine; two columns and a box not
    assert violations(swapped[None]).tolist() == [2]
    with_blank = good.clone()
    with_blank[5] = 0
    assert is_valid_solution(with_blank[None]).tolist() == [False]  # incomplete, though nothing repeats
    assert violations(with_blank[None]).tolist() == [0]


# --- generator ----------------------------------------------------------------------------------

def test_generated_grids_are_all_valid_and_varied():
    grids = solved_grids(2000, np.random.default_rng(0))
    assert grids.shape == (2000, 81) and grids.dtype == np.uint8
    assert is_valid_solution(torch.from_numpy(grids)).all()
    assert len({g.tobytes() for g in grids}) == 2000
    # every digit lands in every cell somewhere: the shuffles really relabel and move
    assert all(len(np.unique(grids[:, c])) == 9 for c in range(81))


@pytest.mark.parametrize("stage", list(STAGE_GIVENS))
def test_puzzles_agree_with_their_solutions_and_keep_the_stage_givens(stage):
    rng = np.random.default_rng(1)
    solutions = solved_grids(3000, rng)
    quizzes = blank_cells(solutions, stage, rng)
    given = quizzes != 0
    assert (quizzes[given] == solutions[given]).all()
    counts = given.sum(axis=1)
    lo, hi = STAGE_GIVENS[stage]
    assert counts.min() == lo and counts.max() == hi            # the whole range is drawn, nothing outside


def test_generation_is_deterministic_per_seed_and_split():
    a, b = generate(50, ("easy", "hard"), 3, "train"), generate(50, ("easy", "hard"), 3, "train")
    assert torch.equal(a["quizzes"], b["quizzes"]) and torch.equal(a["solutions"], b["solutions"])
    assert a["quizzes"].shape == (2, 50, 81)
    assert not torch.equal(a["solutions"], generate(50, ("easy",), 3, "eval")["solutions"])
    assert not torch.equal(a["solutions"], generate(50, ("easy",), 4, "train")["solutions"])
    # both stages blank the same solutions
    assert ((a["quizzes"] == 0) | (a["quizzes"] == a["solutions"])).all()


def test_curriculum_schedule_by_hand():
    # 60 epochs in the seed's 15 / 20 / 25 split
    stages = [curriculum_stage_index(e, 60, 3) for e in range(60)]
    assert stages == [0] * 15 + [1] * 20 + [2] * 25
    # 7 epochs: stage ends at 1.75, 4.08, 7
    assert [curriculum_stage_index(e, 7, 3) for e in range(7)] == [0, 0, 1, 1, 1, 2, 2]
    assert [curriculum_stage_index(e, 7, 1) for e in range(7)] == [0] * 7


def test_set_epoch_reaches_persistent_workers():
    data = generate(16, ("easy", "medium", "hard"), 0, "train")
    ds = SudokuDataset(data["quizzes"], data["solutions"], ("easy", "medium", "hard"), total_epochs=3)
    loader = torch.utils.data.DataLoader(ds, batch_size=16, num_workers=1, persistent_workers=True,
                                         collate_fn=collate_puzzles)
    seen = []
    for epoch in range(3):
        ds.set_epoch(epoch)
        (batch,) = list(loader)
        seen.append(batch["quiz"])
    for stage_index, quiz in enumerate(seen):
        assert torch.equal(quiz, data["quizzes"][stage_index].long())
    assert ds.stage == "hard"


# --- sudoku.csv ---------------------------------------------------------------------------------

def _puzzles(n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    solutions = solved_grids(n, rng)
    return blank_cells(solutions, "medium", rng), solutions


def _text(a: np.ndarray) -> str:
    return "".join(map(str, a.tolist()))


def test_csv_round_trip(tmp_path: Path):
    quizzes, solutions = _puzzles()
    path = tmp_path / "sudoku.csv"
    write_sudoku_csv(path, quizzes, solutions)
    assert path.read_text().splitlines()[0] == "quizzes,solutions"
    q, s = read_sudoku_csv(path, "refuse")
    assert np.array_equal(q, quizzes) and np.array_equal(s, solutions)


def _bad_rows() -> dict[str, tuple[str, str]]:
    """One malformed row per kind: name -> (row text, a phrase the report must contain)."""
    (quiz,), (solution,) = _puzzles(1)
    q, s = _text(quiz), _text(solution)
    given = int(np.flatnonzero(quiz)[0])
    wrong_given = q[:given] + str(solution[given] % 9 + 1) + q[given + 1:]
    swapped = s[1] + s[0] + s[2:]
    return {
        "short quiz": (f"{q[:80]},{s}", "quiz has 80 characters"),
        "long solution": (f"{q},{s}9", "solution has 82 characters"),
        "non-digit": (f"{q[:10]}.{q[11:]},{s}", "quiz contains '.'"),
        "blank in solution": (f"{q},0{s[1:]}", "solution contains '0'"),
        "fields": (f"{q},{s},extra", "expected 2 comma-separated fields"),
        "given disagrees": (f"{wrong_given},{s}", f"row {given // 9 + 1} col {given % 9 + 1} disagrees"),
        "invalid solution": (f"00{q[2:]},{swapped}", "not a valid Sudoku"),
    }


@pytest.mark.parametrize("kind", list(_bad_rows()))
def test_csv_malformed_row_is_refused_or_skipped_with_its_line_number(tmp_path: Path, kind: str):
    quizzes, solutions = _puzzles(3)
    row, phrase = _bad_rows()[kind]
    lines = ["quizzes,solutions", f"{_text(quizzes[0])},{_text(solutions[0])}", row,
             f"{_text(quizzes[1])},{_text(solutions[1])}", ""]
    path = tmp_path / "sudoku.csv"
    path.write_text("\n".join(lines))
    with pytest.raises(ValueError, match=rf"line 3: .*{phrase}"):
        read_sudoku_csv(path, "refuse")
    with pytest.warns(UserWarning, match=rf"skipped 1 malformed row\(s\): line 3: .*{phrase}"):
        q, s = read_sudoku_csv(path, "skip")
    assert np.array_equal(q, quizzes[:2]) and np.array_equal(s, solutions[:2])


def test_csv_lists_every_bad_line_and_a_clean_file_warns_nothing(tmp_path: Path):
    quizzes, solutions = _puzzles(2)
    good = f"{_text(quizzes[0])},{_text(solutions[0])}"
    path = tmp_path / "sudoku.csv"
    path.write_text("\n".join(["quizzes,solutions", "1,2", good, "x" * 81 + "," + "1" * 81, good]))
    with pytest.raises(ValueError, match=r"2 malformed row\(s\): line 2: .*; line 4: "):
        read_sudoku_csv(path, "refuse")
    path.write_text(f"quizzes,solutions\n{good}\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_sudoku_csv(path, "skip")[0].shape == (1, 81)


def test_csv_bad_header_missing_file_and_no_valid_rows(tmp_path: Path):
    path = tmp_path / "sudoku.csv"
    path.write_text("puzzle,answer\n")
    with pytest.raises(ValueError, match="expected the header 'quizzes,solutions'"):
        read_sudoku_csv(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_sudoku_csv(tmp_path / "nope.csv")
    path.write_text("quizzes,solutions\n123,456\n")
    with pytest.warns(UserWarning, match="line 2"), pytest.raises(ValueError, match="no valid rows"):
        read_sudoku_csv(path, "skip")
    with pytest.raises(ValueError, match="on_bad_rows"):
        read_sudoku_csv(path, "ignore")
