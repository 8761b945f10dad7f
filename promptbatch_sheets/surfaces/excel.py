"""A live Excel workbook through xlwings: what the ribbon's "Run batch" button runs.

Every call into Excel crosses a process boundary (COM on Windows, AppleScript on macOS), so the
sheet is read in one call and answers go back one block of adjacent cells per call. Only the
BSD-licensed xlwings API is used; the workbook is never saved: that stays the user's decision.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import xlwings as xw

from .. import batchapi, runner
from ..cells import EXCEL_CELL_LIMIT, CellValue, fit_cell
from ..engine import RowResult, Summary
from ..errors import ConfigError, PromptBatchError, WorkbookError
from ..settings import Via
from ..store import Store
from ..table import Bounds, TemplateText, quote_sheet
from ..template import display
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

TEXT_PREFIX = "'"
"""Excel keeps what follows an apostrophe as text (=, +, -, @, numbers, dates) and hides it.
A text number format ("@") would do the same but shows answers over 255 characters as ####."""
PROGRESS_SECONDS = 0.5
"""The status bar is updated at most this often: each update is a call into Excel."""
_CELL = re.compile(r"^\$?[A-Za-z]{1,3}\$?[0-9]{1,7}$")


def blocks(cells: Sequence[Cell]) -> list[tuple[int, int, list[CellValue]]]:
    """(column, first row, values) for each run of vertically adjacent cells; last write
    wins."""
    latest = {(row, col): value for row, col, value in cells}
    runs: list[tuple[int, int, list[CellValue]]] = []
    for row, col in sorted(latest, key=lambda rc: (rc[1], rc[0])):
        if runs and runs[-1][0] == col and runs[-1][1] + len(runs[-1][2]) == row:
            runs[-1][2].append(latest[row, col])
        else:
            runs.append((col, row, [latest[row, col]]))
    return runs


CELL_LIMIT = EXCEL_CELL_LIMIT - len(TEXT_PREFIX)
"""The longest text an entry holds: Excel counts the prefix."""


def entry(value: CellValue) -> CellValue:
    """What to put in a cell so that Excel stores ``value`` as what it is: a string as text,
    whatever it looks like; a number or a boolean as Excel's own."""
    if not isinstance(value, str):
        return value
    text = fit_cell(value, CELL_LIMIT)
    return TEXT_PREFIX + text if text else ""


def _grid(sheet: xw.Sheet) -> list[Sequence[Any]]:
    """The used range in one read, padded so that indexes are sheet coordinates from A1.
    Error values read as their text (``#N/A``), as a file's do: xlwings would make them
    empty cells, and the prompt would silently lack them."""
    used = sheet.used_range
    values: list[list[Any]] = used.options(ndim=2, err_to_str=True).value
    top, left = used.row - 1, used.column - 1
    width = left + max((len(row) for row in values), default=0)
    grid: list[Sequence[Any]] = [[None] * width for _ in range(top)]
    return grid + [[None] * left + list(r) for r in values]


def _bounds(rng: xw.Range) -> Bounds:
    rows, cols = rng.shape
    return Bounds(rng.row - 1, rng.column - 1, rng.row + rows - 2, rng.column + cols - 2)


