"""One contract, every surface: the same sheet run through each way promptbatch reaches a
spreadsheet, with the same outcome.

Surfaces: an .xlsx file and a CSV file (the CLI), a live Excel workbook (xlwings' object
model on its remote engine, the tests' stand-in for Excel), a Google Sheet (the gspread
surface against the fake Sheets API), and the routes of ``promptbatch serve`` that the Sheets
menu's Apps Script calls, over real HTTP, sent what the script sends (its display values,
merged ranges, hidden rows). Each driver lays the sheet out as that spreadsheet keeps it,
runs it the way a user would, and reads back what a person would see: text, typed values, or
``Formula`` where a cell would calculate.
"""

from __future__ import annotations

import csv
import re
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import httpx
import openpyxl
import pytest
from openpyxl.utils import get_column_letter

from promptbatch_sheets import runner, server
from promptbatch_sheets.errors import PromptBatchError
from promptbatch_sheets.estimate import Estimate
from promptbatch_sheets.settings import Settings
from promptbatch_sheets.store import Store
from promptbatch_sheets.surfaces import open_surface
from promptbatch_sheets.surfaces.base import Surface
from promptbatch_sheets.table import Bounds
from promptbatch_sheets.template import display
from tests.conftest import cli, fake_model
from tests.fakes.llm_server import FakeLLMServer
from tests.fakes.sheets_api import FakeSheetsAPI
from tests.fakes.sheets_api import Formula as GoogleFormula
from tests.test_excel_surface import payload, remote_book, written
from tests.test_gsheets import ID, api, fast, key  # noqa: F401 (fixtures)
from tests.test_server import AUTH, TOKEN, running

SHEET = "Items"
TEMPLATE = "Describe {{ product }} for the {{ room }}."


@dataclass(frozen=True)
class Calc:
    """A formula cell and the value its spreadsheet calculated (None: never calculated, as a
    file saved by a program that does not calculate holds it)."""

    formula: str
    value: Any = None


@dataclass(frozen=True)
class Formula:
    """A cell that would calculate when the spreadsheet opens: what answers must never be."""

    text: str


@dataclass
class Sheet:
    """A sheet as a user lays it out: template label, blank row, header row, data rows."""

    rows: list[list[Any]]
    headers: list[str] = field(default_factory=lambda: ["Product", "Room"])
    conf: dict[str, str] = field(default_factory=dict)
    hidden: set[int] = field(default_factory=set)
    """Grid rows hidden (0-based)."""
    merged: list[Bounds] = field(default_factory=list)

    @property
    def grid(self) -> list[list[Any]]:
        return [["template", TEMPLATE], [], list(self.headers), *[list(r) for r in self.rows]]

    @property
    def answers_col(self) -> int:
        return len(self.headers)


@dataclass
class Outcome:
    cells: dict[tuple[int, int], Any]
    """Every non-empty cell of the run sheet afterwards, as a person reads it."""
    error: str | None = None
    """The message a refused run shows."""


class Driver(Protocol):
    name: str

    def run(self, sheet: Sheet) -> Outcome:
        """Run ``sheet`` as a user of this surface does."""

    def preview(self, sheet: Sheet) -> Estimate:
        """What this surface's preview estimates for ``sheet``."""


class SurfaceDriver:
    """A driver whose preview is ``runner.preview`` over its surface, as the CLI's is."""

    name = ""
    llm: FakeLLMServer

    def surface(self, sheet: Sheet) -> Surface:
        """The surface over ``sheet``, laid out as this spreadsheet keeps it."""
        raise NotImplementedError

    def flags(self, sheet: Sheet) -> dict[str, str]:
        return {}

    def preview(self, sheet: Sheet) -> Estimate:
        return preview_of(self.surface(sheet), self.llm, self.flags(sheet))


def _written_value(value: Any) -> Any:
    return None if value in (None, "") else value


# --------------------------------------------------------------------------- files


