"""Sudoku: a recurrent relational network solver (seed 003), its puzzle generator and metrics."""

from models.sudoku.workload import SudokuWorkload

WORKLOAD = SudokuWorkload()

__all__ = ["WORKLOAD", "SudokuWorkload"]
