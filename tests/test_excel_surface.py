"""The Excel surface on xlwings' remote engine: a Book built from a JSON payload that records
every action (setValues, setCalculation, ...) instead of talking to Excel.

The payload is what xlwings' Office Scripts client sends, built here from the sample workbooks.
Only tests use that engine (xlwings PRO, noncommercial licence); the product code does not.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from openpyxl.utils.cell import range_boundaries

from promptbatch_sheets import runner
from promptbatch_sheets.errors import PromptBatchError
from promptbatch_sheets.surfaces.xlsx import XlsxSurface
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer

os.environ.setdefault("XLWINGS_LICENSE_KEY", "noncommercial")  # before xlwings is imported

import xlwings as xw  # noqa: E402

import promptbatch_sheets  # noqa: E402
from promptbatch_sheets.surfaces.excel import ExcelSurface, blocks, entry, run_sheet  # noqa: E402


def _remote_engine() -> None:
    """Register xlwings' remote engine if xlwings was imported before the licence was set."""
    if "remote" not in [engine.name for engine in xw.engines]:
        from xlwings.pro import _xlremote

        xw.engines.add(xw.Engine(impl=_xlremote.engine))


def _js(value: Any) -> Any:
    """A cell value as the Office Scripts client sends it."""
    if value is None:
        return ""
    if isinstance(value, dt.datetime):
        return value.isoformat() + ".000Z"
    return value


def _address(left: int, top: int, right: int, bottom: int) -> str:
    from openpyxl.utils import get_column_letter as col

    return f"{col(left)}{top}:{col(right)}{bottom}"


def payload(path: Path, calculation: str | None = "Automatic") -> dict[str, Any]:
    wb = openpyxl.load_workbook(path, data_only=True)
    sheets = []
    for ws in wb.worksheets:
        tables = []
        for table in ws.tables.values():
            left, top, right, bottom = range_boundaries(table.ref)
            tables.append({
                "name": table.name, "range_address": table.ref,
                "header_row_range_address": _address(left, top, right, top),
                "data_body_range_address": _address(left, top + 1, right, bottom),
                "total_row_range_address": None, "show_headers": True, "show_totals": False,
                "table_style": "TableStyleMedium2", "show_autofilter": True,
            })
        values = [[_js(v) for v in row] for row in ws.iter_rows(values_only=True)]
        sheets.append({"name": ws.title, "values": values or [[]], "pictures": [],
                       "tables": tables})
    names = []
    for name, defined in wb.defined_names.items():
        for sheet, coord in defined.destinations:
            names.append({"name": name, "sheet_index": wb.sheetnames.index(sheet),
                          "address": coord.replace("$", ""), "scope_sheet_name": None,
                          "scope_sheet_index": None, "book_scope": True})
    book: dict[str, Any] = {"name": path.name, "selection": "A1",
                            "active_sheet_index": wb.worksheets.index(wb.active)}
    if calculation:
        book["calculation"] = calculation
    return {"client": "Microsoft Office Scripts", "version": xw.__version__, "book": book,
            "names": names, "sheets": sheets}


def remote_book(data: dict[str, Any]) -> xw.Book:
    _remote_engine()
    return xw.Book(json=data)


def actions(book: xw.Book, func: str | None = None) -> list[dict[str, Any]]:
    return [a for a in book.json()["actions"] if func is None or a["func"] == func]


def written(book: xw.Book) -> dict[tuple[int, int], Any]:
    """(row, column) 0-based -> value, from every setValues action in order."""
    cells: dict[tuple[int, int], Any] = {}
    for action in actions(book, "setValues"):
        for i, row in enumerate(action["values"]):
            for j, value in enumerate(row):
                cells[action["start_row"] + i, action["start_column"] + j] = value
    return cells


def reply(prompt: str) -> str:
    """Answers that Excel would turn into formulas or numbers if written carelessly."""
    return f"=SUM({len(prompt)}) {prompt[-30:]}" if len(prompt) % 2 else f"{len(prompt)}"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Any:
    with FakeLLMServer(FakeLLMConfig(answer=reply)) as srv:
        monkeypatch.setenv("PROMPTBATCH_MODEL", "openai-compatible:fake")
        monkeypatch.setenv("PROMPTBATCH_BASE_URL", srv.base_url)
        yield srv


