"""Spreadsheet surfaces: one file per kind of sheet, each a ``base.Surface``."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, SetupError, WorkbookError
from .base import Surface
from .csvfile import CsvSurface
from .files import TEXT_TABLES, WORKBOOKS, check_readable

__all__ = ["CsvSurface", "open_surface"]

UNSUPPORTED = {
    ".xls": "an old binary Excel file",
    ".xlsb": "a binary Excel workbook",
    ".ods": "an OpenDocument spreadsheet",
    ".numbers": "a Numbers file",
}


GOOGLE_SHEETS = ("gsheet:", "https://docs.google.com/spreadsheets/")


def open_surface(source: str, sheet: str | None = None, output: str | None = None,
                 credentials: str | None = None) -> Surface:
    """The surface for a Google Sheet reference, or for a file path by its extension."""
    if source.startswith(GOOGLE_SHEETS):
        if output:
            raise ConfigError("-o is for files: a Google Sheet gets its answers in place.")
        try:
            from .gsheets import GSheetSurface  # gspread loads only for Google Sheets runs
        except ModuleNotFoundError as exc:
            raise SetupError(f"Google Sheets need the package {exc.name}, which this Python "
                             "lacks. Install promptbatch-sheets with its dependencies: "
                             "pip install promptbatch-sheets") from None
        return GSheetSurface(source, sheet, credentials)
    path = Path(source)
    check_readable(path)  # a missing file is missing, whatever its extension
    out = Path(output) if output else None
    suffix = path.suffix.lower()
    if suffix in WORKBOOKS:
        from .xlsx import XlsxSurface  # openpyxl loads only for workbooks

        return XlsxSurface(path, sheet, out)
    if suffix in TEXT_TABLES:
        return CsvSurface(path, out)
    if suffix in UNSUPPORTED:
        raise WorkbookError(f"{path} is {UNSUPPORTED[suffix]}, which promptbatch cannot write "
                            "safely. Save it as .xlsx (or .csv) and run that.")
    raise WorkbookError(f"{path}: promptbatch reads .xlsx, .xlsm and .csv files; "
                        f"{suffix or 'no extension'} is none of them.")
