"""Find the template, the header row, the data rows and the output column in a 2-D grid.

Pure functions over cell values (row-major lists, 0-based), so every surface shares one reading
of a sheet and hypothesis can test it without a file.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from openpyxl.utils import get_column_letter

from .errors import TableError
from .template import display, variable_name

Grid = Sequence[Sequence[Any]]
LABEL_SCAN_ROWS = 10
"""How far down a ``template`` label cell is looked for."""


@dataclass(frozen=True)
class TemplateText:
    """A template's text and where it came from, e.g. ``'Products'!B1`` or a file name."""

    text: str
    origin: str


@dataclass(frozen=True)
class Bounds:
    """A rectangle of the grid, 0-based and inclusive: an Excel Table's extent."""

    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class Table:
    """Where the parts of one batch sit in a sheet."""

    sheet: str
    template: TemplateText
    header_row: int
    columns: dict[int, str]
    """Input columns: grid column index -> header text (the output column is not among them)."""
    rows: list[int]
    """Grid rows holding data, in order; blank rows are skipped and keep their place."""
    output_col: int
    output_header: str
    output_exists: bool

    def record(self, grid: Grid, row: int) -> dict[str, Any]:
        """One data row as header -> value."""
        cells = grid[row]
        return {h: (cells[c] if c < len(cells) else None) for c, h in self.columns.items()}

    def output_value(self, grid: Grid, row: int) -> Any:
        cells = grid[row]
        return cells[self.output_col] if self.output_col < len(cells) else None


def cell_name(sheet: str, row: int, col: int) -> str:
    """An A1 reference a user can click to: ``'Sheet 1'!B3``."""
    return f"{quote_sheet(sheet)}!{get_column_letter(col + 1)}{row + 1}"


def quote_sheet(sheet: str) -> str:
    return "'" + sheet.replace("'", "''") + "'"


def _text(value: Any) -> str:
    return display(value).strip()


def _is_blank(cells: Sequence[Any]) -> bool:
    return all(_text(v) == "" for v in cells)


def find_template_label(grid: Grid, sheet: str) -> tuple[TemplateText, int] | None:
    """The cell right of a ``template`` label in the first rows, and the label's row."""
    for r, cells in enumerate(grid[:LABEL_SCAN_ROWS]):
        for c, value in enumerate(cells):
            if _text(value).rstrip(":").strip().lower() != "template":
                continue
            right = cells[c + 1] if c + 1 < len(cells) else None
            if right is None or _text(right) == "":
                raise TableError(
                    f"{cell_name(sheet, r, c)} reads 'template' but the cell to its right, "
                    f"{cell_name(sheet, r, c + 1)}, is empty. Put the prompt template there."
                )
            return TemplateText(str(right), cell_name(sheet, r, c + 1)), r
    return None


def locate(
    grid: Grid,
    sheet: str,
    *,
    explicit: TemplateText | None = None,
    fallback: TemplateText | None = None,
    bounds: Bounds | None = None,
    output_header: str = "response",
) -> Table:
    """Read a sheet by the conventions in DESIGN.md.

    ``explicit`` (command line, defined name) wins over a ``template`` label cell, which wins
    over ``fallback`` (the promptbatch.conf sheet). ``bounds`` is an Excel Table's extent.
    """
    label = find_template_label(grid, sheet)
    template = explicit or (label[0] if label else None) or fallback
    if template is None:
        raise TableError(
            f"No prompt template found for sheet {quote_sheet(sheet)}. Put the word 'template' "
            "in a cell of the first rows and the template in the cell to its right, define a "
            "workbook name prompt_template, or pass --template / --template-file."
        )
    if bounds is not None:
        header_row, last_row, left, right = bounds.top, bounds.bottom, bounds.left, bounds.right
    else:
        start = label[1] + 1 if label else 0
        header_row = next((r for r in range(start, len(grid)) if not _is_blank(grid[r])), -1)
        if header_row < 0:
            raise TableError(f"Sheet {quote_sheet(sheet)} has no header row below row "
                             f"{start}: the first non-empty row must name the variables.")
        last_row = len(grid) - 1
        used = [c for c, v in enumerate(grid[header_row]) if _text(v)]
        left, right = used[0], used[-1]
    headers = {c: _text(grid[header_row][c]) if c < len(grid[header_row]) else ""
               for c in range(left, right + 1)}
    wanted = output_header.strip().lower()
    out = next((c for c, h in headers.items() if h.lower() == wanted), None)
    after = grid[header_row][right + 1] if right + 1 < len(grid[header_row]) else None
    if out is None and _text(after).lower() == wanted:
        out = right + 1
        headers[out] = _text(after)
    columns = {c: h for c, h in headers.items() if h and c != out}
    if not columns:
        raise TableError(f"The header row of sheet {quote_sheet(sheet)} (row {header_row + 1}) "
                         "names no input column.")
    _check_unique(columns, sheet, header_row)
    input_cols = list(columns)
    rows = [r for r in range(header_row + 1, last_row + 1)
            if not _is_blank([grid[r][c] for c in input_cols if c < len(grid[r])])]
    return Table(
        sheet=sheet,
        template=template,
        header_row=header_row,
        columns=columns,
        rows=rows,
        output_col=out if out is not None else right + 1,
        output_header=headers[out] if out is not None else output_header,
        output_exists=out is not None,
    )


def _check_unique(columns: dict[int, str], sheet: str, header_row: int) -> None:
    seen: dict[str, int] = {}
    for c, h in columns.items():
        name = variable_name(h)
        if not name:
            continue
        if name in seen:
            first = cell_name(sheet, header_row, seen[name])
            raise TableError(
                f"Headers {first} ({columns[seen[name]]!r}) and "
                f"{cell_name(sheet, header_row, c)} ({h!r}) both become the variable "
                f"{{{{ {name} }}}}. Rename one of them."
            )
        seen[name] = c
