"""A surface that keeps the cells written to it, for a caller that writes them itself.

The server hands them back to the Apps Script, which writes them into the sheet; a formula
(Excel's and Google's ``=PROMPTBATCH``) returns them as its values. Both read and plan their
rows as every surface does, so their cells are the ones a run would write.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import Cell, SheetData, Surface


class CaughtCells(Surface):
    """The sheet it was given, and every cell written, fitted to ``cell_limit``."""

    def __init__(self, data: SheetData, cell_limit: int) -> None:
        self.data = data
        self.cell_limit = cell_limit
        self.cells: list[Cell] = []

    def read(self) -> SheetData:
        return self.data

    def write(self, cells: Sequence[Cell]) -> None:
        self.cells += [(row, col, self.fit(value)) for row, col, value in cells]
