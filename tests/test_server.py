"""`promptbatch serve`: the HTTP API the Apps Script bridge calls, over real HTTP."""

from __future__ import annotations

import hmac
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette

from promptbatch_sheets import server
from promptbatch_sheets.errors import ConfigError
from promptbatch_sheets.settings import Settings
from tests.conftest import serve_process
from tests.fakes.llm_server import FakeLLMServer

TOKEN = "test-token-0123456789"
AUTH = {"authorization": f"Bearer {TOKEN}"}
ROWS = {"template": "Describe {{ product }}.", "headers": ["Product"],
        "rows": [["kettle"], ["lamp"], [""], ["kettle"]]}


@contextmanager
def running(app: Starlette) -> Iterator[str]:
    """Serve ``app`` with uvicorn on 127.0.0.1 and a free port, in a thread."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
    live = uvicorn.Server(config)
    thread = threading.Thread(target=live.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not live.started:
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    port = live.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        live.should_exit = True
        thread.join(10)


def make_app(llm: FakeLLMServer, tmp_path: Path, **settings: Any) -> Starlette:
    chosen = Settings(model="openai-compatible:fake", base_url=llm.base_url, **settings)
    return server.create_app(TOKEN, chosen, tmp_path / "answers.sqlite3")


@pytest.fixture
def api(llm: FakeLLMServer, tmp_path: Path) -> Iterator[httpx.Client]:
    with running(make_app(llm, tmp_path)) as url, httpx.Client(base_url=url,
                                                              timeout=30) as client:
        yield client


def test_token_is_made_once_and_kept_private(isolated_home: Path) -> None:
    token, created = server.load_token()
    assert created and len(token) >= 40
    path = server.token_path()
    assert path.parent == isolated_home
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert server.load_token() == (token, False)


def test_every_route_needs_the_token(api: httpx.Client) -> None:
    for headers in ({}, {"authorization": "Bearer nope"}, {"authorization": f"Basic {TOKEN}"},
                    {"authorization": TOKEN}):
        r = api.post("/v1/complete", json=ROWS, headers=headers)
        assert r.status_code == 401, headers
        assert r.headers["www-authenticate"] == "Bearer"
        assert api.get("/v1/health", headers=headers).status_code == 401
    health = api.get("/v1/health", headers=AUTH).json()
    assert (health["ok"], health["model"]) == (True, "openai-compatible:fake")
    assert health["server"].startswith("http://127.0.0.1:")  # the formula's cache key has it


def test_token_is_compared_in_constant_time(api: httpx.Client,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert api.get("/v1/health", headers={"authorization": "Bearer guess"}).status_code == 401
    assert api.get("/v1/health", headers=AUTH).status_code == 200
    assert calls == [(b"guess", TOKEN.encode()), (TOKEN.encode(), TOKEN.encode())]


def test_oversized_bodies_are_refused(api: httpx.Client, llm: FakeLLMServer) -> None:
    big = {**ROWS, "rows": [["x" * 1000]] * 6000}
    r = api.post("/v1/complete", json=big, headers=AUTH)
    assert r.status_code == 413 and "5 MB" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it streams in
        yield b'{"rows": ['
        for _ in range(6000):
            yield b'["' + b"x" * 1000 + b'"],'
    r = api.post("/v1/complete", content=chunks(), headers=AUTH)
    assert r.status_code == 413
    assert llm.requests == []


@pytest.mark.parametrize("extra", [
    {"base_url": "http://evil.example/v1"},
    {"model": "openai:gpt-4o"},
    {"options": {"base_url": "http://evil.example/v1"}},
    {"options": {"model": "openai:gpt-4o"}},
    {"options": {"temperature": 7}},
])
def test_a_request_cannot_choose_the_server_or_model(api: httpx.Client, llm: FakeLLMServer,
                                                     extra: dict[str, Any]) -> None:
    r = api.post("/v1/complete", json={**ROWS, **extra}, headers=AUTH)
    assert r.status_code == 400
    assert llm.requests == []


def test_answers_then_the_cache_answers_with_no_model_call(api: httpx.Client,
                                                           llm: FakeLLMServer) -> None:
    first = api.post("/v1/complete", json=ROWS, headers=AUTH).json()
    assert first["answers"] == ["Answer: Describe kettle.", "Answer: Describe lamp.", "",
                                "Answer: Describe kettle."]
    assert (first["cached"], first["answered"], first["pending"]) == (0, 3, 0)
    assert llm.count_ok == 2  # the duplicate row is asked once
    second = api.post("/v1/complete", json=ROWS, headers=AUTH).json()
    assert second["answers"] == first["answers"]
    assert (second["cached"], second["answered"]) == (3, 0)
    assert llm.count_ok == 2 and len(llm.requests) == 2


def test_options_are_part_of_the_question(api: httpx.Client, llm: FakeLLMServer) -> None:
    body = {**ROWS, "rows": [["kettle"]], "options": {"temperature": 0.2, "max_tokens": 50,
                                                       "system": "Be brief."}}
    assert api.post("/v1/complete", json=body, headers=AUTH).json()["answered"] == 1
    sent = llm.requests[-1]["json"]
    assert (sent["temperature"], sent["max_tokens"]) == (0.2, 50)
    assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    assert api.post("/v1/complete", json=ROWS, headers=AUTH).json()["cached"] == 0


def test_a_bad_template_is_a_400_with_the_reason(api: httpx.Client) -> None:
    r = api.post("/v1/complete", json={**ROWS, "template": "Hi {{ product"}, headers=AUTH)
    assert r.status_code == 400 and "Template syntax error" in r.json()["error"]
    r = api.post("/v1/complete", json={**ROWS, "template": "{{ colour }}"}, headers=AUTH)
    assert r.status_code == 400 and "{{ colour }}" in r.json()["error"]
    r = api.post("/v1/complete", content=b"{not json", headers=AUTH)
    assert r.status_code == 400 and "JSON" in r.json()["error"]


def test_row_failures_are_error_cells(api: httpx.Client, llm: FakeLLMServer) -> None:
    llm.config.fault_for = lambda prompt: "500" if "FAIL" in prompt else None
    body = {"template": "{{ product }}", "headers": ["Product"],
            "rows": [["FAIL"], ["#N/A"], ["fine"]]}
    data = api.post("/v1/complete", json=body, headers=AUTH).json()
    assert data["answers"][0].startswith("#ERROR: ")
    assert data["answers"][1] == ("#ERROR: 'PROMPTBATCH range'!A3 holds #N/A; fix that cell "
                                  "and run again")
    assert data["answers"][2] == "Answer: fine"
    assert (data["failed"], data["answered"]) == (2, 1)
    assert llm.requests and not any("#N/A" in str(r["json"]) for r in llm.requests)


def test_a_template_that_fails_on_a_row_is_a_400_before_any_call(api: httpx.Client,
                                                                 llm: FakeLLMServer) -> None:
    body = {"template": "{{ product }}{% if product == 'zero' %}{{ 1 // 0 }}{% endif %}",
            "headers": ["Product"], "rows": [["one"], ["zero"]]}
    reply = api.post("/v1/complete", json=body, headers=AUTH)
    assert reply.status_code == 400
    assert reply.json()["error"] == (
        "The template in the request's template field failed on row 3 ('PROMPTBATCH "
        "range'!B3): ZeroDivisionError: integer division or modulo by zero")
    assert llm.requests == []


def test_a_wait_returns_what_is_ready_and_keeps_it(api: httpx.Client,
                                                   llm: FakeLLMServer) -> None:
    llm.config.latency_median_s = 0.4
    rows = 400  # more than the first wave and its growth can answer in the second waited
    body = {**ROWS, "rows": [[f"item {i}"] for i in range(rows)], "wait_seconds": 1}
    data = api.post("/v1/complete", json=body, headers=AUTH).json()
    done = [a for a in data["answers"] if a is not None]
    assert 0 < len(done) < rows and data["pending"] == rows - len(done)
    llm.config.latency_median_s = 0
    again = api.post("/v1/complete", json={**body, "wait_seconds": 30}, headers=AUTH).json()
    assert again["pending"] == 0 and again["cached"] >= len(done)


def test_preview_is_the_command_lines_and_calls_no_model(api: httpx.Client,
                                                        llm: FakeLLMServer) -> None:
    api.post("/v1/complete", json={**ROWS, "rows": [["kettle"]]}, headers=AUTH)
    sent = len(llm.requests)
    grid = [["template", "Describe {{ product }}."], ["Product", "response"], ["kettle", ""],
            ["lamp", ""], ["mug", ""], ["mug", ""], ["cup", "kept"]]
    body = {"sheet": "Items", "grid": grid, "first": 2, "conf": [["system", "Be brief."]]}
    data = api.post("/v1/preview", json=body, headers=AUTH).json()
    assert len(llm.requests) == sent
    assert (data["rows"], data["kept"], data["cached"], data["to_send"]) == (5, 1, 0, 4)
    assert data["unique_prompts"] == 3 and data["sampled"] is False
    assert data["first_prompts"] == [[2, "Describe kettle.", None], [3, "Describe lamp.", None]]
    assert data["steps"] == [{"name": "response", "origin": "'Items'!B1", "uses": [],
                              "outputs": [{"header": "response", "exists": True,
                                           "cell": "'Items'!B2"}]}]
    estimate = data["estimate"]
    assert estimate["completion_tokens"] == 3 * 60 and estimate["cost_usd"] is None
    # each distinct prompt once, the system prompt counted (11 tokens a request with one)
    assert estimate["prompt_tokens"] == round(3 * 11 + sum(
        len(p) + len("Be brief.") for p in ["Describe kettle.", "Describe lamp.",
                                             "Describe mug."]) / 4)
    cut = api.post("/v1/preview", json={**body, "grid": grid[:4], "last_row": 21},
                   headers=AUTH).json()
    assert (cut["sampled"], cut["rows"], cut["to_send"]) == (True, 20, 20)


def test_locate_reads_the_sheet_by_the_cli_rules(api: httpx.Client) -> None:
    grid = [["template", "Describe {{ product }}"], [], ["Product", "Price", "Response"],
            ["kettle", "25", ""]]
    data = api.post("/v1/locate", json={"sheet": "Items", "grid": grid}, headers=AUTH).json()
    (step,) = data.pop("steps")
    assert data == {"header_row": 2, "columns": [[0, "Product"], [1, "Price"]], "options": {},
                    "skip_hidden": False}
    assert (step["template"], step["origin"]) == ("Describe {{ product }}", "'Items'!B1")
    assert step["outputs"] == [{"col": 2, "header": "Response", "exists": True}]
    named = {"sheet": "Items", "grid": grid[2:], "template": "{{ price }}", "origin": "name"}
    data = api.post("/v1/locate", json=named, headers=AUTH).json()
    assert (data["steps"][0]["template"], data["header_row"]) == ("{{ price }}", 0)
    r = api.post("/v1/locate", json={"sheet": "Items", "grid": [["a"]]}, headers=AUTH)
    assert r.status_code == 400 and "No prompt template" in r.json()["error"]


def test_a_missing_api_key_stops_the_server_at_start(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        server.create_app(TOKEN, Settings(model="openai:gpt-4o-mini"), tmp_path / "a.sqlite3")


def test_the_serve_command_prints_its_port_and_token(llm: FakeLLMServer,
                                                     isolated_home: Path) -> None:
    with serve_process(llm) as (_, url, token):
        assert token == (isolated_home / "serve-token").read_text().strip()
        reply = httpx.post(f"{url}/v1/complete", json=ROWS,
                           headers={"authorization": f"Bearer {token}"}, timeout=30)
        assert reply.json()["answers"][0] == "Answer: Describe kettle."
