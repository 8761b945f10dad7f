"""The small contract every spreadsheet surface fulfils (xlsx, CSV, Excel, Google Sheets, the
cells the server hands back), and the sheet as they read it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

from ..cells import CellValue, fit_cell
from ..errors import WorkbookError
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


def fill_merged(grid: list[Sequence[Any]], merged: Sequence[Bounds]) -> None:
    """Give every cell of a merged range its value, so each row of a merged category reads
    it (spreadsheets keep the value only in the top-left cell)."""
    for area in merged:
        first = grid[area.top] if area.top < len(grid) else ()
        value = first[area.left] if area.left < len(first) else None
        if value is None or display(value) == "":
            continue
        for row in range(area.top, min(area.bottom + 1, len(grid))):
            cells = list(grid[row])
            cells.extend([None] * (area.right + 1 - len(cells)))
            cells[area.left:area.right + 1] = [value] * (area.right + 1 - area.left)
            grid[row] = cells


Cell = tuple[int, int, CellValue]
"""(row, column, value), 0-based, in the sheet that was read."""


class Surface(ABC):
    """Brings a table in and takes answers out, in few calls.

    A surface holds only what differs from these defaults: ``read`` and ``write`` always; the
    rest where its sheet needs more (a file to lock and save, a live sheet to ask for hidden
    rows).
    """

    plain_text: ClassVar[bool] = False
    """The output keeps no cell types (CSV): a spreadsheet that opens it runs text that
    starts like a formula, so answers written there are escaped (``escape_formula``)."""
    cell_limit: int
    """Characters (UTF-16 code units) a cell of this surface takes: longer text is cut with
    a visible marker (``fit``)."""
    output: Path | str | None = None
    """Where the answers went, as a person finds them (a file, a spreadsheet's address);
    None when the caller writes them itself."""

    @abstractmethod
    def read(self) -> SheetData:
        """The sheet to run, read in one go."""

    @abstractmethod
    def write(self, cells: Sequence[Cell]) -> None:
        """Put a block of answers in place: strings land as text, never as formulas; numbers
        and booleans as the spreadsheet's own numbers and booleans."""

    def cell_text(self, ref: str) -> str:
        """The text of a cell given as ``Sheet!A1`` (for ``--template-cell``); a table with no
        cell names refuses."""
        raise WorkbookError(f"--template-cell {ref} needs a workbook; a CSV file has no cell "
                            "names. Use --template or --template-file.")

    def hidden_rows(self, data: SheetData) -> frozenset[int]:
        """Grid rows hidden in the sheet ``data`` came from (filtered rows are hidden rows);
        asked only when a run skips them, since a live sheet may need a call per row."""
        return data.hidden_rows

    def ready(self) -> None:  # noqa: B027 (a default: most surfaces have nothing to check)
        """Fail before the first paid answer if answers could not be written."""

    def previous(self) -> Grid | None:
        """The sheet an earlier run wrote where this run's answers go, if it will be
        replaced (a file output): its answers are carried over, so a run that stops early
        never leaves fewer answers there than it found. Called once ``ready`` holds it.
        None where the answers go into the sheet itself, which already holds the earlier
        ones."""
        return None

    def close(self) -> None:  # noqa: B027 (a default: a live sheet holds what is written)
        """Make everything written durable (save the file, flush the last block)."""

    def fit(self, value: CellValue) -> CellValue:
        """``value`` as a cell of this surface holds it (text within ``cell_limit``)."""
        return fit_cell(value, self.cell_limit) if isinstance(value, str) else value
