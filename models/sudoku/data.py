"""Sudoku data: a vectorized puzzle generator, the `sudoku.csv` reader/writer, and the datasets.

Solved grids come from one valid base pattern transformed by validity-preserving shuffles (bands,
rows within a band, stacks, columns within a stack, digit relabelling, transposition), all drawn
per grid with numpy at once. Every generated grid is therefore equivalent to the base pattern under
Sudoku's symmetries — a narrower family than real puzzle collections; pass a real file through
`data_path` to train on those. Puzzles blank cells at random, keeping a per-stage number of givens,
so a puzzle may have more than one solution (the solve-rate metric accepts any valid completion).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.sudoku.grid import N_CELLS, is_valid_solution

STAGE_GIVENS: dict[str, tuple[int, int]] = {"easy": (36, 45), "medium": (30, 35), "hard": (22, 29),
                                             "beginner": (56, 65)}
"""Inclusive range of givens per difficulty stage. `beginner` (16-25 blanks) is not one of the seed's: easy enough
that a CPU-sized network solves whole grids within minutes, so quality changes can be seen in grid accuracy."""
STAGES = tuple(STAGE_GIVENS)
CURRICULUM = ("easy", "medium", "hard")
"""The seed-003 schedule's stages, in order."""
CURRICULUM_EPOCH_SHARES = (15, 20, 25)
"""Epochs spent on easy, medium, hard in the seed-003 schedule (15 + 20 + 25 of 60)."""
CSV_HEADER = "quizzes,solutions"
_MAX_LISTED = 5  # malformed rows named in a warning / error before "... and N more"


# --- generation --------------------------------------------------------------------------------

