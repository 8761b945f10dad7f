"""`promptbatch serve` Batch API routes, against the fake Batch APIs on 127.0.0.1: the Sheets
menu's "Submit as batch" and "Collect batch results"."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptbatch_sheets import server
from promptbatch_sheets.settings import Settings
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer
from tests.fakes.llm_server import FakeLLMServer
from tests.test_server import AUTH, TOKEN, make_app, running

GRID = [["template", "Describe {{ product }}"], [], ["Product"], ["kettle"], ["lamp"],
        ["kettle"]]


@pytest.fixture
def fake() -> Iterator[FakeBatchServer]:
    with FakeBatchServer(FakeBatchConfig(answer=lambda prompt: f"ANS {prompt}")) as batches:
        yield batches


@pytest.fixture
def api(fake: FakeBatchServer, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> Iterator[httpx.Client]:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key-0123456789")
    app = server.create_app(TOKEN, Settings(model="openai:gpt-4o-mini", base_url=fake.base_url),
                            tmp_path / "answers.sqlite3")
    with running(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        yield client


def call(api: httpx.Client, route: str, grid: list[list[Any]], **extra: Any) -> dict[str, Any]:
    reply = api.post(f"/v1/batch/{route}", json={"sheet": "Items", "grid": grid, **extra},
                     headers=AUTH)
    assert reply.status_code == 200, reply.text
    data: dict[str, Any] = reply.json()
    return data


def test_submit_then_collect_returns_each_answer_on_its_row(api: httpx.Client,
                                                           fake: FakeBatchServer) -> None:
    sent = call(api, "submit", GRID)
    (job_id,) = fake.batches
    assert (sent["sent"], sent["new_jobs"], sent["waiting"]) == (2, [job_id], 3)
    assert sent["cells"] == [[2, 1, "response"]]  # the header; answers come later
    assert sent["model"] == "openai:gpt-4o-mini" and sent["estimate_usd"] > 0
    early = call(api, "collect", GRID)
    assert (early["answered"], early["waiting"], early["jobs"][0]["collected"]) == (0, 3, False)
    fake.finish()
    done = call(api, "collect", GRID)
    assert sorted(done["cells"]) == [[2, 1, "response"], [3, 1, "ANS Describe kettle"],
                                     [4, 1, "ANS Describe lamp"], [5, 1, "ANS Describe kettle"]]
    assert (done["answered"], done["waiting"], done["unsent"]) == (3, 0, 0)
    assert done["jobs"][0]["progress"] == "2/2 done" and done["jobs"][0]["collected"]
    again = call(api, "submit", GRID)
    assert again["sent"] == 0 and again["answered"] == 3 and len(fake.batches) == 1


def test_chained_columns_go_one_batch_later(api: httpx.Client, fake: FakeBatchServer) -> None:
    grid = [["Templates", "Sum {{ q }}", "Reply {{ summary }}"], ["q", "summary", "reply"],
            ["a", "", ""]]
    assert call(api, "submit", grid)["sent"] == 1
    fake.finish()
    second = call(api, "submit", grid)  # collects the summary, then sends the reply
    assert second["sent"] == 1 and [2, 1, "ANS Sum a"] in second["cells"]
    fake.finish()
    grid[2][1] = "ANS Sum a"
    assert [2, 2, "ANS Reply ANS Sum a"] in call(api, "collect", grid)["cells"]


def test_the_conf_sheet_cannot_choose_the_model(api: httpx.Client,
                                                fake: FakeBatchServer) -> None:
    conf = [["model", "anthropic:claude-haiku-4-5"], ["base_url", "http://elsewhere.invalid"]]
    assert call(api, "submit", GRID, conf=conf)["sent"] == 2
    assert [b.api for b in fake.batches.values()] == ["openai"]


def test_bad_requests_are_a_400_that_says_why(api: httpx.Client) -> None:
    r = api.post("/v1/batch/submit", json={"sheet": "Items"}, headers=AUTH)
    assert r.status_code == 400 and "Missing field(s) grid" in r.json()["error"]
    r = api.post("/v1/batch/collect", json={"sheet": "Items", "grid": [["x"]]}, headers=AUTH)
    assert r.status_code == 400 and "No prompt template" in r.json()["error"]
    assert api.post("/v1/batch/submit", json={"sheet": "Items", "grid": GRID}).status_code == 401


def test_a_model_without_a_batch_api_is_refused(llm: FakeLLMServer, tmp_path: Path) -> None:
    with running(make_app(llm, tmp_path)) as url:
        r = httpx.post(f"{url}/v1/batch/submit", json={"sheet": "Items", "grid": GRID},
                       headers=AUTH, timeout=30)
    assert r.status_code == 400
    assert "runs openai-compatible:fake, which has no Batch API" in r.json()["error"]
    assert llm.requests == []
