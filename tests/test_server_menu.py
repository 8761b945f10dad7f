"""`promptbatch serve` for the Sheets menu: a run comes as windows of numbered rows
(``/v1/run``), planned by the command line's own code, over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.llm_server import FakeLLMServer
from tests.test_server import AUTH, make_app, running

HEAD = [["Templates", "", "Summarize {{ feedback }}", "Reply to {{ customer }}: {{ summary }}"],
        ["Customer", "Feedback", "summary", "reply"]]


@pytest.fixture
def api(llm: FakeLLMServer, tmp_path: Path) -> Iterator[httpx.Client]:
    with running(make_app(llm, tmp_path)) as url, httpx.Client(base_url=url,
                                                              timeout=30) as client:
        yield client


def run(api: httpx.Client, numbers: list[int], rows: list[list[Any]],
        **extra: Any) -> httpx.Response:
    body = {"sheet": "Feedback", "grid": HEAD, "row_numbers": numbers, "rows": rows, **extra}
    return api.post("/v1/run", json=body, headers=AUTH)


def cells(reply: dict[str, Any]) -> dict[tuple[int, int], Any]:
    return {(r, c): v for r, c, v in reply["cells"]}


def test_a_window_gets_every_prompt_column_of_its_rows(api: httpx.Client,
                                                       llm: FakeLLMServer) -> None:
    """Rows far down the sheet, not next to each other: the rows between are not sent, and
    a row's reply is asked as soon as its summary is back, in the same request."""
    reply = run(api, [40, 42], [["Ana", "logs me out", "", ""], ["Bo", "slow", "short", ""]],
                wait_seconds=30).json()
    assert cells(reply) == {(40, 2): "Answer: Summarize logs me out",
                            (40, 3): "Answer: Reply to Ana: Answer: Summarize logs me out",
                            (42, 3): "Answer: Reply to Bo: short"}
    assert (reply["answered"], reply["kept"], reply["pending"]) == (3, 1, [])
    assert sorted(llm.prompts) == ["Reply to Ana: Answer: Summarize logs me out",
                                   "Reply to Bo: short", "Summarize logs me out"]


def test_rows_past_the_wait_are_pending_then_come_from_the_cache(api: httpx.Client,
                                                                 llm: FakeLLMServer) -> None:
    llm.config.latency_median_s = 0.6
    rows = [[f"c{i}", f"fb {i}", "", ""] for i in range(30)]
    numbers = list(range(2, 32))
    first = run(api, numbers, rows, wait_seconds=1).json()
    assert first["pending"], "30 rows of two chained prompts take longer than a second"
    llm.config.latency_median_s = 0
    written = cells(first)
    again = [[*row[:2], written.get((n, 2), ""), written.get((n, 3), "")]
             for n, row in zip(numbers, rows, strict=True)]
    pending = {n: row for n, row in zip(numbers, again, strict=True) if n in first["pending"]}
    second = run(api, list(pending), list(pending.values()), resent=True,
                 wait_seconds=30).json()
    assert second["pending"] == []
    assert len(llm.prompts) == len(set(llm.prompts)) == 60, "no prompt is paid twice"


def test_a_resent_row_keeps_this_runs_error(api: httpx.Client, llm: FakeLLMServer) -> None:
    """An #ERROR cell in a row the run sends again is this run's answer, not one to retry."""
    failed = ["Ana", "logs me out", "#ERROR: HTTP 500", ""]
    reply = run(api, [2], [failed], resent=True, wait_seconds=30).json()
    assert cells(reply) == {(2, 3): "#ERROR: uses the answer in 'Feedback'!C3, which failed; "
                                    "a rerun retries both"}
    assert llm.prompts == []
    fresh = run(api, [2], [failed], wait_seconds=30).json()
    assert cells(fresh)[2, 2] == "Answer: Summarize logs me out", "a new run retries it"


def test_merged_values_reach_the_rows_sent_only(api: httpx.Client, llm: FakeLLMServer) -> None:
    merged = [[2, 1, 9, 1, "shared feedback"]]
    reply = run(api, [5], [["Ana", "", "", ""]], merged=merged, wait_seconds=30).json()
    assert reply["answered"] == 2 and reply["pending"] == []
    assert llm.prompts[0] == "Summarize shared feedback"


@pytest.mark.parametrize(("extra", "message"), [
    ({"row_numbers": [2, 3]}, "row_numbers has 2 entries and rows 1"),
    ({"row_numbers": [1]}, "row_numbers must come after the rows of grid"),
    ({"row_numbers": [-1]}, "row_numbers must be a list of row numbers"),
    ({"merged": [[2, 1, 1, 1, "x"]]}, "top-left before bottom-right"),
    ({"hidden": ["2"]}, "hidden must be a list of row numbers"),
    ({"resent": "yes"}, "resent must be true or false"),
])
def test_a_malformed_window_is_a_400(api: httpx.Client, llm: FakeLLMServer,
                                     extra: dict[str, Any], message: str) -> None:
    body = {"sheet": "Feedback", "grid": HEAD, "row_numbers": [2],
            "rows": [["Ana", "x", "", ""]], **extra}
    reply = api.post("/v1/run", json=body, headers=AUTH)
    assert reply.status_code == 400 and message in reply.json()["error"], reply.text
    assert llm.requests == []
