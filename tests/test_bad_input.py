"""Issue 7, part 3: every bad input gets a message naming the place and the fix, and no model
call is spent on it. Each test runs the command as a user would, against the fake LLM server."""

from __future__ import annotations

import datetime as dt
import os
import time
from pathlib import Path
from typing import Any

import openpyxl
import pytest
from click.testing import Result

from promptbatch_sheets.errors import TableError
from promptbatch_sheets.plan import make_plan
from promptbatch_sheets.surfaces.xlsx import EMPTY_ROW, XlsxSurface
from promptbatch_sheets.table import TemplateText, locate
from tests.conftest import SAMPLES, cli, fake_model
from tests.fakes.llm_server import FakeLLMServer
from tests.test_run_cli import chat_requests, read_csv, write_csv

CORPUS = Path("/work/shared/corpus/xlsx")
EXCEL_ROWS = 1_048_576


def book(path: Path, rows: list[list[Any]], title: str = "S") -> Path:
    """A one-sheet workbook saved by openpyxl (which stores formulas without values)."""
    wb = openpyxl.Workbook()
    wb.active.title = title
    for row in rows:
        wb.active.append(row)
    wb.save(path)
    return path


def refused(result: Result, *fragments: str) -> None:
    """Exit 2, one message holding every fragment, no traceback."""
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    for fragment in fragments:
        assert fragment in text, (fragment, result.output)
    assert "Traceback" not in result.output


def prompts(server: FakeLLMServer) -> list[str]:
    """The prompts sent, sorted: requests run concurrently and arrive in any order."""
    return sorted(str(r["json"]["messages"][-1]["content"]) for r in chat_requests(server))


def no_temporary_files(folder: Path) -> None:
    assert not [p.name for p in folder.rglob("*.tmp")]


# --- templates ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "fragments"), [
    ("Hello\n{{ name ", ("Template syntax error in 'S'!B1, line 2",)),
    ("{{ produkt }}", ("uses {{ produkt }}", "Columns present: 'Name' ({{ name }})")),
    ("{{ ''.__class__.__mro__ }}", ("'S'!B1 tried something unsafe",)),
    ("{{ cycler.__init__.__globals__ }}", ("'S'!B1 tried something unsafe",)),
    ("{% if false %}{{ name }}{% endif %}", ("renders nothing on row 4 ('S'!B4)",)),
    ("{% for i in range(99999) %}{% for j in range(99999) %}{{ name }}{% endfor %}{% endfor %}",
     ("rendered more than 200,000 characters on row 4", "loop running away")),
])
def test_template_mistakes_name_the_cell(tmp_path: Path, llm: FakeLLMServer, template: str,
                                         fragments: tuple[str, ...]) -> None:
    path = book(tmp_path / "b.xlsx", [["Template", template], [], ["Name"], ["mug"]])
    refused(cli("run", str(path), *fake_model(llm)), *fragments)
    assert chat_requests(llm) == []
    assert not (tmp_path / "b.promptbatch.xlsx").exists()


