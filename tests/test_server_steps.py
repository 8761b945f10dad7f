"""`promptbatch serve` for sheets with several prompt columns and structured answers: the
layout the script gets from /v1/locate, and typed answers from the formula's /v1/complete."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.test_server import AUTH, make_app, running

CHAINED = [["Templates", "", "Summarize {{ feedback }}", "Reply to {{ customer }}: {{ summary }}"],
           ["Customer", "Feedback", "summary", "reply"],
           ["Ana", "logs me out", "", ""]]
FIELDS = "sentiment (positive|negative), score (number), urgent (boolean)"


@pytest.fixture
def api(llm: FakeLLMServer, tmp_path: Path) -> Iterator[httpx.Client]:
    with running(make_app(llm, tmp_path)) as url, httpx.Client(base_url=url,
                                                              timeout=30) as client:
        yield client


def locate(api: httpx.Client, **body: Any) -> httpx.Response:
    return api.post("/v1/locate", json={"sheet": "Feedback", **body}, headers=AUTH)


def test_locate_lists_prompt_columns_in_running_order(api: httpx.Client) -> None:
    grid = [["Templates", "", "Reply to {{ customer }}: {{ summary }}",
             "Summarize {{ feedback }}"], ["Customer", "Feedback", "reply", "summary"],
            ["Ana", "logs me out", "", ""]]
    data = locate(api, grid=grid).json()
    assert data["columns"] == [[0, "Customer"], [1, "Feedback"]]
    first, second = data["steps"]
    assert first == {"index": 1, "name": "summary", "template": "Summarize {{ feedback }}",
                     "origin": "'Feedback'!D1",
                     "outputs": [{"col": 3, "header": "summary", "exists": True}],
                     "needs": [], "uses": [], "fields": None, "schema": None}
    assert (second["name"], second["needs"], second["uses"]) == ("reply", [1], ["summary"])


def test_the_conf_sheet_adds_prompt_columns_fields_and_options(api: httpx.Client) -> None:
    conf = [["key", "value"], ["template.tone", "Tone of {{ feedback }}"],
            ["fields.tone", FIELDS], ["max_tokens", "40"], ["model", "openai:gpt-4o"],
            ["base_url", "http://elsewhere.invalid/v1"]]
    data = locate(api, grid=CHAINED, conf=conf).json()
    assert [s["name"] for s in data["steps"]] == ["summary", "tone", "reply"]
    tone = data["steps"][1]
    assert tone["fields"] == ["sentiment", "score", "urgent"]
    assert [o["header"] for o in tone["outputs"]] == ["sentiment", "score", "urgent"]
    assert [(o["col"], o["exists"]) for o in tone["outputs"]] == [(4, False), (5, False),
                                                                 (6, False)]
    assert json.loads(tone["schema"])["properties"]["score"] == {"type": "number"}
    assert data["options"] == {"max_tokens": 40}  # model and base_url are the server's


@pytest.mark.parametrize(("conf", "grid", "message"), [
    ([["schema.tone", "/etc/passwd"]], CHAINED, "must be the JSON schema itself"),
    ([["fields.nothing", "a, b"]], CHAINED, "no template fills a column"),
    ([], [["Templates", "{{ b }}", "{{ a }}"], ["x", "a", "b"], ["1", "", ""]], "in a circle"),
    ([["fields", "score (weight)"]], [["template", "{{ x }}"], ["x"], ["1"]],
     "none of string, number"),
])
def test_bad_layouts_are_a_400_that_says_why(api: httpx.Client, conf: list[list[str]],
                                             grid: list[list[str]], message: str) -> None:
    r = locate(api, grid=grid, conf=conf)
    assert r.status_code == 400 and message in r.json()["error"], r.text


def test_fields_give_typed_values_per_row(api: httpx.Client, llm: FakeLLMServer) -> None:
    body = {"template": "Judge {{ text }}", "headers": ["text"], "fields": FIELDS,
            "rows": [["great"], [""], ["awful"]]}
    data = api.post("/v1/complete", json=body, headers=AUTH).json()
    great, blank, awful = data["answers"]
    assert great[0] == "positive" and isinstance(great[1], float) and great[2] is True
    assert blank == ["", "", ""] and awful[0] == "positive"
    assert data["fields"] == ["sentiment", "score", "urgent"]
    sent = llm.requests[-1]["json"]["response_format"]["json_schema"]["schema"]
    assert sent["required"] == ["sentiment", "score", "urgent"]
    again = api.post("/v1/complete", json=body, headers=AUTH).json()
    assert again["answers"] == data["answers"] and again["cached"] == 2
    text = api.post("/v1/complete", json={**body, "fields": None}, headers=AUTH).json()
    assert text["answers"][0] == "Answer: Judge great"  # another question, not the cache's


def test_a_reply_that_misfits_is_asked_again_once_then_fails(api: httpx.Client,
                                                             llm: FakeLLMServer) -> None:
    asked: dict[str, int] = {}

    def reply(prompt: str, schema: dict[str, Any]) -> Any:
        first = prompt.splitlines()[0]
        asked[first] = asked.get(first, 0) + 1
        if "stubborn" in first or asked[first] == 1:
            return {"score": "high"}
        return {"score": 4}

    llm.config.structured_answer = reply
    body = {"template": "Rate {{ text }}", "headers": ["text"],
            "schema": '{"type": "object", "properties": {"score": {"type": "integer"}}, '
                      '"required": ["score"]}', "rows": [["fine"], ["stubborn"]]}
    data = api.post("/v1/complete", json=body, headers=AUTH).json()
    assert data["answers"][0] == [4]
    assert data["answers"][1] == ["#ERROR: the reply did not fit the fields, twice: score: "
                                  "'high' is not a whole number"]
    assert asked == {"Rate fine": 2, "Rate stubborn": 2}
    r = api.post("/v1/complete", json={**body, "schema": "answers.json"}, headers=AUTH)
    assert r.status_code == 400 and "must be a JSON schema" in r.json()["error"]
