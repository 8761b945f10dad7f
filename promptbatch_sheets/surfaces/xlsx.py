"""Excel files (.xlsx, .xlsm): read through openpyxl, written by patching the sheet's XML.

openpyxl drops parts of many real workbooks on save, so answers are written by ``xlsx_patch``,
which changes the answer cells and nothing else. The user's file is still never the target by
default; answers go to ``NAME.promptbatch.xlsx`` unless ``-o`` says otherwise.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import openpyxl
from openpyxl.utils.cell import column_index_from_string, range_boundaries
from openpyxl.workbook.workbook import Workbook
from openpyxl.worksheet.worksheet import Worksheet

from ..cells import EXCEL_CELL_LIMIT
from ..errors import PromptBatchError, WorkbookError
from ..table import Bounds, Grid, TemplateText, quote_sheet
from .base import (
    CONF_SHEET,
    TEMPLATE_NAME,
    Cell,
    Conf,
    SheetData,
    Surface,
    conf_settings,
    fill_merged,
)
from .files import (
    OutputLock,
    SaveSchedule,
    atomic_write,
    check_readable,
    default_output,
)
from .xlsx_patch import check_package, check_writable, locate_parts, patch_workbook, row_pieces

_FORMULA = re.compile(rb"<(?:[\w.-]+:)?f[\s>/]")
_CELL = re.compile(rb"<((?:[\w.-]+:)?)c\b([^>]*?)(?:/>|>(.*?)</\1c>)", re.S)
_VALUE = re.compile(rb"<(?:[\w.-]+:)?v\s*>[^<]")
_REF = re.compile(rb"""\sr\s*=\s*["']([A-Za-z]{1,3})([0-9]{1,7})["']""")
_TEXT_TYPE = re.compile(rb"""\st\s*=\s*["']str["']""")
STRICT = b"http://purl.oclc.org/ooxml/"
"""Where Strict Open XML's namespaces start; openpyxl reads only the Transitional ones."""
EMPTY_ROW: tuple[Any, ...] = ()
"""Every blank row of a grid is this one tuple: a sheet reaching row 1,048,576 stays small."""


@contextmanager
def _unreadable(path: Path) -> Iterator[None]:
    """openpyxl raises whatever its parsers meet in a damaged file; the user gets one message.

    Caught broadly on purpose: this wraps only reading a file the user gave us, and any
    failure there means the same thing to them.
    """
    try:
        yield
    except PromptBatchError:
        raise
    except zipfile.BadZipFile:
        raise WorkbookError(f"{path} is not a readable .xlsx workbook (the zip is damaged or "
                            "it is another kind of file). Open it in Excel and save it as "
                            ".xlsx.") from None
    except Exception as exc:  # broad on purpose: see the docstring
        raise WorkbookError(f"{path} could not be read as a workbook ({type(exc).__name__}: "
                            f"{str(exc)[:200]}). Open it in Excel and save it again.") from None


def _load(path: Path) -> Workbook:
    with _unreadable(path):
        with zipfile.ZipFile(path) as zf:
            if STRICT in zf.read("_rels/.rels"):
                raise WorkbookError(
                    f"{path} is saved as Strict Open XML, which promptbatch cannot read (its "
                    "reader, openpyxl, knows only the usual .xlsx: it would find no sheet). In "
                    "Excel use File > Save As > Excel Workbook (.xlsx), and run that copy.")
        return openpyxl.load_workbook(path, data_only=True)


def _grid(ws: Worksheet) -> list[Sequence[Any]]:
    """The sheet's values by row, built from the cells the file holds.

    ``iter_rows`` would create a cell object for every empty position up to the last one; a
    value in row 1,048,576 would cost gigabytes. Blank rows share one empty tuple instead.
    """
    cells: dict[tuple[int, int], Any] = ws._cells  # openpyxl keeps only stored cells here
    grid: list[Sequence[Any]] = [EMPTY_ROW] * max((r for r, _ in cells), default=0)
    for (row, col), cell in cells.items():
        if cell.value is not None:
            _put(grid, row - 1, col - 1, cell.value)
    return grid


def _put(grid: list[Sequence[Any]], row: int, col: int, value: Any) -> None:
    current = grid[row]
    cells = current if isinstance(current, list) else list(current)
    cells.extend([None] * (col + 1 - len(cells)))
    cells[col] = value
    grid[row] = cells


def _merged(ws: Worksheet) -> tuple[Bounds, ...]:
    """The sheet's merged ranges, 0-based."""
    return tuple(Bounds(rng.min_row - 1, rng.min_col - 1, rng.max_row - 1, rng.max_col - 1)
                 for rng in ws.merged_cells.ranges)


def _uncalculated(path: Path, sheet: str) -> frozenset[tuple[int, int]]:
    """Cells holding a formula but no saved value (openpyxl and other writers that do not
    calculate leave ``<v>`` out or empty); data_only reading gives None for them.

    The sheet's XML is read in pieces, and a piece is scanned cell by cell only when it holds
    a formula at all.
    """
    found: set[tuple[int, int]] = set()
    with zipfile.ZipFile(path) as zf, zf.open(locate_parts(zf, path, sheet).sheet) as xml:
        for piece in row_pieces(xml):
            if not _FORMULA.search(piece):
                continue
            for cell in _CELL.finditer(piece):
                body, attrs = cell.group(3) or b"", cell.group(2)
                ref = _REF.search(attrs)
                if ref and _FORMULA.search(body) and not _VALUE.search(body) \
                        and not _TEXT_TYPE.search(attrs):
                    col = column_index_from_string(ref.group(1).decode().upper())
                    found.add((int(ref.group(2)) - 1, col - 1))
    return frozenset(found)


class XlsxSurface(Surface):
    cell_limit = EXCEL_CELL_LIMIT
    output: Path

    def __init__(self, path: Path, sheet: str | None = None, output: Path | None = None) -> None:
        check_readable(path)
        check_package(path)
        self.path = path
        self.sheet_name = sheet
        self.output = output or default_output(path)
        self._values: Workbook | None = _load(path)
        self._title = self._pick_sheet(self._values).title
        check_writable(path, self._title)  # refuse before any answer is paid for
        self._written: list[Cell] = []
        self._schedule = SaveSchedule()
        self._lock = OutputLock(self.output)

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

    def _book(self) -> Workbook:
        """openpyxl's workbook, which ``read`` lets go of: a big one holds gigabytes that the
        run, which writes by patching the file, never needs. A later ``cell_text`` loads it
        again."""
        if self._values is None:
            self._values = _load(self.path)
        return self._values

    def read(self) -> SheetData:
        book = self._book()
        ws = book[self._title]
        with _unreadable(self.path):
            grid = _grid(ws)
            merged = _merged(ws)
            fill_merged(grid, merged)
            hidden = frozenset(r - 1 for r, dim in ws.row_dimensions.items() if dim.hidden)
            conf = self._conf(book)
            data = SheetData(name=ws.title, grid=grid, template=self._defined_template(book, ws),
                             bounds=self._table_bounds(ws), settings=conf.settings,
                             setting_cells=conf.cells,
                             hidden_rows=hidden, merged=merged,
                             uncalculated=_uncalculated(self.path, ws.title))
        self._values = None
        return data

    def _defined_template(self, book: Workbook, ws: Worksheet) -> TemplateText | None:
        names = dict(book.defined_names.items())
        names.update(ws.defined_names.items())
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

    @staticmethod
    def _conf(book: Workbook) -> Conf:
        conf = next((ws for ws in book.worksheets if ws.title.lower() == CONF_SHEET), None)
        if conf is None:
            return Conf({}, {})
        return conf_settings(conf.iter_rows(values_only=True, max_col=2), conf.title)

    def cell_text(self, ref: str) -> str:
        sheet, _, coord = ref.rpartition("!")
        sheet = sheet.strip("'").replace("''", "'") if sheet else self._title
        book = self._book()
        if sheet not in book.sheetnames:
            raise WorkbookError(f"Cell {ref}: no sheet {sheet!r}. Sheets: "
                                + ", ".join(repr(n) for n in book.sheetnames))
        try:
            value: Any = book[sheet][coord.replace("$", "")].value
        except (ValueError, AttributeError):
            raise WorkbookError(f"{ref} is not a cell reference; write it like 'Sheet 1'!B2."
                                ) from None
        return "" if value is None else str(value)

    def ready(self) -> None:
        self._lock.hold()

    def previous(self) -> Grid | None:
        if not self._lock.replaces(self.path):
            return None
        try:
            book = _load(self.output)
        except WorkbookError:
            return None  # unreadable: nothing in it could be kept anyway
        title = self._title
        return _grid(book[title]) if title in book.sheetnames else None

    def write(self, cells: Sequence[Cell]) -> None:
        """Answers reach the file as they arrive; a big workbook is patched less often."""
        self._written.extend(cells)
        self._schedule.maybe(self._save)

    def close(self) -> None:
        try:
            if self._written:
                self._schedule.now(self._save)
        finally:
            self._lock.release()

    def _save(self) -> None:
        """Patch every answer so far into a fresh copy of the source, then swap it in."""
        title, written = self._title, list(self._written)
        atomic_write(self.output, lambda tmp: patch_workbook(self.path, tmp, title, written))