def test_empty_template_cell_says_where_to_write_it(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Template", "   "], ["Name"], ["mug"]])
    refused(cli("run", str(path), *fake_model(llm)), "'S'!A1 reads 'template'",
            "'S'!B1, is empty. Put the prompt template there.")
    assert chat_requests(llm) == []


# --- the table ---------------------------------------------------------------------------------


def test_no_header_row(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Template", "Say {{ a }}"]])
    refused(cli("run", str(path), *fake_model(llm)),
            "Sheet 'S' has no header row below the template (row 1)",
            "the first non-empty row must name the variables")
    assert chat_requests(llm) == []


def test_duplicate_headers(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Product Name", "product-name"], ["a", "b"]])
    refused(cli("run", str(path), "--template", "{{ product_name }}", *fake_model(llm)),
            "Headers 'S'!A1 ('Product Name') and 'S'!B1 ('product-name') both become the "
            "variable {{ product_name }}. Rename one of them.")
    assert chat_requests(llm) == []


def test_empty_header_over_data_names_the_cell(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name", None, "Price"], ["mug", None, 3],
                                      ["cap", "blue", 4]])
    refused(cli("run", str(path), "--template", "{{ name }}", *fake_model(llm)),
            "Column B has data ('S'!B3) but no header: 'S'!B1 is empty. Give it a header")
    assert chat_requests(llm) == []


def test_empty_header_over_an_empty_column_is_ignored(tmp_path: Path,
                                                       llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name", None, "Price"], ["mug", None, 3]])
    result = cli("run", str(path), "--template", "{{ name }} {{ price }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert prompts(llm) == ["mug 3"]


def test_output_header_twice_names_both_cells(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name", "response", "Response"], ["mug", None, None]])
    refused(cli("run", str(path), "--template", "{{ name }}", *fake_model(llm)),
            "Headers 'S'!B1 and 'S'!C1 both read 'response', an answers column",
            "--output-column NAME")
    assert chat_requests(llm) == []


def test_input_header_equal_to_output_column(tmp_path: Path, llm: FakeLLMServer) -> None:
    """A header equal to --output-column is the answers column; a template cannot read it."""
    path = book(tmp_path / "b.xlsx", [["Name", "Notes"], ["mug", "old"]])
    refused(cli("run", str(path), "--template", "{{ name }}: {{ notes }}", "--output-column",
                "Notes", *fake_model(llm)),
            "uses {{ notes }}, but 'S'!B1 ('Notes') is the answers column, which the run "
            "writes. Choose another answers column with --output-column NAME")
    assert chat_requests(llm) == []


def test_headers_in_other_scripts_and_with_punctuation(tmp_path: Path,
                                                        llm: FakeLLMServer) -> None:
    path = write_csv(tmp_path / "b.csv", [["Название", "名前", "Prix (€)", "#"],
                                          ["Кружка", "マグ", "3", "x"]])
    template = '{{ название }} / {{ 名前 }} / {{ prix }} / {{ row["#"] }}'
    result = cli("run", str(path), "--template", template, *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert prompts(llm) == ["Кружка / マグ / 3 / x"]
    missing = cli("run", str(path), "--template", "{{ nom }}", *fake_model(llm))
    refused(missing, "'Название' ({{ название }})", "'Prix (€)' ({{ prix }})",
            "'#' ({{ row['#'] }})")


def test_blank_rows_are_skipped_and_answers_stay_aligned(tmp_path: Path,
                                                         llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name"], ["mug"], [None], [], ["cap"]])
    result = cli("run", str(path), "--template", "{{ name }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(tmp_path / "b.promptbatch.xlsx")["S"]
    assert [ws.cell(r, 2).value for r in range(1, 6)] == [
        "response", "Answer: mug", None, None, "Answer: cap"]
    assert len(chat_requests(llm)) == 2


def test_merged_cells_give_every_row_their_value(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Category", "Name"], ["kitchen", "mug"], [None, "pan"],
                                      ["garden", "hose"]])
    wb = openpyxl.load_workbook(path)
    wb["S"].merge_cells("A2:A3")
    wb.save(path)
    result = cli("run", str(path), "--template", "{{ name }} for the {{ category }}",
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert prompts(llm) == ["hose for the garden", "mug for the kitchen", "pan for the kitchen"]


def test_merged_answers_column_is_refused(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name", "response"], ["mug"], ["pan"]])
    wb = openpyxl.load_workbook(path)
    wb["S"].merge_cells("B2:B3")
    wb.save(path)
    refused(cli("run", str(path), "--template", "{{ name }}", *fake_model(llm)),
            "The answers column B crosses the merged cells 'S'!B2:B3; answers written there "
            "would be hidden. Unmerge them")
    assert chat_requests(llm) == []


def test_corpus_merges_are_filled_for_reading() -> None:
    path = CORPUS / "poi__StructuredRefs-lots-with-lookups.xlsx"
    data = XlsxSurface(path, output=Path("/nonexistent/out.xlsx")).read()
    assert data.merged
    for m in data.merged:
        first = data.grid[m.top][m.left] if m.left < len(data.grid[m.top]) else None
        if first is not None:
            assert all(data.grid[r][c] == first for r in range(m.top, m.bottom + 1)
                       for c in range(m.left, m.right + 1))


def test_formula_without_cached_value_is_named(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name", "Price", "Total", "Note"],
                                      ["mug", 3, "=B2*2", '=""'], ["cap", 4, "=B3*2", None]])
    refused(cli("run", str(path), "--template", "{{ name }} {{ total }}", *fake_model(llm)),
            "'S'!C2 (and 1 more cells) holds a formula whose value was never calculated",
            "Open and save the file in Excel or LibreOffice so the values are calculated")
    assert chat_requests(llm) == []
    unused = cli("run", str(path), "--template", "{{ name }} {{ price }}", *fake_model(llm))
    assert unused.exit_code == 0, unused.output  # formulas in columns the template skips


def test_error_values_are_named_in_the_answer_cell(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name", "Price"], ["cap", "#N/A"]])
    result = cli("run", str(path), "--template", "{{ name }} {{ price }}", *fake_model(llm))
    assert result.exit_code == 1
    cell = openpyxl.load_workbook(tmp_path / "b.promptbatch.xlsx")["S"]["C2"].value
    assert cell == "#ERROR: 'S'!B2 holds #N/A; fix that cell and run again"
    assert chat_requests(llm) == []


def test_dates_and_numbers_read_as_a_person_reads_them(tmp_path: Path,
                                                       llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["When", "Qty", "Price", "At"],
                                      [dt.datetime(2024, 3, 1), 3.0, 2.5,
                                       dt.datetime(2024, 3, 1, 14, 30)]])
    result = cli("run", str(path), "--template", "{{ when }} {{ qty }} {{ price }} {{ at }}",
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert prompts(llm) == ["2024-03-01 3 2.5 2024-03-01 14:30"]


def hidden_book(path: Path) -> Path:
    book(path, [["Name"], ["mug"], ["secret"], ["cap"]])
    wb = openpyxl.load_workbook(path)
    wb["S"].row_dimensions[3].hidden = True  # what a filter leaves in the file
    wb.save(path)
    return path


def test_skip_hidden_leaves_hidden_rows_out(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = hidden_book(tmp_path / "b.xlsx")
    shown = cli("preview", str(path), "--template", "{{ name }}", "--skip-hidden")
    assert shown.exit_code == 0 and "Rows: 2 in the table" in shown.output, shown.output
    result = cli("run", str(path), "--template", "{{ name }}", "--skip-hidden", *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert prompts(llm) == ["cap", "mug"]
    ws = openpyxl.load_workbook(tmp_path / "b.promptbatch.xlsx")["S"]
    assert (ws["B2"].value, ws["B3"].value, ws["B4"].value) == ("Answer: mug", None,
                                                                "Answer: cap")


def test_hidden_rows_are_sent_unless_asked(tmp_path: Path, llm: FakeLLMServer,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    path = hidden_book(tmp_path / "b.xlsx")
    assert cli("run", str(path), "--template", "{{ name }}", *fake_model(llm)).exit_code == 0
    assert prompts(llm) == ["cap", "mug", "secret"]
    monkeypatch.setenv("PROMPTBATCH_SKIP_HIDDEN", "yes")
    shown = cli("preview", str(path), "--template", "{{ name }}")
    assert "Rows: 2 in the table" in shown.output, shown.output


def test_a_table_reaching_the_last_excel_row_is_planned_sparsely() -> None:
    grid: list[Any] = [EMPTY_ROW] * EXCEL_ROWS
    grid[0], grid[1], grid[EXCEL_ROWS - 1] = ["Name"], ["mug"], ["cap"]
    started = time.monotonic()
    table = locate(grid, "S", explicit=TemplateText("{{ name }}", "t"))
    plan = make_plan(table, grid)
    assert time.monotonic() - started < 5
    assert table.rows == [1, EXCEL_ROWS - 1]
    assert [j.prompt for j in plan.jobs] == ["mug", "cap"]


def test_an_xlsx_with_a_value_in_row_1048576(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["Name"], ["mug"]])
    wb = openpyxl.load_workbook(path)
    wb["S"].cell(EXCEL_ROWS, 1, "cap")
    wb.save(path)
    data = XlsxSurface(path).read()
    assert len(data.grid) == EXCEL_ROWS and data.grid[2] is EMPTY_ROW
    result = cli("run", str(path), "--template", "{{ name }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert prompts(llm) == ["cap", "mug"]
    ws = openpyxl.load_workbook(tmp_path / "b.promptbatch.xlsx", read_only=True)["S"]
    assert next(ws.iter_rows(min_row=EXCEL_ROWS, max_col=2, values_only=True)) == (
        "cap", "Answer: cap")


def test_corpus_sheet_reaching_the_last_row_reads_fast() -> None:
    started = time.monotonic()
    data = XlsxSurface(CORPUS / "calamine__issue_174.xlsx").read()
    assert len(data.grid) == EXCEL_ROWS and time.monotonic() - started < 10
    table = locate(data.grid, data.name, explicit=TemplateText("{{ city }}", "t"))
    assert table.rows == [1]


# --- files -------------------------------------------------------------------------------------


def test_damaged_or_fake_workbooks(tmp_path: Path, llm: FakeLLMServer) -> None:
    data = (SAMPLES / "product_descriptions.xlsx").read_bytes()
    (tmp_path / "cut.xlsx").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.xlsx").write_text("Name,Price\nmug,3\n")
    for name in ("cut.xlsx", "text.xlsx"):
        refused(cli("run", str(tmp_path / name), *fake_model(llm)),
                f"{tmp_path / name} is not a readable .xlsx workbook",
                "Open it in Excel and save it as .xlsx")
    assert chat_requests(llm) == []


@pytest.mark.parametrize(("name", "fragment"), [
    ("b.xls", "is an old binary Excel file, which promptbatch cannot write safely. Save it as "
              ".xlsx"),
    ("b.ods", "is an OpenDocument spreadsheet"),
    ("b.pdf", "promptbatch reads .xlsx, .xlsm and .csv files; .pdf is none of them"),
    ("b", "no extension is none of them"),
])
def test_wrong_extension(tmp_path: Path, llm: FakeLLMServer, name: str, fragment: str) -> None:
    (tmp_path / name).write_bytes(b"whatever")
    refused(cli("run", str(tmp_path / name), *fake_model(llm)), fragment)
    assert chat_requests(llm) == []


def test_tab_separated_txt_is_read_as_a_table(tmp_path: Path, llm: FakeLLMServer) -> None:
    path = tmp_path / "b.txt"
    path.write_text("name\tcolour\nmug\tred\n", encoding="utf-8")
    result = cli("run", str(path), "--template", "{{ colour }} {{ name }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert read_csv(tmp_path / "b.promptbatch.txt") == [
        ["name\tcolour\tresponse"], ["mug\tred\tAnswer: red mug"]]


def test_missing_path_and_missing_sheet(tmp_path: Path, llm: FakeLLMServer) -> None:
    refused(cli("run", str(tmp_path / "nope.xlsx"), *fake_model(llm)),
            "nope.xlsx does not exist. Check the path and the file name.")
    refused(cli("run", str(SAMPLES / "translation.xlsx"), "--sheet", "Nope", *fake_model(llm)),
            "has no sheet 'Nope'. Sheets: 'Phrases', 'promptbatch.conf'")
    assert chat_requests(llm) == []


@pytest.mark.parametrize("kind", ["csv", "xlsx"])
def test_unwritable_output_fails_before_any_call(tmp_path: Path, llm: FakeLLMServer,
                                                 kind: str) -> None:
    """Root ignores permissions, so the output's folder is a file instead."""
    source = tmp_path / f"b.{kind}"
    if kind == "csv":
        write_csv(source, [["Name", "response"], ["mug", ""]])
    else:
        book(source, [["Name", "response"], ["mug"]])
    blocker = tmp_path / "folder"
    blocker.write_text("a file, not a folder")
    target = blocker / f"out.{kind}"
    refused(cli("run", str(source), "--template", "{{ name }}", "-o", str(target),
                *fake_model(llm)),
            f"Cannot write {target}: {blocker} is a file, not a folder. Choose another place "
            "for the answers with -o.")
    assert chat_requests(llm) == []
    no_temporary_files(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_folder_fails_before_any_call(tmp_path: Path, llm: FakeLLMServer) -> None:
    source = book(tmp_path / "b.xlsx", [["Name"], ["mug"]])
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    refused(cli("run", str(source), "--template", "{{ name }}", "-o", str(locked / "o.xlsx"),
                *fake_model(llm)), "Permission denied")
    assert chat_requests(llm) == []


def test_output_under_proc_is_refused(tmp_path: Path, llm: FakeLLMServer) -> None:
    source = book(tmp_path / "b.xlsx", [["Name"], ["mug"]])
    refused(cli("run", str(source), "--template", "{{ name }}", "-o", "/proc/out.xlsx",
                *fake_model(llm)), "Cannot write /proc/out.xlsx:", "with -o")
    assert chat_requests(llm) == []


# --- configuration and keys ----------------------------------------------------------------------


@pytest.mark.parametrize(("model", "fragment"), [
    ("gemini:pro", "Unknown provider 'gemini' in model 'gemini:pro'. Use one of:"),
    ("openai:", "Model 'openai:' names no model. Write it as openai:MODEL"),
    ("local:llama-70b", "'llama-70b' is not available locally"),
    ("openai:gpt-4o-mini", "needs an API key. Set the environment variable OPENAI_API_KEY, or "
                           "run: promptbatch keys set openai"),
])
def test_model_mistakes(tmp_path: Path, llm: FakeLLMServer, model: str, fragment: str) -> None:
    path = write_csv(tmp_path / "b.csv", [["q"], ["x"]])
    refused(cli("run", str(path), "--template", "{{ q }}", "--model", model), fragment)
    assert chat_requests(llm) == []


@pytest.mark.parametrize("url", ["ftp://x", "file:///etc/passwd", "127.0.0.1:8000"])
def test_base_url_must_be_http(tmp_path: Path, llm: FakeLLMServer, url: str) -> None:
    path = write_csv(tmp_path / "b.csv", [["q"], ["x"]])
    refused(cli("run", str(path), "--template", "{{ q }}", "--model", "openai-compatible:m",
                "--base-url", url), f"Base URL {url!r} is not an http(s) address")
    assert chat_requests(llm) == []


def test_keys_never_reach_error_text_or_files(tmp_path: Path, llm: FakeLLMServer,
                                              monkeypatch: pytest.MonkeyPatch,
                                              isolated_home: Path) -> None:
    secret = "sk-secret-for-bad-input-0123456789"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("PROMPTBATCH_RETRIES", "1")
    llm.config.fault_for = lambda prompt: "401"
    path = write_csv(tmp_path / "b.csv", [["q"], ["x"]])
    result = cli("run", str(path), "--template", "{{ q }}", "--model", "openai:gpt-4o-mini",
                 "--base-url", llm.base_url)
    assert result.exit_code == 1
    assert secret not in result.output
    for written in [*tmp_path.rglob("*"), *isolated_home.rglob("*")]:
        if written.is_file():
            assert secret.encode() not in written.read_bytes(), written


def test_preview_of_a_read_only_folder_still_works(llm: FakeLLMServer) -> None:
    result = cli("preview", str(CORPUS / "sheetjs__minimal_112.xlsx"), "--template", "x")
    assert "Cannot write" not in result.output
    assert chat_requests(llm) == []


def test_unheaded_data_where_answers_would_go_is_refused() -> None:
    with pytest.raises(TableError, match=r"'S'!B1 is empty"):
        locate([["A", None], ["x", "y"]], "S", explicit=TemplateText("{{ a }}", "t"))
