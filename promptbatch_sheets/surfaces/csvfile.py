"""CSV files: the whole file is the table; the answers column is added or filled."""

from __future__ import annotations

import codecs
import csv
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import WorkbookError
from ..table import Grid, cell_name
from ..template import MAX_RENDERED_CHARS, display
from .base import Cell, SheetData, Surface
from .files import OutputLock, SaveSchedule, atomic_write, check_readable, default_output

CELL_LIMIT = MAX_RENDERED_CHARS
"""Characters in one CSV cell: above what Excel (32,767) and Google Sheets (50,000) hold, as
long as the longest prompt, so a cell of any length a prompt can use is read whole."""
MAX_CSV_BYTES = 512 * 2**20
MAX_ROWS = 1_048_576
"""Rows of a CSV file: as many as an Excel sheet holds."""


class CsvSurface(Surface):
    plain_text = True
    cell_limit = CELL_LIMIT
    output: Path

    def __init__(self, path: Path, output: Path | None = None) -> None:
        check_readable(path)
        self.path = path
        self.output = output or default_output(path)
        self._rows: list[list[Any]] = []
        self._delimiter = ","
        self._encoding = "utf-8"
        self._newline = "\r\n"
        self._schedule = SaveSchedule()
        self._lock = OutputLock(self.output)
        self._dirty = False

    def read(self) -> SheetData:
        size = self.path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise WorkbookError(f"{self.path} is {size / 2**20:,.0f} MB; promptbatch reads CSV "
                                f"files up to {MAX_CSV_BYTES // 2**20:,} MB. Split it into "
                                "smaller files and run each.")
        with self.path.open("rb") as raw:
            head = raw.read(4096)
        # the output keeps the input's byte order mark (Excel's "CSV UTF-8") and line endings
        self._encoding = "utf-8-sig" if head.startswith(codecs.BOM_UTF8) else "utf-8"
        self._newline = _line_ending(head.decode("utf-8", "replace"))
        with self.path.open(encoding="utf-8-sig", newline="") as handle:
            try:  # only the delimiter: the sniffer's guesses on quoting can make rows unwritable
                self._delimiter = csv.Sniffer().sniff(handle.read(4096), delimiters=",;\t"
                                                      ).delimiter
            except csv.Error:
                self._delimiter = ","
            except UnicodeDecodeError:
                raise self._not_utf8() from None
            handle.seek(0)
            csv.field_size_limit(MAX_CSV_BYTES)  # each cell is checked below, with its name
            reader = csv.reader(handle, delimiter=self._delimiter)
            self._rows = []
            try:
                for row in reader:
                    self._rows.append(self._checked(row, reader.line_num))
            except UnicodeDecodeError:
                raise self._not_utf8() from None
        return SheetData(name=self.path.stem, grid=self._rows)

    def _checked(self, row: list[str], line: int) -> list[Any]:
        """A row, refused if the file holds more rows than a sheet, or a cell longer than
        the longest prompt (answers are cut to the same length, so the file reads back)."""
        if len(self._rows) >= MAX_ROWS:
            raise WorkbookError(f"{self.path} has more than {MAX_ROWS:,} rows, more than a "
                                "spreadsheet holds. Split it into smaller files and run each.")
        for col, text in enumerate(row):
            if len(text) > CELL_LIMIT:
                cell = cell_name(self.path.stem, len(self._rows), col)
                raise WorkbookError(f"Cell {cell} (line {line}) holds {len(text):,} characters; "
                                    f"a cell may hold {CELL_LIMIT:,}. Shorten it, or split its "
                                    "text over several rows.")
        return row

    def _not_utf8(self) -> WorkbookError:
        """The message naming the line of the first byte that is not UTF-8 (decoding went
        in blocks, so it is looked for again)."""
        data = self.path.read_bytes()
        try:
            data.decode("utf-8-sig")
            at = len(data)
        except UnicodeDecodeError as exc:
            at = exc.start
        line = data.count(b"\n", 0, at) + 1
        return WorkbookError(f"{self.path} is not UTF-8 text (line {line}). Save it as "
                             "'CSV UTF-8' and try again.")

    def ready(self) -> None:
        self._lock.hold()

    def previous(self) -> Grid | None:
        if not self._lock.replaces(self.path):
            return None
        try:
            return CsvSurface(self.output).read().grid
        except WorkbookError:
            return None  # unreadable: nothing in it could be kept anyway

    def write(self, cells: Sequence[Cell]) -> None:
        """Numbers and booleans as a spreadsheet reads them back (3.5, 3, TRUE, FALSE)."""
        for row, col, value in cells:
            cells_in_row = self._rows[row]
            cells_in_row.extend([""] * (col + 1 - len(cells_in_row)))
            cells_in_row[col] = self.fit(value) if isinstance(value, str) else display(value)
        self._dirty = True
        self._schedule.maybe(self._save)

    def close(self) -> None:
        try:
            if self._dirty:
                self._schedule.now(self._save)
        finally:
            self._lock.release()

    def _save(self) -> None:
        width = max((len(r) for r in self._rows), default=0)

        def save(tmp: Path) -> None:
            with tmp.open("w", encoding=self._encoding, newline="") as handle:
                csv.writer(handle, delimiter=self._delimiter,
                           lineterminator=self._newline).writerows(
                    r if len(r) == width else r + [""] * (width - len(r)) for r in self._rows)

        atomic_write(self.output, save)
        self._dirty = False


_LINE_END = re.compile(r"\r\n|\n|\r")


def _line_ending(text: str) -> str:
    """The first line ending of ``text`` (CRLF for one line alone, as the csv module writes)."""
    found = _LINE_END.search(text)
    return found.group() if found else "\r\n"