def write_book(sheet: Sheet, path: Path) -> Path:
    """The sheet as an .xlsx: merged ranges, hidden rows, a promptbatch.conf sheet, and
    formulas with their calculated value where the sheet has one."""
    wb = openpyxl.Workbook()
    ws = wb.active
    assert ws is not None
    ws.title = SHEET
    cached: dict[str, Any] = {}
    for r, row in enumerate(sheet.grid):
        for c, value in enumerate(row):
            cell = ws.cell(r + 1, c + 1)
            if isinstance(value, Calc):
                cell.value = value.formula
                if value.value is not None:
                    cached[f"{get_column_letter(c + 1)}{r + 1}"] = value.value
            elif value not in (None, ""):
                cell.value = value
    for area in sheet.merged:
        ws.merge_cells(start_row=area.top + 1, start_column=area.left + 1,
                       end_row=area.bottom + 1, end_column=area.right + 1)
    for r in sheet.hidden:
        ws.row_dimensions[r + 1].hidden = True
    if sheet.conf:
        conf = wb.create_sheet("promptbatch.conf")
        conf.append(["key", "value"])
        for key_name, value in sheet.conf.items():
            conf.append([key_name, value])
    wb.save(path)
    if cached:  # openpyxl saves formulas without values; Excel would save both
        _add_cached_values(path, cached)
    return path


def _add_cached_values(path: Path, cached: dict[str, Any]) -> None:
    with zipfile.ZipFile(path) as zf:
        parts = {name: zf.read(name) for name in zf.namelist()}
    xml = parts["xl/worksheets/sheet1.xml"].decode()
    for ref, value in cached.items():
        xml = re.sub(rf'(<c r="{ref}"[^>]*>)(<f>[^<]*</f>)<v\s*/?>(?:</v>)?',
                     rf"\1\2<v>{value}</v>", xml)
    parts["xl/worksheets/sheet1.xml"] = xml.encode()
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in parts.items():
            zf.writestr(name, data)


def _cli_error(output: str) -> str | None:
    found = re.search(r"^Error: (.*)$", output, re.M)
    return found.group(1) if found else None


class XlsxDriver(SurfaceDriver):
    name = "xlsx"

    def __init__(self, tmp: Path, llm: FakeLLMServer) -> None:
        self.tmp, self.llm = tmp, llm
        self.runs = 0

    def output(self, suffix: str) -> Path:
        """A new output file per run: an earlier output's answers would be carried over."""
        self.runs += 1
        return self.tmp / f"out{self.runs}{suffix}"

    def surface(self, sheet: Sheet) -> Surface:
        return open_surface(str(write_book(sheet, self.tmp / "book.xlsx")))

    def run(self, sheet: Sheet) -> Outcome:
        book, out = write_book(sheet, self.tmp / "book.xlsx"), self.output(".xlsx")
        result = cli("run", str(book), "-o", str(out), *fake_model(self.llm))
        if not out.exists():
            return Outcome({}, _cli_error(result.output))
        ws = openpyxl.load_workbook(out)[SHEET]
        cells = {(c.row - 1, c.column - 1): Formula(c.value) if c.data_type == "f" else c.value
                 for row in ws.iter_rows() for c in row if _written_value(c.value) is not None}
        return Outcome(cells, _cli_error(result.output))


class CsvDriver(XlsxDriver):
    """A CSV keeps no cell types, no hidden rows, no merged cells and no conf sheet: settings
    are flags, and the file is read back as a spreadsheet opening it reads it."""

    name = "csv"
    FLAGS = {"system": "--system", "fields": "--fields"}

    def _write(self, sheet: Sheet) -> Path:
        path = self.tmp / f"{SHEET}.csv"
        with path.open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows(sheet.grid)
        return path

    def surface(self, sheet: Sheet) -> Surface:
        return open_surface(str(self._write(sheet)))

    def flags(self, sheet: Sheet) -> dict[str, str]:
        return dict(sheet.conf)

    def run(self, sheet: Sheet) -> Outcome:
        path, out = self._write(sheet), self.output(".csv")
        result = cli("run", str(path), "-o", str(out), *fake_model(self.llm),
                     *[arg for k, v in sheet.conf.items() for arg in (self.FLAGS[k], v)])
        if not out.exists():
            return Outcome({}, _cli_error(result.output))
        with out.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        cells = {(r, c): _as_opened(v) for r, row in enumerate(rows)
                 for c, v in enumerate(row) if v != ""}
        return Outcome(cells, _cli_error(result.output))