def expected(path: Path) -> tuple[runner.Prepared, dict[tuple[int, int], str]]:
    """What the xlsx surface would send for the same file, and the cell text of each answer."""
    prepared = runner.prepare(XlsxSurface(path))
    col = prepared.plan.table.output_col
    return prepared, {(j.row, col): entry(reply(j.prompt)) for j in prepared.plan.jobs}


@pytest.mark.parametrize("name", ["product_descriptions", "support_tickets", "translation"])
def test_run_batch_writes_answers_as_text_in_blocks(name: str, samples: Path,
                                                    server: FakeLLMServer) -> None:
    path = samples / f"{name}.xlsx"
    prepared, answers = expected(path)
    book = remote_book(payload(path))

    summary = run_sheet(book)

    table = prepared.plan.table
    cells = written(book)
    header = {} if table.output_exists else {(table.header_row, table.output_col):
                                             entry(table.output_header)}
    assert cells == {**answers, **header}
    assert summary.answered == len(answers) and summary.failed == 0
    assert sorted(server.prompts) == sorted(j.prompt for j in prepared.plan.jobs)
    assert all(str(v).startswith("'") for v in cells.values())
    assert len(actions(book, "setValues")) <= 4 < len(cells)
    calc = [a["args"] for a in actions(book) if a["func"] == "setCalculation"]
    assert calc == [["Manual"], ["Automatic"]]
    assert actions(book)[-1]["func"] == "setCalculation"


def test_kept_rows_and_defined_name(samples: Path, server: FakeLLMServer) -> None:
    """support_tickets: template from the name prompt_template, Excel Table, kept answers."""
    book = remote_book(payload(samples / "support_tickets.xlsx"))
    run_sheet(book)
    cells = written(book)
    assert (2, 4) not in cells and (6, 4) not in cells  # E3 billing, E7 bug are kept
    assert (8, 4) in cells  # E9 held #ERROR: timeout and is asked again
    template = openpyxl.load_workbook(samples / "support_tickets.xlsx")["Prompt"]["A2"].value
    assert server.prompts[0].startswith(str(template)[:20])
    starts = sorted(a["start_row"] for a in actions(book, "setValues"))
    assert starts == [1, 3, 7]  # E2, E4:E6, E8:E11: one block per run of adjacent rows


def test_conf_sheet_settings_reach_the_model(samples: Path, server: FakeLLMServer) -> None:
    book = remote_book(payload(samples / "translation.xlsx"))
    run_sheet(book)
    body = server.requests[0]["json"]
    assert body["temperature"] == 0 and body["max_tokens"] == 60
    assert written(book)[0, 2] == "'Translation"


def test_failure_restores_calculation(samples: Path, server: FakeLLMServer) -> None:
    data = payload(samples / "product_descriptions.xlsx")
    data["sheets"][0]["values"][0][1] = "Describe {{ colour }}"
    book = remote_book(data)
    with pytest.raises(PromptBatchError, match="colour"):
        run_sheet(book)
    calc = [a["args"] for a in actions(book) if a["func"] == "setCalculation"]
    assert calc == [["Manual"], ["Automatic"]]
    assert not actions(book, "setValues")
    assert not server.requests


def test_manual_calculation_is_left_alone(samples: Path, server: FakeLLMServer) -> None:
    book = remote_book(payload(samples / "product_descriptions.xlsx", calculation="Manual"))
    run_sheet(book)
    assert not actions(book, "setCalculation")


def _small_book(values: list[list[Any]], **sheet: Any) -> dict[str, Any]:
    return {"client": "Microsoft Office Scripts", "version": xw.__version__,
            "book": {"name": "small.xlsx", "active_sheet_index": 0, "selection": "A1"},
            "names": [], "sheets": [{"name": "Data", "values": values, "pictures": [],
                                     "tables": [], **sheet}]}


def test_used_range_away_from_a1_keeps_coordinates(server: FakeLLMServer) -> None:
    values = [["", "", ""], ["", "", ""],
              ["", "template", "Say {{ word }}"], ["", "word", ""], ["", "hi", ""],
              ["", "yo", ""]]
    book = remote_book(_small_book(values, used_range_address="B3:C6"))
    run_sheet(book)
    assert written(book) == {(3, 2): "'response", (4, 2): entry(reply("Say hi")),
                             (5, 2): entry(reply("Say yo"))}


