"""``promptbatch app``'s routes without a browser: the one-time token, the cookie, the Host
and Origin checks, bounded uploads, and a pasted table previewed as the CLI reads it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from promptbatch_sheets.server import web
from promptbatch_sheets.settings import resolve
from tests.conftest import fake_model
from tests.fakes.llm_server import FakeLLMServer

HOME = "http://127.0.0.1:8000"
ORIGIN = {"origin": HOME}


@pytest.fixture
def client(llm: FakeLLMServer) -> Iterator[TestClient]:
    flags = dict(zip(("model", "base_url"), fake_model(llm)[1::2], strict=True))
    app = web.create_web_app(resolve(flags, {}), "secret-token")
    with TestClient(app, base_url=HOME, follow_redirects=False) as test_client:
        yield test_client


def test_the_token_works_once_and_becomes_a_strict_cookie(client: TestClient) -> None:
    assert client.get("/").status_code == 403
    assert client.get("/?token=wrong").status_code == 403
    first = client.get("/?token=secret-token")
    assert first.status_code == 303 and first.headers["location"] == "/"
    cookie = first.headers["set-cookie"]
    assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
    page = client.get("/")
    assert page.status_code == 200 and "/static/panel.js" in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    client.cookies.clear()
    assert client.get("/?token=secret-token").status_code == 403  # used up


def test_other_hosts_origins_and_files_get_nothing(client: TestClient) -> None:
    client.get("/?token=secret-token")
    assert client.get("/", headers={"host": "evil.example:8000"}).status_code == 421
    assert client.get("/", headers={"host": "127.0.0.1:9999"}).status_code == 421
    assert client.post("/api/preview", json={}).status_code == 403  # no Origin
    assert client.post("/api/preview", json={},
                       headers={"origin": "http://evil.example"}).status_code == 403
    assert client.get("/static/panel.js").headers["content-type"].startswith("text/javascript")
    assert client.get("/static/web.py").status_code == 404


def test_uploads_are_bounded_and_must_be_workbooks(client: TestClient,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    client.get("/?token=secret-token")
    monkeypatch.setattr(web, "MAX_UPLOAD", 1000)
    big = client.post("/api/upload?name=b.csv", content=b"x" * 2000, headers=ORIGIN)
    assert big.status_code == 413
    odd = client.post("/api/upload?name=notes.exe", content=b"x", headers=ORIGIN)
    assert odd.status_code == 400 and "choose an .xlsx" in odd.json()["error"]


def test_a_pasted_table_is_previewed_and_a_wrong_variable_gets_the_cli_message(
        client: TestClient) -> None:
    client.get("/?token=secret-token")
    table = "Product Name\tPrice\nMug\t3\n\"Cap, \"\"blue\"\"\"\t4\n"
    pasted = client.post("/api/paste", json={"template": "<system>Be brief.</system>"
                                                         "Describe {{ product_name }}.",
                                             "table": table}, headers=ORIGIN)
    assert pasted.status_code == 200
    shown = client.post("/api/preview", json={"variations": 2}, headers=ORIGIN).json()
    assert [c["header"] for c in shown["columns"]] == ["Product Name", "Price"]
    assert shown["outputs"] == ["response 1", "response 2"]
    assert shown["prompts"][0] == {"row": 2, "prompt": "Describe Mug.", "system": "Be brief.",
                                   "system_origin": "the <system> block of the pasted template"}
    assert shown["counts"]["to_send"] == 4
    client.post("/api/paste", json={"template": "Describe {{ produkt }}.", "table": table},
                headers=ORIGIN)
    wrong = client.post("/api/preview", json={}, headers=ORIGIN)
    assert wrong.status_code == 400
    assert "uses {{ produkt }}, but the header row has no such column. Columns present: " \
           "'Product Name' ({{ product_name }})" in wrong.json()["error"]
