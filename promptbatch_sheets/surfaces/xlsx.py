"""Excel files (.xlsx, .xlsm): read through openpyxl, written by patching the sheet's XML.

openpyxl drops parts of many real workbooks on save, so answers are written by ``xlsx_patch``,
which changes the answer cells and nothing else. The user's file is still never the target by
default; answers go to ``NAME.promptbatch.xlsx`` unless ``-o`` says otherwise.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils.cell import range_boundaries
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from ..errors import WorkbookError
from ..sheet import Cell, SheetData
from ..table import Bounds, TemplateText, quote_sheet
from .files import SaveSchedule, atomic_write, check_readable, default_output
from .xlsx_patch import EXCEL_CELL_LIMIT as EXCEL_CELL_LIMIT  # other surfaces import it here
from .xlsx_patch import check_package, check_writable, patch_workbook

CONF_SHEET = "promptbatch.conf"
TEMPLATE_NAME = "prompt_template"


def _load(path: Path) -> Workbook:
    try:
        return openpyxl.load_workbook(path, data_only=True)
    except zipfile.BadZipFile:
        raise WorkbookError(f"{path} is not a readable .xlsx workbook (the zip is damaged or "
                            "it is another kind of file). Open it in Excel and save it as "
                            ".xlsx.") from None
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise WorkbookError(f"{path} could not be read as a workbook: {exc}") from None


class XlsxSurface:
    def __init__(self, path: Path, sheet: str | None = None, output: Path | None = None) -> None:
        check_readable(path)
        check_package(path)
        self.path = path
        self.sheet_name = sheet
        self.output = output or default_output(path)
        self._values = _load(path)
        self._sheet = self._pick_sheet(self._values)
        check_writable(path, self._sheet.title)  # refuse before any answer is paid for
        self._written: list[Cell] = []
        self._schedule = SaveSchedule()

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
        """Answers reach the file as they arrive; a big workbook is patched less often."""
        self._written.extend(cells)
        self._schedule.maybe(self._save)

    def close(self) -> None:
        if self._written:
            self._schedule.now(self._save)

    def _save(self) -> None:
        """Patch every answer so far into a fresh copy of the source, then swap it in."""
        title, written = self._sheet.title, list(self._written)
        atomic_write(self.output, lambda tmp: patch_workbook(self.path, tmp, title, written))
