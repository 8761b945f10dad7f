"""The small protocol every spreadsheet surface implements (xlsx, CSV, Excel, Google Sheets)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from .table import Bounds, Grid, TemplateText
from .template import display


@dataclass(frozen=True)
class SheetData:
    """One sheet as values, plus what the workbook around it says about the batch."""

    name: str
    grid: Grid
    template: TemplateText | None = None
    """From the workbook-level name ``prompt_template``, resolved to its cell's text."""
    bounds: Bounds | None = None
    """The Excel Table (ListObject) on the sheet, if there is one."""
    settings: dict[str, str] = field(default_factory=dict)
    """Key/value rows of a ``promptbatch.conf`` sheet."""
    hidden_rows: frozenset[int] = frozenset()
    """Grid rows hidden in the sheet (filtered rows are hidden rows), for ``skip_hidden``."""
    merged: tuple[Bounds, ...] = ()
    """Merged ranges; their value is already copied into every cell of ``grid``."""
    uncalculated: frozenset[tuple[int, int]] = frozenset()
    """(row, column) of formulas saved without a value: the grid holds None there."""


TEMPLATE_NAME = "prompt_template"
"""The workbook name (or Google named range) that points at the template cell."""
CONF_SHEET = "promptbatch.conf"
"""The settings sheet every surface reads, as xlwings users know from ``xlwings.conf``."""


def conf_settings(rows: Iterable[Sequence[Any]]) -> dict[str, str]:
    """Key/value rows of a promptbatch.conf sheet; a ``key | value`` header row is skipped."""
    settings: dict[str, str] = {}
    for row in rows:
        key, value = (list(row[:2]) + [None, None])[:2]
        name = display(key).strip().lower()
        if name in ("", "key") or value is None or display(value) == "":
            continue
        settings[name] = display(value)
    return settings


CellValue = str | int | float | bool
"""What an answer cell holds: text, or a typed field of a structured answer."""

Cell = tuple[int, int, CellValue]
"""(row, column, value), 0-based, in the sheet that was read."""


class Surface(Protocol):
    """Brings a table in and takes answers out, in few calls."""

    plain_text: bool
    """The output keeps no cell types (CSV): a spreadsheet that opens it runs text that
    starts like a formula, so answers written there are escaped (``escape_formula``)."""

    def read(self) -> SheetData:
        """The sheet to run, read in one go."""
        ...

    def cell_text(self, ref: str) -> str:
        """The text of a cell given as ``Sheet!A1`` (for ``--template-cell``)."""
        ...

    def ready(self) -> None:
        """Fail before the first paid answer if answers could not be written."""
        ...

    def write(self, cells: Sequence[Cell]) -> None:
        """Put a block of answers in place: strings land as text, never as formulas; numbers
        and booleans as the spreadsheet's own numbers and booleans."""
        ...

    def close(self) -> None:
        """Make everything written durable (save the file, flush the last block)."""
        ...


CUT_MARKER = " [... cut: {n} more characters]"
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters no XML file can hold; lone surrogates (a JSON reply can carry one) cannot be
encoded as UTF-8 either."""


def fit_cell(text: str, limit: int) -> str:
    """Text a cell can hold: characters XML forbids removed, and answers over ``limit`` UTF-16
    code units (how Excel and Google Sheets count: an emoji is two) visibly cut, never inside
    a character."""
    text = _XML_ILLEGAL.sub("", text)
    if len(text) <= limit // 2 or _units(text) <= limit:  # a character is 1 or 2 units
        return text
    keep = limit - _units(CUT_MARKER.format(n=len(text)))
    data = text.encode("utf-16-le")[:2 * keep]
    if data and 0xD800 <= int.from_bytes(data[-2:], "little") <= 0xDBFF:
        data = data[:-2]  # the first half of a surrogate pair goes with its second
    kept = data.decode("utf-16-le")
    return kept + CUT_MARKER.format(n=len(text) - len(kept))


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


FORMULA_START = "=+-@"
"""How a formula (or Lotus-style ``@SUM``) starts when a spreadsheet reads text."""
_FORMULA_HEAD = re.compile(r"\s*[=+\-@]|[\t\r]")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def answer_text(text: str) -> str:
    """A model's answer as a cell holds it: surrounding whitespace removed, except leading
    whitespace before something formula-like (``\t=1+1``), which stripping would turn into a
    formula in a CSV file."""
    stripped = text.strip()
    if stripped[:1] and stripped[0] in FORMULA_START and not _NUMBER.fullmatch(stripped):
        return text.rstrip()
    return stripped


def escape_formula(text: str) -> str:
    """OWASP's rule against CSV injection (CWE-1236): text that a spreadsheet opening the file
    would run as a formula, because it starts with = + - @, a tab or a carriage return (also
    after leading spaces or line breaks), gets a leading ``'``. A plain number such as -3 is
    no formula and stays as it is."""
    if _FORMULA_HEAD.match(text) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text