def test_new_column_right_of_a_table_joins_it(server: FakeLLMServer) -> None:
    values = [["word", ""], ["hi", ""], ["yo", ""]]
    table = {"name": "Words", "range_address": "A1:A3", "header_row_range_address": "A1:A1",
             "data_body_range_address": "A2:A3", "total_row_range_address": None,
             "show_headers": True, "show_totals": False, "table_style": "TableStyleMedium2",
             "show_autofilter": True}
    data = _small_book(values, tables=[table])
    data["sheets"].append({"name": "promptbatch.conf", "pictures": [], "tables": [],
                           "values": [["key", "value"], ["template", "Say {{ word }}"]]})
    book = remote_book(data)
    run_sheet(book)
    resize = actions(book, "resizeTable")
    assert [a["args"] for a in resize] == [[0, "$A$1:$B$3"]]
    assert written(book)[0, 1] == "'response"


def test_two_chained_columns_right_of_a_table_join_it(server: FakeLLMServer) -> None:
    values = [["word", "", ""], ["hi", "", ""]]
    table = {"name": "Words", "range_address": "A1:A2", "header_row_range_address": "A1:A1",
             "data_body_range_address": "A2:A2", "total_row_range_address": None,
             "show_headers": True, "show_totals": False, "table_style": "TableStyleMedium2",
             "show_autofilter": True}
    data = _small_book(values, tables=[table])
    data["sheets"].append({"name": "promptbatch.conf", "pictures": [], "tables": [],
                           "values": [["key", "value"], ["template.a", "Say {{ word }}"],
                                      ["template.b", "Echo {{ a }}"]]})
    book = remote_book(data)
    run_sheet(book)
    assert [a["args"] for a in actions(book, "resizeTable")] == [[0, "$A$1:$C$2"]]
    cells = written(book)
    assert (cells[0, 1], cells[0, 2]) == ("'a", "'b")
    assert cells[1, 2] == entry(reply("Echo " + reply("Say hi")))


