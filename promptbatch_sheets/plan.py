"""Which rows of a table to send, and the prompt each one gets (pure, no I/O).

Rendering every prompt before the first call means a template mistake costs nothing, and it
lets the engine send identical prompts once.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from .table import Grid, Table, cell_name
from .template import Template, display, variable_name

ERROR_PREFIX = "#ERROR:"


class Rerun(str, Enum):
    """Which rows a run sends, judged by what their output cell already holds."""

    MISSING = "missing"
    """Empty and failed rows (the default: a rerun repairs, it does not redo)."""
    EMPTY = "empty"
    FAILED = "failed"
    ALL = "all"

    def wants(self, current: str) -> bool:
        failed = current.startswith(ERROR_PREFIX)
        empty = current.strip() == ""
        return {
            Rerun.MISSING: empty or failed,
            Rerun.EMPTY: empty,
            Rerun.FAILED: failed,
            Rerun.ALL: True,
        }[self]


@dataclass(frozen=True)
class RowJob:
    """One row to answer: its grid row and its rendered prompt."""

    row: int
    prompt: str


@dataclass(frozen=True)
class Plan:
    table: Table
    template: Template
    jobs: list[RowJob]
    kept: int
    """Rows whose existing answer the rerun mode keeps."""
    refused: list[tuple[int, str]]
    """Rows not worth a call, with the reason for their cell: a variable holds #N/A."""


def make_plan(table: Table, grid: Grid, rerun: Rerun = Rerun.MISSING) -> Plan:
    """Parse and check the template against the headers, then render each selected row."""
    template = Template.parse(table.template.text, table.template.origin)
    template.check_columns(list(table.columns.values()))
    used = [c for c, h in table.columns.items()
            if variable_name(h) in template.variables or template.uses_row]
    jobs: list[RowJob] = []
    refused: list[tuple[int, str]] = []
    kept = 0
    for row in table.rows:
        if not rerun.wants(display(table.output_value(grid, row))):
            kept += 1
            continue
        broken = next((c for c in used if _is_error_value(grid[row][c] if c < len(grid[row])
                                                         else None)), None)
        if broken is not None:
            refused.append((row, f"{cell_name(table.sheet, row, broken)} holds "
                                 f"{grid[row][broken]}; fix that cell and run again"))
            continue
        where = f"row {row + 1} ({cell_name(table.sheet, row, table.output_col)})"
        jobs.append(RowJob(row, template.render(table.record(grid, row), where)))
    return Plan(table, template, jobs, kept, refused)


EXCEL_ERRORS = frozenset({"#N/A", "#REF!", "#VALUE!", "#DIV/0!", "#NAME?", "#NULL!", "#NUM!",
                          "#SPILL!", "#CALC!", "#GETTING_DATA"})


def _is_error_value(value: object) -> bool:
    """A spreadsheet error in a variable would only make the model guess: do not send it."""
    return isinstance(value, str) and value.strip().upper() in EXCEL_ERRORS
