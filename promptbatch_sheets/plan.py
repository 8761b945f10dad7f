"""Which rows of a table to send, and the prompt each one gets (pure, no I/O).

Rendering every prompt before the first call means a template mistake costs nothing, and it
lets the engine send identical prompts once.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from enum import Enum

from .errors import TableError, TemplateError
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


def make_plan(table: Table, grid: Grid, rerun: Rerun = Rerun.MISSING,
              uncalculated: Collection[tuple[int, int]] = frozenset()) -> Plan:
    """Parse and check the template against the headers, then render each selected row.

    ``uncalculated`` are cells holding a formula saved without its value (see SheetData).
    """
    template = Template.parse(table.template.text, table.template.origin)
    _check_not_reading_answers(table, template)
    template.check_columns(list(table.columns.values()))
    used = [c for c, h in table.columns.items()
            if variable_name(h) in template.variables or template.uses_row]
    _check_calculated(table, used, uncalculated)
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


def _check_not_reading_answers(table: Table, template: Template) -> None:
    """``{{ response }}`` would read the column the answers overwrite: refuse, say which."""
    name = variable_name(table.output_header)
    inputs = {variable_name(h) for h in table.columns.values()}
    if name and name in template.variables and name not in inputs:
        raise TemplateError(
            f"The template in {template.origin} uses {{{{ {name} }}}}, but "
            f"{cell_name(table.sheet, table.header_row, table.output_col)} "
            f"({table.output_header!r}) is the answers column, which the run writes. Choose "
            "another answers column with --output-column NAME, or rename that header.")


def _check_calculated(table: Table, used: list[int],
                      uncalculated: Collection[tuple[int, int]]) -> None:
    """A formula with no saved value reads as empty: the prompt would silently lack it."""
    cols = set(used)
    found = sorted((r, c) for r, c in uncalculated
                   if c in cols and table.header_row < r <= table.last_row)
    if found:
        row, col = found[0]
        more = f" (and {len(found) - 1} more cells)" if len(found) > 1 else ""
        raise TableError(
            f"{cell_name(table.sheet, row, col)}{more} holds a formula whose value was never "
            "calculated: the program that saved the file does not calculate formulas. Open "
            "and save the file in Excel or LibreOffice so the values are calculated, then "
            "run again.")


EXCEL_ERRORS = frozenset({"#N/A", "#REF!", "#VALUE!", "#DIV/0!", "#NAME?", "#NULL!", "#NUM!",
                          "#SPILL!", "#CALC!", "#GETTING_DATA"})


def _is_error_value(value: object) -> bool:
    """A spreadsheet error in a variable would only make the model guess: do not send it."""
    return isinstance(value, str) and value.strip().upper() in EXCEL_ERRORS