def test_main_runs_the_calling_book_and_alerts_on_mistakes(
        samples: Path, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ribbon: promptbatch_sheets.main() with xlwings' mock caller."""
    book = remote_book(payload(samples / "product_descriptions.xlsx"))
    monkeypatch.setattr(xw.Book, "_mock_caller", book, raising=False)
    promptbatch_sheets.main()
    assert len(written(book)) == 13
    assert not actions(book, "alert")

    broken = payload(samples / "product_descriptions.xlsx")
    broken["sheets"][0]["values"][0][1] = "{{ oops"
    book = remote_book(broken)
    monkeypatch.setattr(xw.Book, "_mock_caller", book, raising=False)
    promptbatch_sheets.main()
    alert = actions(book, "alert")
    assert len(alert) == 1 and "syntax error" in alert[0]["args"][0]


def test_blocks_group_adjacent_rows_of_a_column() -> None:
    cells = [(5, 1, "e"), (3, 1, "c"), (4, 1, "d"), (9, 1, "x"), (3, 2, "z"), (4, 1, "D")]
    assert blocks(cells) == [(1, 3, ["c", "D", "e"]), (1, 9, ["x"]), (2, 3, ["z"])]


def test_entry_keeps_strings_as_text() -> None:
    assert entry("=1+1") == "'=1+1"
    assert entry("'quoted") == "''quoted"
    assert entry("") == ""
    assert len(entry("x" * 40_000)) <= 32_767


def _name(name: str, refers_to: str, sheet: int | None = None, address: str | None = None,
          scope: int | None = None) -> dict[str, Any]:
    return {"name": name, "refers_to": refers_to, "sheet_index": sheet, "address": address,
            "scope_sheet_name": None if scope is None else "Data", "scope_sheet_index": scope,
            "book_scope": scope is None}


@pytest.mark.parametrize(("names", "prompt"), [
    ([_name("prompt_template", "='Prompts'!$A$1", 1, "A1")], "Book hi"),
    ([_name("prompt_template", "='Prompts'!$A$1", 1, "A1"),
      _name("prompt_template", "='Prompts'!$A$2", 1, "A2", scope=0)], "Sheet hi"),
    ([_name("PROMPT_TEMPLATE", '="Text {{ word }}"')], "Text hi"),
])
def test_prompt_template_name(names: list[dict[str, Any]], prompt: str,
                              server: FakeLLMServer) -> None:
    """The run sheet's own name wins over the workbook's; a name may hold the text itself."""
    data = _small_book([["word"], ["hi"]])
    data["sheets"].append({"name": "Prompts", "pictures": [], "tables": [],
                           "values": [["Book {{ word }}"], ["Sheet {{ word }}"]]})
    data["names"] = names
    run_sheet(remote_book(data))
    assert server.prompts == [prompt]


def test_typed_values_are_written_as_values_and_strings_as_text() -> None:
    book = remote_book(_small_book([["word"], ["hi"], ["yo"]]))
    surface = ExcelSurface(book)
    surface.read()
    surface.write([(1, 1, 3.5), (2, 1, 7), (1, 2, True), (2, 2, False), (1, 3, "3"),
                   (2, 3, "=1+1")])
    assert written(book) == {(1, 1): 3.5, (2, 1): 7, (1, 2): True, (2, 2): False,
                             (1, 3): "'3", (2, 3): "'=1+1"}
    assert entry(2.5) == 2.5 and entry(True) is True


def test_a_table_grows_by_every_field_column(server: FakeLLMServer) -> None:
    table = {"name": "Words", "range_address": "A1:A3", "header_row_range_address": "A1:A1",
             "data_body_range_address": "A2:A3", "total_row_range_address": None,
             "show_headers": True, "show_totals": False, "table_style": "TableStyleMedium2",
             "show_autofilter": True}
    book = remote_book(_small_book([["word"], ["hi"], ["yo"]], tables=[table]))
    surface = ExcelSurface(book)
    surface.read()
    surface.write([(0, 1, "mood"), (0, 2, "score"), (0, 4, "apart"), (1, 1, "ok"),
                   (1, 2, 3)])
    assert [a["args"] for a in actions(book, "resizeTable")] == [[0, "$A$1:$C$3"]]


def test_ribbon_sends_through_the_batch_api_and_collects_on_the_next_press(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``via = batch`` in promptbatch.conf: the first press submits, a press after the
    provider has finished writes the answers."""
    values = [["word", ""], ["hi", ""], ["yo", ""]]
    conf = [["key", "value"], ["template", "Say {{ word }}"], ["via", "batch"]]

    def book() -> xw.Book:
        data = _small_book(values)
        data["sheets"].append({"name": "promptbatch.conf", "pictures": [], "tables": [],
                               "values": conf})
        made = remote_book(data)
        monkeypatch.setattr(xw.Book, "_mock_caller", made, raising=False)
        return made

    with FakeBatchServer(FakeBatchConfig(answer=lambda p: f"ANS {p}")) as fake:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
        monkeypatch.setenv("PROMPTBATCH_MODEL", "openai:gpt-4o-mini")
        monkeypatch.setenv("PROMPTBATCH_BASE_URL", fake.base_url)
        first = book()
        promptbatch_sheets.main()
        (message,) = [a["args"][0] for a in actions(first, "alert")]
        assert "Sent 2 prompts to the provider's Batch API" in message
        assert "press Run batch again to collect them" in message
        assert written(first) == {(0, 1): "'response"}

        fake.finish()
        second = book()
        promptbatch_sheets.main()
        (message,) = [a["args"][0] for a in actions(second, "alert")]
        assert message == "2 answers are in the sheet."
        assert written(second) == {(0, 1): "'response", (1, 1): "'ANS Say hi",
                                   (2, 1): "'ANS Say yo"}
        assert len(fake.batches) == 1


def test_an_engine_that_cannot_read_hidden_rows_says_so(server: FakeLLMServer) -> None:
    """xlwings' remote engine reads no row visibility: skip_hidden is refused, not ignored."""
    data = _small_book([["word"], ["hi"]])
    data["sheets"].append({"name": "promptbatch.conf", "pictures": [], "tables": [],
                           "values": [["template", "Say {{ word }}"], ["skip_hidden", "true"]]})
    book = remote_book(data)
    with pytest.raises(PromptBatchError, match="skip_hidden is set, but this Excel cannot tell "
                                               "which rows are hidden"):
        run_sheet(book)
    assert not server.requests and not actions(book, "setValues")