def _merged(rng: xw.Range) -> set[Bounds]:
    """The merged areas in ``rng``, found by halving it: a part without any costs one call,
    so a sheet without merged cells costs one."""
    if rng.merge_cells is False:  # True: all merged; None: some
        return set()
    corner = rng[0, 0].merge_area
    area, part = _bounds(corner), _bounds(rng)
    if area.top <= part.top and area.left <= part.left and area.bottom >= part.bottom \
            and area.right >= part.right:
        return {area}
    rows, cols = rng.shape
    if rows > 1:
        halves = (rng[:rows // 2, :], rng[rows // 2:, :])
    else:
        halves = (rng[:, :cols // 2], rng[:, cols // 2:])
    return _merged(halves[0]) | _merged(halves[1])


def _read_setting(app: xw.App, name: str) -> Any:
    """An application setting, or None where the engine cannot read it (xlwings' remote one)."""
    try:
        return getattr(app, name)
    except NotImplementedError:
        return None


class ExcelSurface(Surface):
    """One sheet of an open workbook."""

    cell_limit = CELL_LIMIT

    def __init__(self, book: xw.Book, sheet: str | None = None) -> None:
        self.book = book
        self.sheet = self._pick_sheet(sheet)
        self.output = f"{self.sheet.name!r} in {self.book.name}"
        self._table: Any = None
        self._bounds: Bounds | None = None

    def _pick_sheet(self, name: str | None) -> xw.Sheet:
        sheets = list(self.book.sheets)
        if name is not None:
            match = next((s for s in sheets if s.name == name), None)
            if match is None:
                raise WorkbookError(f"{self.book.name} has no sheet {name!r}. Sheets: "
                                    + ", ".join(repr(s.name) for s in sheets))
            return match
        active = self.book.sheets.active
        if active.name.lower() != CONF_SHEET:
            return active
        others = [s for s in sheets if s.name.lower() != CONF_SHEET]
        if not others:
            raise WorkbookError(f"{self.book.name} has no worksheet to run.")
        return others[0]

    def read(self) -> SheetData:
        self._bounds = self._table_bounds()
        conf = self._conf()
        grid = _grid(self.sheet)
        merged = self._merged()
        fill_merged(grid, merged)
        return SheetData(name=self.sheet.name, grid=grid,
                         template=self._defined_template(), bounds=self._bounds,
                         settings=conf.settings, setting_cells=conf.cells, merged=merged)

    def _merged(self) -> tuple[Bounds, ...]:
        """The sheet's merged ranges. xlwings' remote engine (the tests' stand-in for Excel)
        cannot read them; desktop Excel, which the ribbon runs in, can."""
        try:
            return tuple(sorted(_merged(self.sheet.used_range),
                                key=lambda b: (b.top, b.left)))
        except NotImplementedError:
            return ()

    def hidden_rows(self, data: SheetData) -> frozenset[int]:
        """Each row's Hidden flag (xlwings' ``rows.hidden``): one call per row of the used
        range, so it is read only when a run skips hidden rows."""
        used = self.sheet.used_range
        try:
            return frozenset(used.row - 1 + i for i, row in enumerate(used.rows)
                             if row.rows.hidden)
        except NotImplementedError:
            raise ConfigError(
                "skip_hidden is set, but this Excel cannot tell which rows are hidden "
                "(xlwings reads row visibility from desktop Excel only). Turn skip_hidden off "
                f"in the {CONF_SHEET} sheet, or delete the rows to leave out.") from None

    def _defined_template(self) -> TemplateText | None:
        """The name ``prompt_template``: the run sheet's own name wins over the workbook's."""
        scoped: dict[str, Any] = {}
        for name in self.book.names:
            scope, _, bare = name.name.rpartition("!")
            if bare.lower() == TEMPLATE_NAME:
                scoped.setdefault(scope.strip("'").replace("''", "'"), name)
        found = scoped.get(self.sheet.name, scoped.get(""))
        if found is None:
            return None
        refers_to = str(found.refers_to).lstrip("=")
        if len(refers_to) >= 2 and refers_to[0] == refers_to[-1] == '"':
            return TemplateText(refers_to[1:-1].replace('""', '"'), f"the name {TEMPLATE_NAME}")
        sheet, _, coord = refers_to.rpartition("!")
        ref = f"{sheet or quote_sheet(self.sheet.name)}!{coord.split(':')[0].replace('$', '')}"
        return TemplateText(self.cell_text(ref), f"{ref} (the name {TEMPLATE_NAME})")

    def _table_bounds(self) -> Bounds | None:
        for table in self.sheet.tables:
            rng = table.range
            rows, cols = rng.shape
            self._table = table
            return Bounds(rng.row - 1, rng.column - 1, rng.row + rows - 2, rng.column + cols - 2)
        return None

    def _conf(self) -> Conf:
        """The live workbook's promptbatch.conf sheet: a model or base_url in it that would
        send the user's key elsewhere is refused by ``runner.prepare``, naming its cell."""
        conf = next((s for s in self.book.sheets if s.name.lower() == CONF_SHEET), None)
        if conf is None:
            return Conf({}, {})
        return conf_settings(_grid(conf), conf.name)

    def cell_text(self, ref: str) -> str:
        sheet, _, coord = ref.rpartition("!")
        sheet = sheet.strip("'").replace("''", "'") if sheet else self.sheet.name
        names = [s.name for s in self.book.sheets]
        if sheet not in names:
            raise WorkbookError(f"Cell {ref}: no sheet {sheet!r}. Sheets: "
                                + ", ".join(repr(n) for n in names))
        if not _CELL.match(coord):
            raise WorkbookError(f"{ref} is not a cell reference; write it like 'Sheet 1'!B2.")
        return display(self.book.sheets[sheet].range(coord.replace("$", "")).value)

    def write(self, cells: Sequence[Cell]) -> None:
        """One range assignment per block, drawn while screen updating is off."""
        with _no_screen_updating(self.book.app):
            for col, top, values in blocks(cells):
                target = self.sheet.range((top + 1, col + 1), (top + len(values), col + 1))
                target.value = [[entry(v)] for v in values]
            self._grow_table(cells)

    def _grow_table(self, cells: Sequence[Cell]) -> None:
        """New columns right of an Excel Table (headers written next to its header row)
        become its last columns: one answers column, or one per field."""
        b = self._bounds
        if b is None:
            return
        headers = {c for r, c, v in cells if r == b.top and isinstance(v, str)}
        grow = 0
        while b.right + 1 + grow in headers:
            grow += 1
        if not grow:
            return
        self._table.resize(self.sheet.range((b.top + 1, b.left + 1),
                                            (b.bottom + 1, b.right + 1 + grow)))
        self._bounds = Bounds(b.top, b.left, b.bottom, b.right + grow)



@contextmanager
def _no_screen_updating(app: xw.App) -> Iterator[None]:
    before = _read_setting(app, "screen_updating")
    if before:
        app.screen_updating = False
    try:
        yield
    finally:
        if before:
            app.screen_updating = before


@contextmanager
def _manual_calculation(app: xw.App) -> Iterator[None]:
    """No recalculation per block while answers land; the user's mode is back afterwards."""
    before = _read_setting(app, "calculation")
    if before is not None and before != "manual":
        app.calculation = "manual"
    try:
        yield
    finally:
        if before is not None and before != "manual":
            app.calculation = before


class StatusBar:
    """Progress in Excel's status bar; what it showed before comes back at the end."""

    def __init__(self, app: xw.App, total: int) -> None:
        self.app = app
        self.total = total
        self.done = 0
        self.shown = 0.0
        try:
            self.before = app.status_bar
            self.enabled = True
        except NotImplementedError:  # xlwings' remote engine has no status bar
            self.enabled = False
        self._show()

    def step(self, _result: RowResult) -> None:
        self.done += 1
        if self.done == self.total or time.monotonic() - self.shown >= PROGRESS_SECONDS:
            self._show()

    def _show(self) -> None:
        if self.enabled:
            self.app.status_bar = f"PromptBatch: {self.done:,} of {self.total:,} rows answered"
            self.shown = time.monotonic()

    def restore(self) -> None:
        if self.enabled:
            self.app.status_bar = self.before


def run_sheet(book: xw.Book, sheet: str | None = None) -> Summary:
    """Answer every row of ``sheet`` (default: the active one) that needs it, in place."""
    surface = ExcelSurface(book, sheet)
    with _manual_calculation(book.app):
        return _realtime(book.app, surface, runner.prepare(surface))


def _realtime(app: xw.App, surface: ExcelSurface, prepared: runner.Prepared) -> Summary:
    status = StatusBar(app, len(prepared.plan.jobs))
    store = Store()
    try:
        return runner.run(prepared, surface, store, on_result=status.step)
    finally:
        store.close()
        status.restore()


def _through_batch_api(surface: ExcelSurface, prepared: runner.Prepared) -> str:
    """``via = batch``: collect what the provider has finished, send what is missing, and
    say what happened; the same button collects the rest later."""
    store = Store()
    try:
        jobs, collected = batchapi.submit_and_collect(prepared, surface, store)
    finally:
        store.close()
    parts = []
    if collected.summary.cached:
        parts.append(f"{collected.summary.cached} answers are in the sheet.")
    if jobs:
        cost = sum(j.estimate_usd or 0.0 for j in jobs)
        parts.append(f"Sent {sum(j.requests for j in jobs)} prompts to the provider's Batch "
                     f"API (about ${cost:,.4f} at half price; job "
                     f"{', '.join(j.id for j in jobs)}).")
    if collected.waiting or jobs:
        parts.append("Answers come within 24 hours: press Run batch again to collect them.")
    if collected.summary.failed:
        parts.append(f"{collected.summary.failed} rows failed (#ERROR cells); press Run batch "
                     "again to send them again.")
    return " ".join(parts) or "Every row has its answer."


def run_from_ribbon(book: xw.Book) -> None:
    """Run batch, for a person at the ribbon: realtime, or through the provider's Batch API
    when the promptbatch.conf sheet says ``via = batch``; mistakes, failed rows and batch
    news come as a message."""
    try:
        surface = ExcelSurface(book)
        with _manual_calculation(book.app):
            prepared = runner.prepare(surface)
            if prepared.settings.via is Via.BATCH:
                book.app.alert(_through_batch_api(surface, prepared), title="PromptBatch")
                return
            summary = _realtime(book.app, surface, prepared)
    except PromptBatchError as exc:
        book.app.alert(str(exc), title="PromptBatch")
        return
    if summary.failed:
        first = f" The first error: {summary.errors[0]}" if summary.errors else ""
        book.app.alert(f"{summary.failed} of {summary.rows} rows failed; their cells start with "
                       f"#ERROR. Run the batch again to retry them.{first}", title="PromptBatch")