def _random_perms(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n independent random permutations of range(k), (n, k)."""
    return np.argsort(rng.random((n, k)), axis=1)


def _line_perm(rng: np.random.Generator, n: int) -> np.ndarray:
    """Random row (or column) orders that keep bands intact: shuffle the bands, then rows in each."""
    bands = _random_perms(rng, n, 3)                                # (n, 3)
    inner = _random_perms(rng, n * 3, 3).reshape(n, 3, 3)           # (n, band, row-in-band)
    return (bands[:, :, None] * 3 + inner).reshape(n, 9)


def solved_grids(n: int, rng: np.random.Generator) -> np.ndarray:
    """n valid solved grids, (n, 81) uint8 digits 1..9."""
    r = np.arange(9)
    base = (3 * (r[:, None] % 3) + r[:, None] // 3 + r[None, :]) % 9   # (9, 9) digits 0..8, valid
    rows, cols = _line_perm(rng, n), _line_perm(rng, n)
    grids = base[rows[:, :, None], cols[:, None, :]]                 # (n, 9, 9)
    relabel = _random_perms(rng, n, 9)                               # digit d -> relabel[d]
    grids = np.take_along_axis(relabel, grids.reshape(n, 81), axis=1).reshape(n, 9, 9)
    flip = rng.random(n) < 0.5
    grids = np.where(flip[:, None, None], grids.transpose(0, 2, 1), grids)
    return (grids.reshape(n, N_CELLS) + 1).astype(np.uint8)


def blank_cells(solutions: np.ndarray, stage: str, rng: np.random.Generator) -> np.ndarray:
    """Puzzles from solutions: keep a random set of givens, its size drawn from the stage's range."""
    if stage not in STAGE_GIVENS:
        raise ValueError(f"knob 'stage': bad value {stage!r}; allowed: {' | '.join(STAGES)}")
    lo, hi = STAGE_GIVENS[stage]
    n = len(solutions)
    n_givens = rng.integers(lo, hi + 1, size=n)                      # (n,)
    rank = np.argsort(np.argsort(rng.random((n, N_CELLS)), axis=1), axis=1)  # random rank of each cell
    return np.where(rank < n_givens[:, None], solutions, 0).astype(np.uint8)


def generate(n: int, stages: Sequence[str], seed: int, split: str) -> dict[str, torch.Tensor]:
    """n solved grids and, for each stage, a puzzle blanked from each: quizzes (S, n, 81), solutions (n, 81)."""
    rng = np.random.default_rng([seed, {"train": 0, "eval": 1}[split]])
    solutions = solved_grids(n, rng)
    quizzes = np.stack([blank_cells(solutions, stage, rng) for stage in stages])
    return {"quizzes": torch.from_numpy(quizzes), "solutions": torch.from_numpy(solutions)}


# --- sudoku.csv ---------------------------------------------------------------------------------

def _field_problem(fields: list[str]) -> str | None:
    """Why a split CSV row has the wrong shape (field count, lengths), or None."""
    if len(fields) != 2:
        return f"expected 2 comma-separated fields (quiz,solution), found {len(fields)}"
    for what, text in zip(("quiz", "solution"), fields, strict=True):
        if len(text) != N_CELLS:
            return f"{what} has {len(text)} characters, expected {N_CELLS}"
    return None


def _raw_digits(texts: list[str]) -> np.ndarray:
    """81-character strings -> (n, 81) uint8 character codes (a non-ASCII character becomes '?')."""
    return np.frombuffer("".join(texts).encode("ascii", errors="replace"), np.uint8).reshape(-1, N_CELLS)


def _content_problems(raw_quizzes: np.ndarray, raw_solutions: np.ndarray) -> list[tuple[int, str]]:
    """(row index, why) for rows with a non-digit, a given that disagrees, or an invalid solution."""
    zero = ord("0")
    quizzes, solutions = raw_quizzes.astype(np.int16) - zero, raw_solutions.astype(np.int16) - zero
    bad_quiz = (quizzes < 0) | (quizzes > 9)                          # (n, 81)
    bad_solution = (solutions < 1) | (solutions > 9)
    disagree = (quizzes != 0) & (quizzes != solutions)
    checks = (
        (bad_quiz, lambda i, c: f"quiz contains {chr(raw_quizzes[i, c])!r}; only digits 0-9 are allowed"),
        (bad_solution, lambda i, c: f"solution contains {chr(raw_solutions[i, c])!r}; only digits 1-9 are allowed"),
        (disagree, lambda i, c: f"given {quizzes[i, c]} at row {c // 9 + 1} col {c % 9 + 1} disagrees with "
                                f"the solution's {solutions[i, c]}"),
    )
    found: dict[int, str] = {}
    for cells, why in checks:
        for i in np.flatnonzero(cells.any(axis=1)):
            found.setdefault(int(i), why(i, int(np.argmax(cells[i]))))
    clean = np.ones(len(quizzes), bool)
    clean[list(found)] = False
    solution_ok = is_valid_solution(torch.from_numpy(np.where(clean[:, None], solutions, 1))).numpy()
    for i in np.flatnonzero(clean & ~solution_ok):
        found[int(i)] = "solution is not a valid Sudoku (a digit repeats in a row, column or box)"
    return sorted(found.items())


def _texts(grids: np.ndarray) -> list[str]:
    """(n, 81) digits -> n 81-character strings."""
    raw = (grids.astype(np.uint8) + ord("0")).tobytes().decode("ascii")
    return [raw[i:i + N_CELLS] for i in range(0, len(raw), N_CELLS)]


def read_sudoku_csv(path: str | os.PathLike[str], on_bad_rows: str = "skip") -> tuple[np.ndarray, np.ndarray]:
    """Read a `quizzes,solutions` file -> (quizzes, solutions), each (n, 81) uint8.

    A malformed row (wrong field count or length, a non-digit, a given that disagrees with the
    solution, a solution that is not a valid Sudoku) is named with its line number: with
    on_bad_rows="skip" it is dropped and a warning lists it; with "refuse" a ValueError lists it.
    """
    if on_bad_rows not in ("skip", "refuse"):
        raise ValueError(f"knob 'on_bad_rows': bad value {on_bad_rows!r}; allowed: skip | refuse")
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"knob 'data_path': file '{p}' does not exist; give a sudoku.csv path or leave it empty")
    with p.open(encoding="utf-8", errors="replace", newline="") as f:
        header = f.readline().strip().lower().replace(" ", "")
        if header != CSV_HEADER:
            raise ValueError(f"knob 'data_path': '{p}' line 1 is {header[:40]!r}; expected the header "
                             f"'{CSV_HEADER}' (81-digit strings, 0 for a blank)")
        problems: list[tuple[int, str]] = []
        lines: list[int] = []
        quiz_texts: list[str] = []
        solution_texts: list[str] = []
        for line_no, line in enumerate(f, start=2):
            line = line.strip()
            if not line:
                continue  # blank lines (e.g. a trailing newline) carry no row
            fields = [x.strip() for x in line.split(",")]
            problem = _field_problem(fields)
            if problem is not None:
                problems.append((line_no, problem))
                continue
            lines.append(line_no)
            quiz_texts.append(fields[0])
            solution_texts.append(fields[1])
    raw_quizzes, raw_solutions = _raw_digits(quiz_texts), _raw_digits(solution_texts)
    keep = np.ones(len(lines), bool)
    for i, why in _content_problems(raw_quizzes, raw_solutions):
        problems.append((lines[i], why))
        keep[i] = False
    if problems:
        problems.sort()
        listed = "; ".join(f"line {n}: {why}" for n, why in problems[:_MAX_LISTED])
        more = f"; ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
        if on_bad_rows == "refuse":
            raise ValueError(f"'{p}': {len(problems)} malformed row(s): {listed}{more}; fix them or set "
                             "on_bad_rows=skip to drop them")
        warnings.warn(f"'{p}': skipped {len(problems)} malformed row(s): {listed}{more}", stacklevel=2)
    if not keep.any():
        raise ValueError(f"knob 'data_path': '{p}' has no valid rows; expected '{CSV_HEADER}' rows of 81 digits")
    zero = np.uint8(ord("0"))
    return raw_quizzes[keep] - zero, raw_solutions[keep] - zero


