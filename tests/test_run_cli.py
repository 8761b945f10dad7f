"""`promptbatch run` end to end against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import csv
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
import pytest

from promptbatch_sheets.surfaces import CsvSurface
from tests.conftest import SAMPLES, cli, fake_model
from tests.fakes.llm_server import FakeLLMServer


def write_csv(path: Path, rows: list[list[str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(rows)
    return path


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.reader(handle))


def chat_requests(server: FakeLLMServer) -> list[dict[str, object]]:
    return [r for r in server.requests if r["path"].endswith("/chat/completions")]


def test_csv_run_then_rerun_is_free(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = write_csv(tmp_path / "b.csv", [["name", "colour"], ["mug", "red"], ["cap", "blue"],
                                          ["mug", "red"]])
    out = tmp_path / "out.csv"
    first = cli("run", str(book), "--template", "Describe the {{ colour }} {{ name }}.",
                "-o", str(out), *fake_model(llm))
    assert first.exit_code == 0, first.output
    rows = read_csv(out)
    assert rows[0] == ["name", "colour", "response"]
    assert rows[1][2] == "Answer: Describe the red mug." == rows[3][2]
    assert rows[2][2] == "Answer: Describe the blue cap."
    assert len(chat_requests(llm)) == 2  # the repeated prompt was sent once

    again = cli("run", str(book), "--template", "Describe the {{ colour }} {{ name }}.",
                "-o", str(out), *fake_model(llm))
    assert again.exit_code == 0
    assert len(chat_requests(llm)) == 2  # all three rows came from the cache
    assert "from cache" in again.output and read_csv(out) == rows


def test_the_command_loads_no_http_or_workbook_library_up_front() -> None:
    """A rerun the cache answers whole starts fast: httpx loads only when a request must be
    sent, openpyxl only when a workbook is opened."""
    code = ("import sys, promptbatch_sheets.cli; "
            "print(sorted({'httpx', 'openpyxl'} & set(sys.modules)))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout
    assert loaded.strip() == "[]"


def test_transient_faults_are_retried(tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.config.faults = ["429:ms=150", "503", "malformed", "empty", "reset"]
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"], ["two"]])
    started = time.monotonic()
    result = cli("run", str(book), "--template", "{{ q }}", "--concurrency", "1",
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert time.monotonic() - started >= 0.15  # the server's retry-after-ms was honoured
    answers = [r[1] for r in read_csv(tmp_path / "b.promptbatch.csv")[1:]]
    assert answers == ["Answer: one", "Answer: two"]
    assert "5 retries" in result.output


def test_a_row_that_keeps_failing_gets_an_error_cell_and_a_rerun_repairs_it(
    tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTBATCH_RETRIES", "2")
    llm.config.fault_for = lambda prompt: "502" if prompt == "bad" else None
    book = write_csv(tmp_path / "b.csv", [["q"], ["good"], ["bad"], ["fine"]])
    out = tmp_path / "b.promptbatch.csv"
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    assert result.exit_code == 1
    rows = read_csv(out)
    assert rows[1][1] == "Answer: good" and rows[3][1] == "Answer: fine"
    assert rows[2][1].startswith("#ERROR: HTTP 502") and "gave up after 2 attempts" in rows[2][1]

    llm.config.fault_for = None
    llm.reset()
    shutil.copy(out, book)  # the user reruns on the file that holds the answers
    repaired = cli("run", str(book), "--template", "{{ q }}", "-o", str(out), *fake_model(llm))
    assert repaired.exit_code == 0
    assert [r["json"]["messages"][-1]["content"] for r in chat_requests(llm)] == ["bad"]
    assert read_csv(out)[2][1] == "Answer: bad"


def test_read_timeout_is_retried(tmp_path: Path, llm: FakeLLMServer,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTBATCH_TIMEOUT", "0.5")
    llm.config.faults = ["hang:s=3"]
    book = write_csv(tmp_path / "b.csv", [["q"], ["x"]])
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert read_csv(tmp_path / "b.promptbatch.csv")[1][1] == "Answer: x"


def test_answers_are_text_in_xlsx_even_when_they_look_like_formulas(
    tmp_path: Path, llm: FakeLLMServer, samples: Path
) -> None:
    llm.config.answer = lambda prompt: "=HYPERLINK(\"http://x\")" if "Mug" in prompt else "ok"
    book = tmp_path / "p.xlsx"
    shutil.copy(samples / "product_descriptions.xlsx", book)
    wb = openpyxl.load_workbook(book)
    wb.active["A4"] = "Mug"
    wb.save(book)
    result = cli("run", str(book), *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(tmp_path / "p.promptbatch.xlsx").active
    assert ws["E3"].value == "response"
    assert ws["E4"].value == "=HYPERLINK(\"http://x\")" and ws["E4"].data_type == "s"
    assert all(ws.cell(r, 5).value == "ok" for r in range(5, 16))


def test_support_tickets_keeps_answered_rows_and_resends_errors(
    tmp_path: Path, llm: FakeLLMServer, samples: Path
) -> None:
    out = tmp_path / "t.xlsx"
    result = cli("run", str(samples / "support_tickets.xlsx"), "-o", str(out), *fake_model(llm))
    assert result.exit_code == 0, result.output
    assert len(chat_requests(llm)) == 8
    ws = openpyxl.load_workbook(out)["Tickets"]
    assert ws["E3"].value == "billing" and ws["E7"].value == "bug"
    assert ws["E9"].value.startswith("Answer: ")  # the #ERROR row was sent again
    assert all(ws.cell(r, 5).value for r in range(2, 12))
    prompt = chat_requests(llm)[0]["json"]["messages"][-1]["content"]
    assert "T-1001" not in prompt and "Category:" in prompt  # the template named by the name


def test_conf_sheet_settings_reach_the_request(tmp_path: Path, llm: FakeLLMServer,
                                                samples: Path) -> None:
    out = tmp_path / "t.xlsx"
    result = cli("run", str(samples / "translation.xlsx"), "-o", str(out), *fake_model(llm))
    assert result.exit_code == 0, result.output
    body = chat_requests(llm)[0]["json"]
    assert body["temperature"] == 0 and body["max_tokens"] == 60
    ws = openpyxl.load_workbook(out)["Phrases"]
    assert ws["C1"].value == "Translation"
    assert all(ws.cell(r, 3).value.startswith("Answer: Translate into") for r in range(2, 12))
    assert ws["A7"].value == "=SUM is a spreadsheet function"  # other cells stay as they were


def test_csv_with_template_file(tmp_path: Path, llm: FakeLLMServer, samples: Path) -> None:
    out = tmp_path / "r.csv"
    result = cli("run", str(samples / "reviews.csv"), "--template-file",
                 str(samples / "reviews.prompt.txt"), "-o", str(out), *fake_model(llm))
    assert result.exit_code == 0, result.output
    rows = read_csv(out)
    assert rows[0][-1] == "response" and len(rows) == 11
    assert all(r[-1].startswith("Answer: Summarize this") for r in rows[1:])
    assert "\n" in rows[3][3]  # the quoted multi-line review survived the round trip


def test_anthropic_provider(tmp_path: Path, llm: FakeLLMServer,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-key")
    book = write_csv(tmp_path / "b.csv", [["q"], ["hello"]])
    result = cli("run", str(book), "--template", "{{ q }}", "--model",
                 "anthropic:claude-test", "--base-url", llm.root_url, "--system", "Be brief.")
    assert result.exit_code == 0, result.output
    sent = [r for r in llm.requests if r["path"] == "/v1/messages"]
    assert sent[0]["headers"]["x-api-key"] == "sk-ant-test-key"
    assert sent[0]["json"]["system"] == "Be brief." and sent[0]["json"]["max_tokens"] > 0
    assert read_csv(tmp_path / "b.promptbatch.csv")[1][1] == "Answer: hello"


def test_api_key_never_reaches_output_cache_or_messages(
    tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch, isolated_home: Path
) -> None:
    secret = "sk-very-secret-0123456789"
    monkeypatch.setenv("PROMPTBATCH_API_KEY", secret)
    monkeypatch.setenv("PROMPTBATCH_RETRIES", "1")
    llm.config.answer = lambda prompt: f"echo {secret}" if prompt == "leak" else "fine"
    llm.config.fault_for = lambda prompt: "503" if prompt == "fail" else None
    book = write_csv(tmp_path / "b.csv", [["q"], ["ok"], ["fail"]])
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    assert chat_requests(llm)[0]["headers"]["authorization"] == f"Bearer {secret}"
    assert secret not in result.output
    assert secret not in (tmp_path / "b.promptbatch.csv").read_text()
    db = sqlite3.connect(isolated_home / "answers.sqlite3")
    assert secret not in repr(db.execute("SELECT * FROM answers").fetchall())


def test_user_mistakes_get_one_clear_message_and_no_call(
    tmp_path: Path, llm: FakeLLMServer
) -> None:
    book = write_csv(tmp_path / "b.csv", [["Product Name"], ["mug"]])
    cases = {
        ("--template", "{{ produkt }}"): "Columns present: 'Product Name'",
        ("--template", "{{ product_name "): "line 1",
        ("--model", "gemini:pro"): "Unknown provider 'gemini'",
        ("--model", "openai:gpt-4o-mini"): "Set the environment variable OPENAI_API_KEY",
        ("--base-url", "ftp://x"): "not an http(s) address",
    }
    for extra, message in cases.items():
        args = ["run", str(book), "--template", "{{ product_name }}", *fake_model(llm)]
        if extra[0] == "--model":
            args = args[:-4] + list(extra)
        elif extra[0] == "--base-url":
            args[-1] = extra[1]
        else:
            args[3] = extra[1]
        result = cli(*args)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert "Traceback" not in result.output
    missing = cli("run", str(tmp_path / "nope.xlsx"))
    assert missing.exit_code == 2 and "does not exist" in missing.output
    sheet = cli("run", str(SAMPLES / "translation.xlsx"), "--sheet", "Nope")
    assert sheet.exit_code == 2 and "Sheets: 'Phrases', 'promptbatch.conf'" in sheet.output
    assert chat_requests(llm) == []


def test_error_values_in_variables_are_not_sent(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "b.xlsx"
    wb = openpyxl.Workbook()
    wb.active.title = "S"
    for row in (["Name", "Price"], ["mug", 3], ["cap", "#N/A"], ["pen", "#DIV/0!"]):
        wb.active.append(row)
    wb.save(book)
    result = cli("run", str(book), "--template", "{{ name }} costs {{ price }}", "-o",
                 str(tmp_path / "o.xlsx"), *fake_model(llm))
    assert result.exit_code == 1
    ws = openpyxl.load_workbook(tmp_path / "o.xlsx")["S"]
    assert ws["C2"].value == "Answer: mug costs 3"
    assert ws["C3"].value == "#ERROR: 'S'!B3 holds #N/A; fix that cell and run again"
    assert ws["C4"].value.startswith("#ERROR: 'S'!B4 holds #DIV/0!")
    assert len(chat_requests(llm)) == 1


def test_csv_writes_numbers_and_booleans_as_a_spreadsheet_reads_them(tmp_path: Path) -> None:
    book = tmp_path / "scores.csv"
    book.write_text("review\ngood\nbad\n", encoding="utf-8")
    surface = CsvSurface(book)
    surface.read()
    surface.write([(0, 1, "score"), (1, 1, 3.5), (2, 1, 4.0), (0, 2, "spam"), (1, 2, True),
                   (2, 2, False), (0, 3, "n"), (1, 3, 12), (2, 3, "007")])
    surface.close()
    with surface.output.open(encoding="utf-8", newline="") as handle:
        assert list(csv.reader(handle)) == [["review", "score", "spam", "n"],
                                            ["good", "3.5", "TRUE", "12"],
                                            ["bad", "4", "FALSE", "007"]]
