"""Find the template, the header row, the data rows and the output column in a 2-D grid.

Pure functions over cell values (row-major lists, 0-based), so every surface shares one reading
of a sheet and hypothesis can test it without a file.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

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
    last_row: int
    """The last grid row the table spans (blank or not)."""
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


def column_letter(col: int) -> str:
    """Excel's name of a 1-based column (1 -> A, 28 -> AB); computed here, not imported from
    openpyxl, so a CSV run does not load openpyxl."""
    letters = ""
    while col > 0:
        col, rest = divmod(col - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def cell_name(sheet: str, row: int, col: int) -> str:
    """An A1 reference a user can click to: ``'Sheet 1'!B3``."""
    return f"{quote_sheet(sheet)}!{column_letter(col + 1)}{row + 1}"


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
    skip_rows: Collection[int] = frozenset(),
    merged: Sequence[Bounds] = (),
) -> Table:
    """Read a sheet by the conventions in DESIGN.md.

    ``explicit`` (command line, defined name) wins over a ``template`` label cell, which wins
    over ``fallback`` (the promptbatch.conf sheet). ``bounds`` is an Excel Table's extent;
    ``skip_rows`` are data rows to leave out (hidden rows); ``merged`` are merged ranges, which
    the answers column must not cross.
    """
    label = find_template_label(grid, sheet)
    template = explicit or (label[0] if label else None) or fallback
    if template is None:
        raise TableError(
            f"No prompt template found for sheet {quote_sheet(sheet)}. Put the word 'template' "
            "in a cell of the first rows and the template in the cell to its right, define a "
            "workbook name prompt_template, or pass --template / --template-file."
        )
    header_row, last_row, left, right = _extent(grid, sheet, bounds, label[1] + 1 if label else 0)
    headers = {c: _text(grid[header_row][c]) if c < len(grid[header_row]) else ""
               for c in range(left, right + 1)}
    out = _output_column(headers, grid[header_row], right, output_header, sheet, header_row)
    if out is not None and out not in headers:
        headers[out] = _text(grid[header_row][out])
    columns = {c: h for c, h in headers.items() if h and c != out}
    if not columns:
        raise TableError(f"The header row of sheet {quote_sheet(sheet)} (row {header_row + 1}) "
                         "names no input column.")
    _check_unique(columns, sheet, header_row)
    unnamed = [c for c, h in headers.items() if not h and c != out]
    _check_unnamed(grid, unnamed + ([right + 1] if out is None else []), sheet, header_row,
                   last_row)
    input_cols = list(columns)
    rows = [r for r in range(header_row + 1, last_row + 1) if r not in skip_rows
            and not _is_blank([grid[r][c] for c in input_cols if c < len(grid[r])])]
    output_col = out if out is not None else right + 1
    _check_unmerged(merged, output_col, header_row, last_row, sheet)
    return Table(
        sheet=sheet,
        template=template,
        header_row=header_row,
        columns=columns,
        rows=rows,
        last_row=last_row,
        output_col=output_col,
        output_header=headers[out] if out is not None else output_header,
        output_exists=out is not None,
    )


def _extent(grid: Grid, sheet: str, bounds: Bounds | None,
            start: int) -> tuple[int, int, int, int]:
    """Header row, last row, first and last column: an Excel Table's, or the first non-empty
    row's at or below ``start`` down to the end of the sheet."""
    if bounds is not None:
        return bounds.top, bounds.bottom, bounds.left, bounds.right
    header_row = next((r for r in range(start, len(grid)) if not _is_blank(grid[r])), -1)
    if header_row < 0:
        raise TableError(
            f"Sheet {quote_sheet(sheet)} has no header row" + (
                f" below the template (row {start})" if start else "") + ": the first "
            "non-empty row must name the variables, e.g. Product Name | Price.")
    used = [c for c, v in enumerate(grid[header_row]) if _text(v)]
    return header_row, len(grid) - 1, used[0], used[-1]


def _output_column(headers: dict[int, str], header_cells: Sequence[Any], right: int,
                   output_header: str, sheet: str, header_row: int) -> int | None:
    """The column headed like the answers column: inside the table, or right after it.

    A header equal to the output column *is* the answers column (its text is kept unless
    ``rerun`` says otherwise); two of them would leave the answers nowhere certain.
    """
    wanted = output_header.strip().lower()
    found = [c for c, h in headers.items() if h.lower() == wanted]
    if len(found) > 1:
        first, second = (cell_name(sheet, header_row, c) for c in found[:2])
        raise TableError(
            f"Headers {first} and {second} both read {headers[found[0]]!r}, the answers column "
            "(setting output_column). Rename one of them, or choose another answers column "
            "with --output-column NAME.")
    if found:
        return found[0]
    after = header_cells[right + 1] if right + 1 < len(header_cells) else None
    return right + 1 if _text(after).lower() == wanted else None


def _check_unnamed(grid: Grid, cols: list[int], sheet: str, header_row: int,
                   last_row: int) -> None:
    """A column with data but no header would be left out of every prompt, or, right of the
    table, overwritten by the answers."""
    for c in cols:
        filled = next((r for r in range(header_row + 1, last_row + 1)
                       if c < len(grid[r]) and _text(grid[r][c])), None)
        if filled is not None:
            raise TableError(
                f"Column {column_letter(c + 1)} has data ({cell_name(sheet, filled, c)}) "
                f"but no header: {cell_name(sheet, header_row, c)} is empty. Give it a header "
                "so the template can use it as a variable, or move the data out of the table.")


def _check_unmerged(merged: Sequence[Bounds], col: int, header_row: int, last_row: int,
                    sheet: str) -> None:
    """Excel shows only the first cell of a merged range: answers there would be hidden."""
    for m in merged:
        if m.left <= col <= m.right and m.top <= last_row and m.bottom >= header_row:
            corner = f"{column_letter(m.right + 1)}{m.bottom + 1}"
            area = f"{cell_name(sheet, m.top, m.left)}:{corner}"
            raise TableError(
                f"The answers column {column_letter(col + 1)} crosses the merged cells "
                f"{area}; answers written there "
                "would be hidden. Unmerge them (Home > Merge & Center), or choose another "
                "answers column with --output-column NAME.")


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
