"""A workbook never redirects a key, and the cache never serves one server's answer for another.

Two loopback servers in every test: ``provider`` plays the user's provider (its own address is
set the way a user's machine would see it: the provider table's default address points there),
``hostile`` plays the server a workbook names. The hostile one must get no request and no key.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest

from promptbatch_sheets import providers, server
from promptbatch_sheets.settings import Settings
from promptbatch_sheets.store.migrations import MIGRATIONS
from promptbatch_sheets.surfaces.excel import run_from_ribbon
from promptbatch_sheets.udfs import PROMPTBATCH
from tests.conftest import cli
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer
from tests.test_excel_surface import _small_book, actions, remote_book, written
from tests.test_gsheets import ID, api, key  # noqa: F401 - the fake Sheets API fixtures
from tests.test_server import AUTH, TOKEN, running

SECRET = "sk-user-secret-0123456789abcdef"
FIX = ("A workbook cannot choose where your keys go: if you trust that server, pass "
       "--base-url {url} yourself (from Excel: set model and base_url in your config file).")


@pytest.fixture
def provider(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    """The user's provider: OpenAI's and Anthropic's own addresses lead here."""
    with FakeLLMServer(FakeLLMConfig(answer=lambda p: f"provider: {p}")) as srv:
        monkeypatch.setitem(providers.KINDS, "openai", replace(
            providers.KINDS["openai"], default_base_url=srv.base_url))
        monkeypatch.setitem(providers.KINDS, "anthropic", replace(
            providers.KINDS["anthropic"], default_base_url=srv.root_url))
        yield srv


@pytest.fixture
def hostile() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig(answer=lambda p: f"hostile: {p}")) as srv:
        yield srv


def book(path: Path, conf: list[list[Any]], rows: tuple[str, ...] = ("Oslo",)) -> Path:
    """A sheet with a template and a table, and a promptbatch.conf sheet holding ``conf``
    below a ``key | value`` header and a temperature row: ``conf`` starts at row 3."""
    wb = openpyxl.Workbook()
    wb.active.title = "Data"
    wb.active.append(["template", "Tell me about {{ city }}."])
    wb.active.append(["city"])
    for row in rows:
        wb.active.append([row])
    sheet = wb.create_sheet("promptbatch.conf")
    for line in [["key", "value"], ["temperature", 0], *conf]:
        sheet.append(line)
    wb.save(path)
    return path


def key_seen(srv: FakeLLMServer) -> bool:
    """The secret anywhere in what the server received: a header or a body."""
    return any(SECRET in json.dumps(r["headers"]) + json.dumps(r["json"]) for r in srv.requests)


def answers(path: Path) -> list[Any]:
    ws = openpyxl.load_workbook(path)["Data"]
    return [ws.cell(r, 2).value for r in range(3, ws.max_row + 1)]


def refused(result: Any, message: str, out: Path, *servers: FakeLLMServer) -> None:
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == " ".join(f"Error: {message}".split())
    assert not out.exists()
    for srv in servers:
        assert srv.requests == [] and not key_seen(srv)


# --------------------------------------------------------------------------- item 1: keys


@pytest.mark.parametrize(("model", "variable"), [
    ("openai:gpt-4o-mini", "OPENAI_API_KEY"),
    ("anthropic:claude-haiku-4-5", "ANTHROPIC_API_KEY"),
    ("openai-compatible:mine", "PROMPTBATCH_API_KEY"),
])
def test_a_conf_base_url_cannot_take_the_users_key(
    tmp_path: Path, provider: FakeLLMServer, hostile: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch, model: str, variable: str,
) -> None:
    monkeypatch.setenv(variable, SECRET)
    url = hostile.root_url if model.startswith("anthropic") else hostile.base_url
    path = book(tmp_path / "b.xlsx", [["base_url", url]])
    out = tmp_path / "out.xlsx"
    message = (f"'promptbatch.conf'!B3 sets base_url {url}, which would send your {variable} "
               f"to {url}. {FIX.format(url=url)}")
    refused(cli("run", str(path), "-m", model, "-o", str(out)), message, out, provider, hostile)
    refused(cli("preview", str(path), "-m", model), message, out, provider, hostile)

    # The fix the message names: the user gives the address, and the run goes there.
    done = cli("run", str(path), "-m", model, "--base-url", url, "-o", str(out))
    assert done.exit_code == 0, done.output
    assert answers(out) == ["hostile: Tell me about Oslo."] and key_seen(hostile)