def _as_opened(text: str) -> Any:
    """A CSV cell as a spreadsheet opening the file takes it."""
    if text.startswith("'"):
        return text[1:]
    if text in ("TRUE", "FALSE"):
        return text == "TRUE"
    if text.startswith(("=", "+", "-", "@")) and not re.fullmatch(r"[+-]?\d+(\.\d+)?", text):
        return Formula(text)
    try:
        return float(text)
    except ValueError:
        return text


# --------------------------------------------------------------------------- live sheets


def _excel_value(value: Any) -> Any:
    """What Excel's object model reads from a cell: a formula's calculated value."""
    if isinstance(value, Calc):
        return "" if value.value is None else value.value
    return value


class XlwingsDriver(SurfaceDriver):
    """Desktop Excel through xlwings. Its remote engine reads no row visibility and no
    merged areas; ``desktop`` stands in for what desktop Excel answers (``rows.hidden``,
    ``merge_cells``, ``merge_area``), from the sheet's own layout."""

    name = "xlwings"

    def __init__(self, tmp: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
        self.tmp, self.llm = tmp, llm
        monkeypatch.setenv("PROMPTBATCH_MODEL", "openai-compatible:fake")
        monkeypatch.setenv("PROMPTBATCH_BASE_URL", llm.base_url)
        self.monkeypatch = monkeypatch
        self.desktop: Sheet | None = None

    def book(self, sheet: Sheet) -> Any:
        data = payload(write_book(sheet, self.tmp / "book.xlsx"))
        values = [[_excel_value(v) for v in row] for row in sheet.grid]
        width = max(len(r) for r in values)
        data["sheets"][0]["values"] = [r + [""] * (width - len(r)) for r in values]
        for area in sheet.merged:  # Excel's Range.value reads a merged value at its corner
            for r in range(area.top, area.bottom + 1):
                for c in range(area.left, area.right + 1):
                    if (r, c) != (area.top, area.left):
                        data["sheets"][0]["values"][r][c] = ""
        self._as_desktop(sheet)
        return remote_book(data)

    def _as_desktop(self, sheet: Sheet) -> None:
        from xlwings.pro import _xlremote

        def row_hidden(rng: Any) -> bool | None:
            flags = {r - 1 in sheet.hidden for r in range(rng.row, rng.row + rng.shape[0])}
            return flags.pop() if len(flags) == 1 else None

        def area_of(r: int, c: int) -> Bounds | None:
            return next((a for a in sheet.merged
                         if a.top <= r <= a.bottom and a.left <= c <= a.right), None)

        def merge_cells(rng: Any) -> bool | None:
            flags = {area_of(r - 1, c - 1) is not None
                     for r in range(rng.row, rng.row + rng.shape[0])
                     for c in range(rng.column, rng.column + rng.shape[1])}
            return flags.pop() if len(flags) == 1 else None

        def merge_area(rng: Any) -> Any:
            area = area_of(rng.row - 1, rng.column - 1)
            if area is None:
                return rng
            return _xlremote.Range(rng.sheet, (area.top + 1, area.left + 1),
                                   (area.bottom + 1, area.right + 1))

        for name, getter in (("row_hidden", row_hidden), ("merge_cells", merge_cells),
                             ("merge_area", merge_area)):
            self.monkeypatch.setattr(_xlremote.Range, name, property(getter))

    def surface(self, sheet: Sheet) -> Surface:
        from promptbatch_sheets.surfaces.excel import ExcelSurface

        return ExcelSurface(self.book(sheet))

    def run(self, sheet: Sheet) -> Outcome:
        from promptbatch_sheets.surfaces.excel import TEXT_PREFIX, run_sheet

        book = self.book(sheet)
        try:
            run_sheet(book)
        except PromptBatchError as exc:
            return Outcome({}, str(exc))
        cells = {(r, c): _as_opened(v) if isinstance(v, str) and not v.startswith(TEXT_PREFIX)
                 else v[1:] if isinstance(v, str) else v for (r, c), v in written(book).items()}
        return Outcome(cells)


class GoogleDriver(SurfaceDriver):
    """A Google Sheet through gspread and the fake Sheets API; Google calculates formulas,
    so a formula cell holds its value."""

    name = "gsheet"

    def __init__(self, sheets_api: FakeSheetsAPI, credentials: str,
                 llm: FakeLLMServer) -> None:
        self.api, self.key, self.llm = sheets_api, credentials, llm

    def add(self, sheet: Sheet) -> Any:
        grids = {SHEET: [[_excel_value(v) for v in row] for row in sheet.grid]}
        if sheet.conf:
            grids["promptbatch.conf"] = [["key", "value"], *map(list, sheet.conf.items())]
        book = self.api.add(ID, grids)
        target = book.sheet(SHEET)
        for area in sheet.merged:
            target.merges.append((area.top, area.left, area.bottom + 1, area.right + 1))
            for r in range(area.top, area.bottom + 1):
                for c in range(area.left, area.right + 1):
                    if (r, c) != (area.top, area.left):
                        target.cells.pop((r, c), None)
        hidden = sorted(sheet.hidden)
        target.hidden_by_user = set(hidden[::2])
        target.hidden_by_filter = set(hidden[1::2])
        return target

    def surface(self, sheet: Sheet) -> Surface:
        self.add(sheet)
        return open_surface(f"gsheet:{ID}/{SHEET}", credentials=self.key)

    def run(self, sheet: Sheet) -> Outcome:
        target = self.add(sheet)
        result = cli("run", f"gsheet:{ID}/{SHEET}", "--credentials", self.key,
                     *fake_model(self.llm))
        cells = {rc: Formula(v.text) if isinstance(v, GoogleFormula) else v
                 for rc, v in target.cells.items()}
        return Outcome(cells, _cli_error(result.output))


class AppsScriptDriver:
    """The Sheets menu: what Code.gs sends to ``promptbatch serve`` over HTTP, and the cells
    it writes back. The script reads display values (text) and a formula's calculated value;
    it sends the rows down to the header row and a window of numbered rows, the merged ranges
    with their values, and the hidden rows among those it sends when the backend says the
    run skips them (``addin/gsheets/Code.gs``; its own tests run it against the same
    routes)."""

    name = "apps-script"

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def _post(self, route: str, body: dict[str, Any]) -> httpx.Response:
        return self.client.post(route, json=body, headers=AUTH)

    def _sent(self, sheet: Sheet) -> tuple[list[list[str]], dict[str, Any]]:
        grid = [[display(_excel_value(v)) for v in row] for row in sheet.grid]
        for area in sheet.merged:  # Sheets shows a merged range's value in its corner only
            for r in range(area.top, area.bottom + 1):
                for c in range(area.left, area.right + 1):
                    if (r, c) != (area.top, area.left):
                        grid[r][c] = ""
        base = {"sheet": SHEET, "conf": [["key", "value"], *map(list, sheet.conf.items())],
                "merged": [[a.top, a.left, a.bottom, a.right, grid[a.top][a.left]]
                           for a in sheet.merged]}
        return grid, base

    def run(self, sheet: Sheet) -> Outcome:
        grid, base = self._sent(sheet)
        located = self._post("/v1/locate", {**base, "grid": grid[:50]})
        if located.status_code != 200:
            return Outcome({}, located.json()["error"])
        layout = located.json()
        header = layout["header_row"]
        numbers = list(range(header + 1, len(grid)))
        window = {**base, "grid": grid[:header + 1], "row_numbers": numbers,
                  "rows": grid[header + 1:], "wait_seconds": 30}
        if layout["skip_hidden"]:
            window["hidden"] = sorted(sheet.hidden)
        reply = self._post("/v1/run", window)
        if reply.status_code != 200:
            return Outcome({}, reply.json()["error"])
        data = reply.json()
        assert data["pending"] == []
        cells: dict[tuple[int, int], Any] = {(r, c): v for r, row in enumerate(grid)
                                             for c, v in enumerate(row) if v != ""}
        cells.update({(r, c): v for r, c, v in data["cells"]})
        return Outcome(cells)

    def preview(self, sheet: Sheet) -> Estimate:
        grid, base = self._sent(sheet)
        reply = self._post("/v1/preview", {**base, "grid": grid})
        assert reply.status_code == 200, reply.text
        return Estimate(**reply.json()["estimate"])


ALL = ["xlsx", "csv", "xlwings", "gsheet", "apps-script"]
LAID_OUT = ["xlsx", "xlwings", "gsheet", "apps-script"]
"""Surfaces whose sheets have a conf sheet, hidden rows and merged cells (a CSV has none)."""


@pytest.fixture
def driver(request: pytest.FixtureRequest, tmp_path: Path, llm: FakeLLMServer,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Driver]:
    name = request.param
    if name == "xlsx":
        yield XlsxDriver(tmp_path, llm)
    elif name == "csv":
        yield CsvDriver(tmp_path, llm)
    elif name == "xlwings":
        yield XlwingsDriver(tmp_path, llm, monkeypatch)
    elif name == "apps-script":
        app = server.create_app(TOKEN, Settings(model="openai-compatible:fake",
                                                base_url=llm.base_url), None)
        with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
            yield AppsScriptDriver(client)
    else:
        request.getfixturevalue("fast")
        yield GoogleDriver(request.getfixturevalue("api"), request.getfixturevalue("key"),
                           llm)


def each(names: list[str]) -> Any:
    return pytest.mark.parametrize("driver", names, indirect=True)


def sent(llm: FakeLLMServer) -> list[str]:
    return sorted(llm.prompts)


ROWS = [["lamp", "desk"], ["kettle", "kitchen"]]


# --------------------------------------------------------------------------- the cases


@each(ALL)
def test_text_never_becomes_a_formula(driver: Driver, llm: FakeLLMServer) -> None:
    answers = {"Describe lamp for the desk.": "=SUM(1,2)", "Describe kettle for the kitchen.":
               "@cmd", "Describe mug for the shelf.": "+1 555 0100"}
    llm.config.answer = lambda prompt: answers[prompt]
    sheet = Sheet(ROWS + [["mug", "shelf"]])
    out = driver.run(sheet)
    col = sheet.answers_col
    assert out.error is None
    assert [out.cells[r, col] for r in (3, 4, 5)] == ["=SUM(1,2)", "@cmd", "+1 555 0100"]


@each(ALL)
def test_a_missing_answers_header_is_created(driver: Driver, llm: FakeLLMServer) -> None:
    sheet = Sheet(ROWS)
    out = driver.run(sheet)
    assert out.cells[2, sheet.answers_col] == "response"
    assert out.cells[3, sheet.answers_col] == "Answer: Describe lamp for the desk."
    assert sent(llm) == ["Describe kettle for the kitchen.", "Describe lamp for the desk."]


@each(ALL)
def test_typed_fields_land_typed(driver: Driver, llm: FakeLLMServer) -> None:
    sheet = Sheet(ROWS, conf={"fields": "score (number), ok (boolean), note"})
    out = driver.run(sheet)
    col = sheet.answers_col
    assert [out.cells[2, col + i] for i in range(3)] == ["score", "ok", "note"]
    prompt = next(p for p in llm.prompts if p.startswith("Describe lamp"))
    score, ok, note = (out.cells[3, col + i] for i in range(3))
    assert score == len(prompt) / 4 and isinstance(score, int | float)
    assert ok is True and note == "text: " + prompt[:30]


@each(ALL)
def test_error_value_cells_are_refused_with_the_same_message(driver: Driver,
                                                             llm: FakeLLMServer) -> None:
    sheet = Sheet([["lamp", "#N/A"], ["kettle", "kitchen"]])
    out = driver.run(sheet)
    assert out.cells[3, sheet.answers_col] == (
        "#ERROR: 'Items'!B4 holds #N/A; fix that cell and run again")
    assert sent(llm) == ["Describe kettle for the kitchen."]


@each(LAID_OUT)
def test_hidden_rows_are_skipped_when_asked(driver: Driver, llm: FakeLLMServer) -> None:
    """Row 5 is hidden by a person, row 6 by a filter (Google tells them apart)."""
    rows = [["lamp", "desk"], ["kettle", "kitchen"], ["mug", "shelf"], ["pan", "stove"]]
    sheet = Sheet(rows, conf={"skip_hidden": "true"}, hidden={4, 5})
    out = driver.run(sheet)
    assert out.error is None
    assert sent(llm) == ["Describe lamp for the desk.", "Describe pan for the stove."]
    assert (4, sheet.answers_col) not in out.cells and (5, sheet.answers_col) not in out.cells
    driver.run(Sheet(rows, hidden={4, 5}))
    assert len(llm.prompts) == 4, "hidden rows are sent unless a run skips them"


@each(LAID_OUT)
def test_merged_cells_give_their_value_to_every_row(driver: Driver, llm: FakeLLMServer) -> None:
    rows = [["lamp", "kitchen"], ["kettle", ""], ["mug", "shelf"]]
    driver.run(Sheet(rows, merged=[Bounds(3, 1, 4, 1)]))
    assert sent(llm) == ["Describe kettle for the kitchen.", "Describe lamp for the kitchen.",
                         "Describe mug for the shelf."]


@each(LAID_OUT)
def test_a_formula_sends_its_calculated_value(driver: Driver, llm: FakeLLMServer) -> None:
    driver.run(Sheet([["lamp", Calc("=2+3", 5)]]))
    assert sent(llm) == ["Describe lamp for the 5."]


@each(["xlsx"])
def test_a_formula_never_calculated_is_refused(driver: Driver, llm: FakeLLMServer) -> None:
    """Only a file can hold a formula without its value (live Excel and Google calculate)."""
    out = driver.run(Sheet([["lamp", Calc("=2+3")]]))
    assert out.error is not None and out.error.startswith(
        "'Items'!B4 holds a formula whose value was never calculated")
    assert llm.prompts == []


@each(ALL)
def test_the_system_prompt_is_sent(driver: Driver, llm: FakeLLMServer) -> None:
    driver.run(Sheet(ROWS, conf={"system": "Be brief."}))
    assert len(llm.requests) == 2
    for request in llm.requests:
        assert request["json"]["messages"][0] == {"role": "system", "content": "Be brief."}


@each(ALL)
def test_estimates_are_calibrated_the_same_way(driver: Driver, llm: FakeLLMServer,
                                               tmp_path: Path) -> None:
    """Once the cache holds 20 answers of a model, every surface's estimate is fitted to
    them, system prompt included: the same as the command line's preview of a CSV file."""
    fresh = Sheet([["lamp", "desk"], ["sofa", "lounge"]], conf={"system": "Be brief."})
    reference = CsvDriver(tmp_path / "reference", llm)
    reference.tmp.mkdir()
    uncalibrated = reference.preview(fresh)
    driver.run(Sheet([[f"item {i}", "hall"] for i in range(24)], conf={"system": "Be brief."}))
    expected = reference.preview(fresh)
    assert expected != uncalibrated, "24 answers in the cache calibrate the estimate"
    assert driver.preview(fresh) == expected


def preview_of(surface: Surface, llm: FakeLLMServer, flags: dict[str, str]) -> Estimate:
    store = Store()
    try:
        return runner.preview(runner.prepare(surface, {
            "model": "openai-compatible:fake", "base_url": llm.base_url, **flags}), store).estimate
    finally:
        store.close()