def write_sudoku_csv(path: str | os.PathLike[str], quizzes: np.ndarray, solutions: np.ndarray) -> None:
    """Write puzzles in the `quizzes,solutions` format (81-digit strings, 0 for a blank)."""
    quizzes, solutions = np.asarray(quizzes), np.asarray(solutions)
    if quizzes.shape != solutions.shape or quizzes.ndim != 2 or quizzes.shape[1] != N_CELLS:
        raise ValueError(f"quizzes {quizzes.shape} and solutions {solutions.shape} must both be (n, 81)")
    if quizzes.min(initial=0) < 0 or quizzes.max(initial=0) > 9 or solutions.min(initial=1) < 1 \
            or solutions.max(initial=9) > 9:
        raise ValueError("quizzes must hold digits 0-9 and solutions digits 1-9")
    quiz_rows, solution_rows = _texts(quizzes), _texts(solutions)
    body = "".join(f"{q},{s}\n" for q, s in zip(quiz_rows, solution_rows, strict=True))
    Path(path).write_text(f"{CSV_HEADER}\n{body}")


# --- datasets -----------------------------------------------------------------------------------

def curriculum_stage_index(epoch: int, total_epochs: int, n_stages: int) -> int:
    """Which of the first n_stages stages epoch `epoch` trains on, in the 15:20:25 seed schedule."""
    shares = np.asarray(CURRICULUM_EPOCH_SHARES[:n_stages], float)
    ends = np.cumsum(shares) / shares.sum() * max(total_epochs, 1)   # epoch where each stage ends
    return int(min(np.searchsorted(ends, epoch, side="right"), n_stages - 1))


class SudokuDataset(torch.utils.data.Dataset):
    """Puzzles and solutions; with several stages held, `set_epoch` picks the stage (curriculum).

    The current stage lives in a shared-memory tensor, so DataLoader workers (persistent ones
    included) see a change made in the training process before the next epoch's iterator starts.
    """

    def __init__(self, quizzes: torch.Tensor, solutions: torch.Tensor, stages: Sequence[str],
                 total_epochs: int = 1) -> None:
        assert quizzes.ndim == 3 and quizzes.shape[0] == len(stages) and quizzes.shape[1:] == solutions.shape
        self.quizzes = quizzes            # (S, n, 81) uint8
        self.solutions = solutions        # (n, 81) uint8
        self.stages = tuple(stages)
        self.total_epochs = total_epochs
        self._stage = torch.zeros((), dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.solutions.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.quizzes[int(self._stage), i], self.solutions[i]

    @property
    def stage(self) -> str:
        """The stage served now."""
        return self.stages[int(self._stage)]

    def set_epoch(self, epoch: int) -> None:
        """Serve the curriculum's stage for this (0-based) epoch."""
        self._stage.fill_(curriculum_stage_index(epoch, self.total_epochs, len(self.stages)))


def collate_puzzles(items: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack (quiz, solution) pairs -> {"quiz": (B, 81) int64, "solution": (B, 81) int64}."""
    quizzes, solutions = zip(*items, strict=True)
    return {"quiz": torch.stack(quizzes).long(), "solution": torch.stack(solutions).long()}