def test_an_ollama_key_from_the_config_file_stays_home(
    tmp_path: Path, hostile: FakeLLMServer, isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeLLMServer() as ollama:
        monkeypatch.setenv("OLLAMA_HOST", ollama.root_url.removeprefix("http://"))
        isolated_home.mkdir(parents=True, exist_ok=True)
        (isolated_home / "config.toml").write_text(f'[keys]\nollama = "{SECRET}"\n')
        path = book(tmp_path / "b.xlsx", [["model", "ollama:llama3.2"],
                                          ["base_url", hostile.base_url]])
        out = tmp_path / "out.xlsx"
        refused(cli("run", str(path), "-o", str(out)),
                f"'promptbatch.conf'!B3 sets model ollama:llama3.2 and 'promptbatch.conf'!B4 "
                f"sets base_url {hostile.base_url}, which would send your ollama key to "
                f"{hostile.base_url}. {FIX.format(url=hostile.base_url)}", out, hostile, ollama)
        # The workbook may choose Ollama itself: the key goes to the user's OLLAMA_HOST.
        only_model = book(tmp_path / "m.xlsx", [["model", "ollama:llama3.2"]])
        assert cli("run", str(only_model), "-o", str(out)).exit_code == 0
        assert key_seen(ollama) and hostile.requests == []


def test_a_conf_model_cannot_send_another_providers_key_to_the_users_server(
    tmp_path: Path, provider: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The user's vLLM (PROMPTBATCH_BASE_URL) is no place for their Anthropic key."""
    with FakeLLMServer() as vllm:
        monkeypatch.setenv("PROMPTBATCH_MODEL", "openai-compatible:mine")
        monkeypatch.setenv("PROMPTBATCH_BASE_URL", vllm.base_url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
        path = book(tmp_path / "b.xlsx", [["model", "anthropic:claude-haiku-4-5"]])
        out = tmp_path / "out.xlsx"
        refused(cli("run", str(path), "-o", str(out)),
                f"'promptbatch.conf'!B3 sets model anthropic:claude-haiku-4-5, which would send "
                f"your ANTHROPIC_API_KEY to {vllm.base_url} (your base_url, given for "
                f"openai-compatible:mine). {FIX.format(url=vllm.base_url)}", out, vllm, provider)


def test_a_conf_model_of_a_provider_at_its_own_address_is_followed(
    tmp_path: Path, provider: FakeLLMServer, hostile: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    path = book(tmp_path / "b.xlsx", [["model", "openai:gpt-4o-mini"]])
    out = tmp_path / "out.xlsx"
    done = cli("run", str(path), "-o", str(out))
    assert done.exit_code == 0, done.output
    assert answers(out) == ["provider: Tell me about Oslo."]
    assert provider.requests[0]["headers"]["authorization"] == f"Bearer {SECRET}"
    assert f"│ server           │ {provider.base_url}" in done.output


def test_a_keyless_server_the_workbook_names_gets_no_key_and_is_shown(
    tmp_path: Path, hostile: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PROMPTBATCH_API_KEY goes only to an address the user gave; without one, a workbook may
    name its own server, and preview says which cell did."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    path = book(tmp_path / "b.xlsx", [["model", "openai-compatible:theirs"],
                                      ["base_url", hostile.base_url]])
    shown = cli("preview", str(path))
    assert shown.exit_code == 0, shown.output
    assert f"Server {hostile.base_url} (set by 'promptbatch.conf'!B4)" in shown.output
    out = tmp_path / "out.xlsx"
    done = cli("run", str(path), "-o", str(out))
    assert done.exit_code == 0, done.output
    assert answers(out) == ["hostile: Tell me about Oslo."]
    assert hostile.requests and not key_seen(hostile)
    assert all("authorization" not in r["headers"] for r in hostile.requests)


def test_the_embedded_model_is_shown_as_local(tmp_path: Path, hostile: FakeLLMServer) -> None:
    path = book(tmp_path / "b.xlsx", [["base_url", hostile.base_url]])
    shown = cli("preview", str(path))
    assert shown.exit_code == 0, shown.output
    assert "Server local (the embedded model on this computer)" in shown.output


def test_a_google_sheet_conf_base_url_is_refused(
    request: pytest.FixtureRequest, provider: FakeLLMServer, hostile: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sheets, credentials = request.getfixturevalue("api"), request.getfixturevalue("key")
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    sheets.add(ID, {"Sheet1": [["template", "Say {{ w }}"], ["w"], ["hi"]],
                 "promptbatch.conf": [["key", "value"], ["base_url", hostile.base_url]]})
    result = cli("run", f"gsheet:{ID}/Sheet1", "--credentials", credentials, "-m",
                 "openai:gpt-4o-mini")
    assert result.exit_code == 2, result.output
    assert " ".join(result.output.split()) == " ".join(
        f"Error: 'promptbatch.conf'!B2 sets base_url {hostile.base_url}, which would send your "
        f"OPENAI_API_KEY to {hostile.base_url}. {FIX.format(url=hostile.base_url)}".split())
    assert sheets.writes() == [] and hostile.requests == [] and provider.requests == []


def test_the_excel_ribbon_refuses_a_conf_base_url(
    provider: FakeLLMServer, hostile: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("PROMPTBATCH_MODEL", "openai:gpt-4o-mini")
    data = _small_book([["template", "Say {{ word }}"], ["word", ""], ["hi", ""]])
    data["sheets"].append({"name": "promptbatch.conf", "pictures": [], "tables": [],
                           "values": [["key", "value"], ["", ""],
                                      ["base_url", hostile.base_url]]})
    excel = remote_book(data)
    run_from_ribbon(excel)
    (alert,) = [a["args"][0] for a in actions(excel, "alert")]
    assert alert == (f"'promptbatch.conf'!B3 sets base_url {hostile.base_url}, which would "
                     f"send your OPENAI_API_KEY to {hostile.base_url}. "
                     + FIX.format(url=hostile.base_url))
    assert written(excel) == {} and hostile.requests == [] and provider.requests == []


def test_a_formulas_model_argument_cannot_send_a_key_to_the_users_other_server(
    provider: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    with FakeLLMServer(FakeLLMConfig(answer=lambda p: f"vllm: {p}")) as vllm:
        monkeypatch.setenv("PROMPTBATCH_MODEL", "openai-compatible:mine")
        monkeypatch.setenv("PROMPTBATCH_BASE_URL", vllm.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", SECRET)
        cell = PROMPTBATCH("Say {{ w }}", "hi", None, "openai:gpt-4o-mini")
        assert cell == (
            f"#ERROR: The model argument of =PROMPTBATCH sets model openai:gpt-4o-mini, which "
            f"would send your OPENAI_API_KEY to {vllm.base_url} (your base_url, given for "
            f"openai-compatible:mine). {FIX.format(url=vllm.base_url)}")
        assert vllm.requests == [] and provider.requests == []
        # Another model on the user's own server is the user's choice to allow.
        assert PROMPTBATCH("Say {{ w }}", "hi", None, "openai-compatible:other") == "vllm: Say hi"


def test_serve_ignores_a_conf_sheets_model_and_base_url(
    tmp_path: Path, provider: FakeLLMServer, hostile: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    app = server.create_app(TOKEN, Settings(model="openai:gpt-4o-mini"),
                            tmp_path / "answers.sqlite3")
    conf = [["model", "openai:gpt-4o"], ["base_url", hostile.base_url]]
    with running(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        found = client.post("/v1/locate", json={"sheet": "S", "conf": conf, "grid": [
            ["template", "Say {{ w }}"], ["w"], ["hi"]]}, headers=AUTH)
        assert found.status_code == 200 and found.json()["options"] == {}
        done = client.post("/v1/complete", json={"template": "Say {{ w }}", "headers": ["w"],
                                                 "rows": [["hi"]]}, headers=AUTH)
    assert done.json()["answers"] == ["provider: Say hi"]
    assert hostile.requests == [] and key_seen(provider)


# --------------------------------------------------------------------------- item 2: cache


def test_an_answer_from_one_server_is_not_served_for_another(
    tmp_path: Path, provider: FakeLLMServer, hostile: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A planted server's answer, cached through --base-url, is never the provider's."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    path = book(tmp_path / "b.xlsx", [])
    planted, real, again = (tmp_path / f"{n}.xlsx" for n in ("planted", "real", "again"))
    assert cli("run", str(path), "-m", "openai:gpt-4o-mini", "--base-url", hostile.base_url,
               "-o", str(planted)).exit_code == 0
    assert cli("run", str(path), "-m", "openai:gpt-4o-mini", "-o", str(real)).exit_code == 0
    assert answers(real) == ["provider: Tell me about Oslo."] and len(provider.requests) == 1
    # each server's answer stays cached for that server
    assert cli("run", str(path), "-m", "openai:gpt-4o-mini", "--base-url", hostile.base_url,
               "-o", str(again)).exit_code == 0
    assert answers(again) == ["hostile: Tell me about Oslo."] and len(hostile.requests) == 1


def test_a_formula_and_the_sheets_backend_key_answers_by_server_too(
    tmp_path: Path, provider: FakeLLMServer, hostile: FakeLLMServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("PROMPTBATCH_MODEL", "openai:gpt-4o-mini")
    monkeypatch.setenv("PROMPTBATCH_BASE_URL", hostile.base_url)
    assert PROMPTBATCH("Say {{ w }}", "hi") == "hostile: Say hi"
    monkeypatch.delenv("PROMPTBATCH_BASE_URL")
    assert PROMPTBATCH("Say {{ w }}", "hi") == "provider: Say hi"
    app = server.create_app(TOKEN, Settings(model="openai:gpt-4o-mini",
                                            base_url=hostile.base_url), None)
    with running(app) as url:
        done = httpx.post(f"{url}/v1/complete", json={
            "template": "Say {{ w }}", "headers": ["w"], "rows": [["yo"], ["hi"]]},
            headers=AUTH, timeout=30).json()
    assert done["answers"] == ["hostile: Say yo", "hostile: Say hi"]
    assert (done["cached"], len(hostile.requests)) == (1, 2)


def _old_key(label: str, prompt: str) -> str:
    """The key as promptbatch computed it before servers were part of it."""
    material = json.dumps({"model": label, "temperature": 0.0, "max_tokens": None,
                           "system": None, "prompt": prompt}, sort_keys=True,
                          ensure_ascii=False)
    return hashlib.sha256(material.encode()).hexdigest()


def test_an_old_cache_keeps_its_answers_for_the_providers_own_address(
    tmp_path: Path, provider: FakeLLMServer, isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A cache file from before (schema 3): its answers for OpenAI's own address stay valid;
    those its batch journal shows came from another server are dropped, not served."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    isolated_home.mkdir(parents=True)
    db = sqlite3.connect(isolated_home / "answers.sqlite3")
    for migration in MIGRATIONS[:3]:
        migration(db)
    db.execute("PRAGMA user_version=3")
    kept, planted = (_old_key("openai:gpt-4o-mini", f"Tell me about {c}.")
                     for c in ("Oslo", "Rome"))
    db.executemany("INSERT INTO answers VALUES (?, 'openai:gpt-4o-mini', ?, 1, 1, 'stop', 0, 9)",
                   [(kept, "cached long ago"), (planted, "planted by a proxy")])
    db.execute("INSERT INTO batch_jobs VALUES ('batch_1', 'openai', 'openai:gpt-4o-mini', "
               "'http://127.0.0.1:9/v1', 0, 'completed', 1, '{}', NULL, 1, NULL)")
    db.execute("INSERT INTO batch_keys VALUES ('batch_1', ?, 9, NULL)", (planted,))
    db.commit()
    db.close()
    path = book(tmp_path / "b.xlsx", [], rows=("Oslo", "Rome"))
    out = tmp_path / "out.xlsx"
    done = cli("run", str(path), "-m", "openai:gpt-4o-mini", "-o", str(out))
    assert done.exit_code == 0, done.output
    assert answers(out) == ["cached long ago", "provider: Tell me about Rome."]
    assert provider.prompts == ["Tell me about Rome."]
    listed = " ".join(cli("status").output.split())
    assert "batch_1 openai:gpt-4o-mini at http://127.0.0.1:9/v1" in listed
    assert "sent before answers were kept apart by server; not used" in listed


def test_a_batch_is_collected_only_for_the_server_it_was_sent_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = FakeBatchConfig(answer=lambda prompt: f"A: {prompt}")
    with FakeBatchServer(config) as first, FakeBatchServer() as second:
        path = book(tmp_path / "b.xlsx", [])
        out = tmp_path / "out.xlsx"
        sent = cli("run", str(path), "-m", "openai:gpt-4o-mini", "--base-url", first.base_url,
                   "--via", "batch", "-o", str(out))
        assert sent.exit_code == 0, sent.output
        assert f"(to {first.base_url})" in " ".join(sent.output.split())
        first.finish()
        other = cli("collect", str(path), "-m", "openai:gpt-4o-mini", "--base-url",
                    second.base_url, "-o", str(out))
        assert other.exit_code == 0, other.output
        assert "1 rows were never sent" in " ".join(other.output.split())
        assert second.requests == [] and answers(out) == [None]
        polls = len(first.requests)
        done = cli("collect", str(path), "-m", "openai:gpt-4o-mini", "--base-url",
                   first.base_url, "-o", str(out))
        assert done.exit_code == 0 and answers(out) == ["A: Tell me about Oslo."]
        assert len(first.requests) > polls
