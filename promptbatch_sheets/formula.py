"""``=PROMPTBATCH(template, range)`` in Excel and in Google Sheets: a formula's range planned
as a sheet is, and its answers returned instead of written.

The range (its header row, then data rows) is read as an Excel Table at A1 of a sheet of its
own, so the command line's rules hold: blank rows stay blank, a cell holding ``#N/A`` is not
sent, a template error stops before any call, structured answers are checked and asked
again once. Every row is answered (from the cache when it can: recalculation is free), and
answers become cells by ``plan.Step.cells``, as a run writes them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import replace
from typing import Any

from . import runner
from .cells import CellValue
from .plan import Rerun
from .runner import Prepared
from .schema import Schema
from .settings import Settings
from .surfaces.base import Cell, SheetData
from .table import Bounds, TemplateText
from .template import display

RANGE = "PROMPTBATCH range"
"""What a formula's cells are named by in messages: ``'PROMPTBATCH range'!B3`` is the cell
of the range's second column and third row."""
ANSWERS = "response"


def plan_range(template: TemplateText, table: Sequence[Sequence[Any]], settings: Settings,
               schema: Schema | None = None) -> Prepared:
    """The prompts of ``table`` (its header row, then data rows) and how their answers
    become cells; ``schema`` for answers in fields."""
    grid = [list(row) for row in table]
    width = max((len(row) for row in grid), default=0)
    taken = {display(h).strip().lower() for h in (grid[0] if grid else [])}
    answers, n = ANSWERS, 1
    while answers in taken:  # the answers column is no input column, whatever the headers
        answers, n = f"{ANSWERS} {n}", n + 1
    settings = replace(settings, rerun=Rerun.ALL, output_column=answers, skip_hidden=False,
                       metadata="", fields=None, schema=None)
    data = SheetData(RANGE, grid, template=template,
                     bounds=Bounds(0, 0, len(grid) - 1, max(width, 1) - 1))
    return runner.plan_sheet(data, settings, schemas={answers: schema} if schema else {})


def width(prepared: Prepared) -> int:
    """Cells per answer: one, or one per field."""
    return len(prepared.plan.steps[0].cols)


def row_values(prepared: Prepared, cells: Iterable[Cell]) -> list[list[CellValue] | None]:
    """One list of cells per data row, as the formula returns them: the answer (or the
    reason it failed, in the first cell), empty cells for a blank row, None for a row
    whose answer has not come yet."""
    cols = prepared.plan.steps[0].cols
    written: dict[int, dict[int, CellValue]] = {}
    for row, col, value in cells:
        if row > 0:  # the header row gets the new answers headers
            written.setdefault(row, {})[col] = value
    asked = set(prepared.plan.table.rows)
    out: list[list[CellValue] | None] = []
    for row in range(1, len(prepared.data.grid)):
        if row not in asked:
            out.append([""] * len(cols))
        elif row in written:
            out.append([written[row].get(col, "") for col in cols])
        else:
            out.append(None)
    return out
