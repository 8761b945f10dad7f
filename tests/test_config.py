"""Where settings and keys come from, and in which order they win."""

from __future__ import annotations

import csv
import stat
from pathlib import Path

import openpyxl
import pytest
from typer.testing import CliRunner

from promptbatch_sheets.cli import app
from tests.conftest import cli, fake_model
from tests.fakes.llm_server import FakeLLMServer


def one_row_csv(tmp_path: Path) -> Path:
    book = tmp_path / "b.csv"
    book.write_text("q\nhello\n", encoding="utf-8")
    return book


def test_keys_set_writes_a_private_file_and_the_key_is_used(
    tmp_path: Path, llm: FakeLLMServer, isolated_home: Path
) -> None:
    result = CliRunner().invoke(app, ["keys", "set", "openai"], input="sk-from-file\n")
    assert result.exit_code == 0, result.output
    config = isolated_home / "config.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert "sk-from-file" not in result.output
    run = cli("run", str(one_row_csv(tmp_path)), "--template", "{{ q }}", "--model",
              "openai:gpt-4o-mini", "--base-url", llm.base_url)
    assert run.exit_code == 0, run.output
    assert llm.requests[0]["headers"]["authorization"] == "Bearer sk-from-file"


def test_flags_beat_conf_sheet_beat_env_beat_user_config(
    tmp_path: Path, llm: FakeLLMServer, isolated_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    isolated_home.mkdir(parents=True, exist_ok=True)
    (isolated_home / "config.toml").write_text(
        '[defaults]\nmodel = "openai-compatible:from-file"\nmax_tokens = 11\n'
        'temperature = 0.1\nsystem = "file"\n', encoding="utf-8")
    monkeypatch.setenv("PROMPTBATCH_BASE_URL", llm.base_url)
    monkeypatch.setenv("PROMPTBATCH_MAX_TOKENS", "22")
    monkeypatch.setenv("PROMPTBATCH_TEMPERATURE", "0.2")
    book = tmp_path / "b.xlsx"
    wb = openpyxl.Workbook()
    wb.active.append(["q"])
    wb.active.append(["hello"])
    conf = wb.create_sheet("promptbatch.conf")
    conf.append(["key", "value"])
    conf.append(["temperature", 0.3])
    conf.append(["template", "Say {{ q }}"])
    wb.save(book)
    result = cli("run", str(book), "--system", "flag")
    assert result.exit_code == 0, result.output
    body = llm.requests[0]["json"]
    assert body["model"] == "from-file" and body["max_tokens"] == 22
    assert body["temperature"] == 0.3 and body["messages"][0]["content"] == "flag"
    assert body["messages"][-1]["content"] == "Say hello"


def test_bad_setting_names_where_it_came_from(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTBATCH_CONCURRENCY", "lots")
    result = cli("preview", str(one_row_csv(tmp_path)), "--template", "{{ q }}")
    assert result.exit_code == 2
    assert "'concurrency' in the environment (PROMPTBATCH_*) must be a number" in result.output


def test_ollama_uses_ollama_host(tmp_path: Path, llm: FakeLLMServer,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", llm.root_url.removeprefix("http://"))
    result = cli("run", str(one_row_csv(tmp_path)), "--template", "{{ q }}", "--model",
                 "ollama:llama3.2")
    assert result.exit_code == 0, result.output
    assert llm.requests[0]["json"]["model"] == "llama3.2"
    assert "authorization" not in llm.requests[0]["headers"]


def test_template_cell_and_output_column_flags(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "b.xlsx"
    wb = openpyxl.Workbook()
    wb.active.title = "Data"
    wb.active.append(["City", "Summary"])
    wb.active.append(["Oslo", None])
    wb.create_sheet("Prompts")["C3"] = "Tell me about {{ city }}."
    wb.save(book)
    out = tmp_path / "o.xlsx"
    result = cli("run", str(book), "--template-cell", "'Prompts'!C3", "--output-column",
                 "Summary", "-o", str(out), *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(out)["Data"]
    assert ws["B2"].value == "Answer: Tell me about Oslo." and ws["C1"].value is None


def test_csv_answers_keep_the_files_dialect(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = tmp_path / "b.csv"
    book.write_text("name;colour\nmug;red\n", encoding="utf-8")
    result = cli("run", str(book), "--template", "{{ colour }} {{ name }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    with (tmp_path / "b.promptbatch.csv").open(newline="") as handle:
        assert list(csv.reader(handle, delimiter=";")) == [
            ["name", "colour", "response"], ["mug", "red", "Answer: red mug"]]
