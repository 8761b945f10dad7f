"""Excel files (.xlsx, .xlsm) through openpyxl, written to a new file beside the original.

openpyxl drops parts of many real workbooks on save, so the user's file is never the target
by default; answers go to ``NAME.promptbatch.xlsx`` unless ``-o`` says otherwise.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils.cell import range_boundaries
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.table import TableColumn
from openpyxl.worksheet.worksheet import Worksheet

from ..errors import WorkbookError
from ..sheet import Cell, SheetData, fit_cell
from ..table import Bounds, TemplateText, quote_sheet
from .files import atomic_write, check_readable, default_output

EXCEL_CELL_LIMIT = 32_767
CONF_SHEET = "promptbatch.conf"
TEMPLATE_NAME = "prompt_template"


def _load(path: Path, values: bool) -> Workbook:
    try:
        return openpyxl.load_workbook(path, data_only=values,
                                      keep_vba=path.suffix.lower() == ".xlsm")
    except zipfile.BadZipFile:
        raise WorkbookError(f"{path} is not a readable .xlsx workbook (the zip is damaged or "
                            "it is another kind of file). Open it in Excel and save it as "
                            ".xlsx.") from None
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise WorkbookError(f"{path} could not be read as a workbook: {exc}") from None


class XlsxSurface:
    def __init__(self, path: Path, sheet: str | None = None, output: Path | None = None) -> None:
        check_readable(path)
        self.path = path
        self.sheet_name = sheet
        self.output = output or default_output(path)
        self._values = _load(path, values=True)
        self._book: Workbook | None = None
        self._sheet = self._pick_sheet(self._values)

    def _pick_sheet(self, book: Workbook) -> Worksheet:
        names = [ws.title for ws in book.worksheets]
        if self.sheet_name is not None:
            if self.sheet_name not in names:
                raise WorkbookError(f"{self.path} has no sheet {self.sheet_name!r}. Sheets: "
                                    + ", ".join(repr(n) for n in names))
            return book[self.sheet_name]
        active = book.active
        if isinstance(active, Worksheet) and active.title.lower() != CONF_SHEET:
            return active
        candidates = [ws for ws in book.worksheets if ws.title.lower() != CONF_SHEET]
        if not candidates:
            raise WorkbookError(f"{self.path} has no worksheet to run.")
        return candidates[0]

    def read(self) -> SheetData:
        ws = self._sheet
        grid = [list(row) for row in ws.iter_rows(values_only=True)]
        return SheetData(name=ws.title, grid=grid, template=self._defined_template(),
                         bounds=self._table_bounds(ws), settings=self._conf())

    def _defined_template(self) -> TemplateText | None:
        names = dict(self._values.defined_names.items())
        names.update(self._sheet.defined_names.items())
        defined = names.get(TEMPLATE_NAME)
        if defined is None:
            return None
        for sheet, coord in defined.destinations:
            ref = f"{quote_sheet(sheet)}!{coord.replace('$', '')}"
            return TemplateText(self.cell_text(ref), f"{ref} (the name {TEMPLATE_NAME})")
        return None

    @staticmethod
    def _table_bounds(ws: Worksheet) -> Bounds | None:
        for table in ws.tables.values():
            left, top, right, bottom = range_boundaries(table.ref)
            return Bounds(top - 1, left - 1, bottom - 1, right - 1)
        return None

    def _conf(self) -> dict[str, str]:
        conf = next((ws for ws in self._values.worksheets if ws.title.lower() == CONF_SHEET), None)
        if conf is None:
            return {}
        settings: dict[str, str] = {}
        for key, value, *_ in conf.iter_rows(values_only=True, max_col=2):
            if key is None or value is None or str(key).strip().lower() == "key":
                continue
            settings[str(key).strip().lower()] = str(value)
        return settings

    def cell_text(self, ref: str) -> str:
        sheet, _, coord = ref.rpartition("!")
        sheet = sheet.strip("'").replace("''", "'") if sheet else self._sheet.title
        if sheet not in self._values.sheetnames:
            raise WorkbookError(f"Cell {ref}: no sheet {sheet!r}. Sheets: "
                                + ", ".join(repr(n) for n in self._values.sheetnames))
        try:
            value: Any = self._values[sheet][coord.replace("$", "")].value
        except (ValueError, AttributeError):
            raise WorkbookError(f"{ref} is not a cell reference; write it like 'Sheet 1'!B2."
                                ) from None
        return "" if value is None else str(value)

    def write(self, cells: Sequence[Cell]) -> None:
        if self._book is None:
            self._book = _load(self.path, values=False)
        ws = self._book[self._sheet.title]
        for row, col, text in cells:
            cell = ws.cell(row=row + 1, column=col + 1)
            cell.value = fit_cell(text, EXCEL_CELL_LIMIT)
            cell.data_type = "s"  # an answer starting with "=" is text, not a formula
        self._grow_table(ws, cells)

    @staticmethod
    def _grow_table(ws: Worksheet, cells: Sequence[Cell]) -> None:
        """A new column right of an Excel Table becomes the table's last column."""
        for table in ws.tables.values():
            left, top, right, bottom = range_boundaries(table.ref)
            header = next((t for r, c, t in cells if r == top - 1 and c == right), None)
            if header is None:
                continue
            table.tableColumns.append(TableColumn(id=len(table.tableColumns) + 1, name=header))
            table.ref = f"{ws.cell(top, left).coordinate}:{ws.cell(bottom, right + 1).coordinate}"
            if table.autoFilter is not None:
                table.autoFilter.ref = table.ref

    def close(self) -> None:
        book = self._book
        if book is None:
            return
        atomic_write(self.output, lambda tmp: book.save(tmp))
