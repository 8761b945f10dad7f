"""The small protocol every spreadsheet surface implements (xlsx, CSV, Excel, Google Sheets)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ..cells import CellValue
from ..table import Bounds, Grid, TemplateText, quote_sheet
from ..template import display


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
    setting_cells: dict[str, str] = field(default_factory=dict)
    """The cell each of ``settings`` was read from (``'promptbatch.conf'!B3``), by key: a
    setting refused because it comes from the workbook names its cell."""
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


class Conf(NamedTuple):
    """A promptbatch.conf sheet as read: the settings, and the cell of each value."""

    settings: dict[str, str]
    cells: dict[str, str]


def conf_settings(rows: Iterable[Sequence[Any]], sheet: str = CONF_SHEET) -> Conf:
    """Key/value rows of a promptbatch.conf sheet (``rows`` from its row 1, column A); a
    ``key | value`` header row is skipped."""
    conf = Conf({}, {})
    for number, row in enumerate(rows, start=1):
        key, value = (list(row[:2]) + [None, None])[:2]
        name = display(key).strip().lower()
        if name in ("", "key") or value is None or display(value) == "":
            continue
        conf.settings[name] = display(value)
        conf.cells[name] = f"{quote_sheet(sheet)}!B{number}"
    return conf


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

    def previous(self) -> Grid | None:
        """The sheet an earlier run wrote where this run's answers go, if it will be
        replaced (a file output): its answers are carried over, so a run that stops early
        never leaves fewer answers there than it found. Called once ``ready`` holds it."""
        ...

    def write(self, cells: Sequence[Cell]) -> None:
        """Put a block of answers in place: strings land as text, never as formulas; numbers
        and booleans as the spreadsheet's own numbers and booleans."""
        ...

    def close(self) -> None:
        """Make everything written durable (save the file, flush the last block)."""
        ...
