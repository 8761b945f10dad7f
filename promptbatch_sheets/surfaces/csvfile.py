"""CSV files: the whole file is the table; the answers column is added or filled."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import WorkbookError
from ..table import Grid
from ..template import display
from .base import Cell, SheetData
from .files import OutputLock, SaveSchedule, atomic_write, check_readable, default_output


class CsvSurface:
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
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise WorkbookError(f"{self.path} is not UTF-8 text (byte {exc.start}). Save it as "
                                "'CSV UTF-8' and try again.") from None
        # the output keeps the input's byte order mark (Excel's "CSV UTF-8") and line endings
        self._encoding = "utf-8-sig" if raw.startswith(codecs.BOM_UTF8) else "utf-8"
        self._newline = _line_ending(text)
        try:  # only the delimiter: the sniffer's guesses on quoting can make rows unwritable
            self._delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t").delimiter
        except csv.Error:
            self._delimiter = ","
        self._rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=self._delimiter))
        return SheetData(name=self.path.stem, grid=self._rows)

    def cell_text(self, ref: str) -> str:
        raise WorkbookError(f"--template-cell {ref} needs a workbook; a CSV file has no cell "
                            "names. Use --template or --template-file.")

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
            cells_in_row[col] = value if isinstance(value, str) else display(value)
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
