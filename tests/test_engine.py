"""The engine alone: no server, no CLI. Its provider is the real wire code (OpenAI's chat
completions, Anthropic's Messages) over ``httpx.MockTransport``, the way httpx tests its own
clients: each request is answered in process by ``Model`` and recorded."""

from __future__ import annotations

import asyncio
import json as _json
import threading
from collections.abc import Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptbatch_sheets.budget import Budget
from promptbatch_sheets.engine import Engine, RowResult, Summary, error_text
from promptbatch_sheets.inflight import InFlight
from promptbatch_sheets.plan import RowJob
from promptbatch_sheets.providers import (
    Completion,
    ModelSpec,
    Params,
    Provider,
    RetryPolicy,
    open_provider,
)
from promptbatch_sheets.request import Requests
from promptbatch_sheets.schema import Schema
from promptbatch_sheets.store import Store

OPENAI = ModelSpec.parse("openai:gpt-4o-mini")
ANTHROPIC = ModelSpec.parse("anthropic:claude-test")
SCORE = Schema.from_fields("score (number)", "the fields setting")

Reply = Callable[[str], httpx.Response | str]
"""What the model says to a prompt: a response, or the text of a 200 answer."""


def reply_of(status: int, json: Any) -> httpx.Response:
    """A reply as a server sends it: a stream the client reads (a ``Response`` made from
    ``json=`` comes already read, and the wire code reads what it gets as it streams in)."""
    return httpx.Response(status, headers={"content-type": "application/json"},
                          stream=httpx.ByteStream(_json.dumps(json).encode()))


@dataclass
class Model:
    """A model server in process: answers every prompt with ``reply`` and records it."""

    spec: ModelSpec = OPENAI
    reply: Reply = lambda prompt: f"Answer: {prompt}"
    delay: float = 0.0
    prompts: list[str] = field(default_factory=list)
    connected: int = 0

    async def handle(self, request: httpx.Request) -> httpx.Response:
        body = _json.loads(request.content)
        prompt = body["messages"][-1]["content"]
        self.prompts.append(prompt)
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.reply(prompt)
        if isinstance(reply, httpx.Response):
            return reply
        if self.spec.provider == "anthropic":
            return reply_of(200, json={
                "content": [{"type": "text", "text": reply}], "stop_reason": "end_turn",
                "usage": {"input_tokens": 3, "output_tokens": 2}})
        return reply_of(200, json={
            "choices": [{"message": {"content": reply}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2}})

    def connect(self, concurrency: int | None = None,
                ) -> Callable[[], AbstractAsyncContextManager[Provider]]:
        """The engine's ``connect``: the real provider, its requests carried in process."""

        def opened() -> AbstractAsyncContextManager[Provider]:
            self.connected += 1
            return open_provider(self.spec, api_key="sk-test", concurrency=concurrency,
                                 timeout=10, policy=RetryPolicy(attempts=3, base_delay=0.01),
                                 transport=httpx.MockTransport(self.handle))

        return opened


@pytest.fixture
def store(tmp_path: Path) -> Iterable[Store]:
    opened = Store(tmp_path / "cache.sqlite3")
    yield opened
    opened.close()


def run(model: Model, store: Store, jobs: list[RowJob], concurrency: int | None = None,
        **hooks: Any) -> tuple[Summary, list[RowResult]]:
    """Run ``jobs`` to the end: the summary, and every result in the order it came."""
    results: list[RowResult] = []
    engine = Engine(model.spec.label, model.connect(concurrency), Params(), store,
                    concurrency=concurrency, on_result=results.append, **hooks)
    summary = asyncio.run(engine.run(jobs))
    return summary, results


def texts(results: list[RowResult]) -> dict[tuple[int, int], str]:
    return {(r.row, r.step): r.text for r in results}


def test_identical_prompts_are_one_request(store: Store) -> None:
    model = Model()
    jobs = [RowJob(0, "mug"), RowJob(1, "mug"), RowJob(2, "pen"), RowJob(3, "mug")]
    summary, results = run(model, store, jobs)
    assert sorted(model.prompts) == ["mug", "pen"]
    assert texts(results) == {(0, 0): "Answer: mug", (1, 0): "Answer: mug",
                              (2, 0): "Answer: pen", (3, 0): "Answer: mug"}
    assert (summary.rows, summary.answered, summary.requests) == (4, 4, 2)


def test_a_rerun_is_answered_by_the_cache_without_opening_the_provider(store: Store) -> None:
    jobs = [RowJob(0, "mug"), RowJob(1, "pen")]
    run(Model(), store, jobs)
    model = Model()
    summary, results = run(model, store, jobs)
    assert model.connected == 0 and model.prompts == []
    assert all(r.cached and r.ok for r in results)
    assert texts(results) == {(0, 0): "Answer: mug", (1, 0): "Answer: pen"}
    assert (summary.cached, summary.answered, summary.requests) == (2, 0, 0)


def test_a_cached_answer_that_does_not_fit_the_schema_is_asked_again(store: Store) -> None:
    job = RowJob(0, "rate the mug")
    key = Requests(OPENAI.label, Params(), {0: SCORE}).key(job)
    store.put(key, OPENAI.label, Completion("great!", 1, 1))  # another tool's answer
    model = Model(reply=lambda prompt: '{"score": 4}')
    summary, results = run(model, store, [job], schemas={0: SCORE})
    assert model.prompts == ["rate the mug"]
    assert texts(results) == {(0, 0): '{"score": 4}'}
    assert (summary.cached, summary.answered) == (0, 1)
    assert store.get_many([key])[key].text == '{"score": 4}', "the fitting answer replaces it"


def later_step(result: RowResult) -> list[RowJob | RowResult]:
    """A chain's follow hook: step 1 of a row uses step 0's answer; a failed step 0 fails it."""
    if result.step:
        return []
    if not result.ok:
        return [RowResult(result.row, error_text("uses an answer that failed"), False, False,
                          step=1)]
    return [RowJob(result.row, f"Reply to {result.text}", step=1)]


def test_a_rows_later_step_is_sent_before_the_next_rows_first(store: Store) -> None:
    model = Model()
    jobs = [RowJob(row, f"q{row}") for row in range(3)]
    summary, results = run(model, store, jobs, concurrency=1, follow=later_step)
    assert model.prompts == ["q0", "Reply to Answer: q0", "q1", "Reply to Answer: q1",
                             "q2", "Reply to Answer: q2"]
    assert texts(results)[2, 1] == "Answer: Reply to Answer: q2"
    assert (summary.rows, summary.answered) == (6, 6)


def test_a_run_sharing_its_event_loop_follows_up_in_a_thread_in_the_same_order(
        store: Store) -> None:
    """A server's run (``shared``) renders later steps off its event loop: a slow template
    stalls no other request, and a row's later step still goes first."""
    threads: list[int] = []

    def follow(result: RowResult) -> list[RowJob | RowResult]:
        threads.append(threading.get_ident())
        return later_step(result)

    model = Model()

    async def alongside_others() -> Summary:
        shared = InFlight(store)
        engine = Engine(OPENAI.label, model.connect(1), Params(), store, concurrency=1,
                        on_result=lambda result: None, follow=follow, shared=shared)
        try:
            return await engine.run([RowJob(row, f"q{row}") for row in range(2)])
        finally:
            shared.close()

    summary = asyncio.run(alongside_others())
    assert model.prompts == ["q0", "Reply to Answer: q0", "q1", "Reply to Answer: q1"]
    assert len(threads) == 4 and threading.get_ident() not in threads
    assert (summary.rows, summary.answered) == (4, 4)


def test_a_failed_answer_settles_the_steps_that_use_it_without_a_call(store: Store) -> None:
    def reply(prompt: str) -> httpx.Response | str:
        return reply_of(400, json={"error": {"message": "bad"}}) if prompt == "q1" \
            else f"Answer: {prompt}"

    model = Model(reply=reply)
    jobs = [RowJob(row, f"q{row}") for row in range(2)]
    summary, results = run(model, store, jobs, follow=later_step)
    assert sorted(model.prompts) == ["Reply to Answer: q0", "q0", "q1"]
    assert texts(results)[1, 1] == "#ERROR: uses an answer that failed"
    assert (summary.rows, summary.answered, summary.failed) == (4, 2, 2)


def test_a_follow_up_answered_by_the_cache_costs_no_request(store: Store) -> None:
    jobs = [RowJob(row, f"q{row}") for row in range(2)]
    run(Model(), store, jobs, follow=later_step)
    model = Model()
    summary, results = run(model, store, jobs, follow=later_step)
    assert model.connected == 0
    assert (summary.rows, summary.cached) == (4, 4)
    assert texts(results)[1, 1] == "Answer: Reply to Answer: q1"


def price(prompt_tokens: int, completion_tokens: int) -> float:
    """A dollar a token: reservations and spending in round numbers."""
    return float(prompt_tokens + completion_tokens)


def test_a_budget_stops_before_the_request_that_could_cross_it(store: Store) -> None:
    """Each request reserves 1 + 10 tokens and spends 3 + 2: after three (15 spent), a fourth
    could cross 25."""
    budget = Budget(25.0, price, max_tokens=10)
    model = Model()
    jobs = [RowJob(row, f"q{row}") for row in range(5)]
    summary, results = run(model, store, jobs, concurrency=1, budget=budget)
    assert model.prompts == ["q0", "q1", "q2"]
    assert budget.spent == 15.0 and budget.reserved == 0.0
    assert sorted(r.row for r in results) == [0, 1, 2], "unsent rows get no cell"
    assert (summary.rows, summary.answered, summary.unsent) == (5, 3, 2)


def test_a_reply_that_misfits_is_asked_again_once_with_the_reason(store: Store) -> None:
    replies = iter(["it is good", '{"score": 5}'])
    model = Model(reply=lambda prompt: next(replies))
    summary, results = run(model, store, [RowJob(0, "rate the mug")], schemas={0: SCORE})
    assert len(model.prompts) == 2 and model.prompts[0] == "rate the mug"
    assert model.prompts[1].startswith("rate the mug\n\nYour previous reply was:\nit is good")
    assert "It is not valid: " in model.prompts[1]
    assert texts(results) == {(0, 0): '{"score": 5}'}
    assert (summary.answered, summary.requests) == (1, 2)


def test_a_second_misfit_becomes_the_rows_error_and_is_not_stored(store: Store) -> None:
    model = Model(reply=lambda prompt: '{"score": "high"}')
    job = RowJob(0, "rate the mug")
    summary, results = run(model, store, [job], schemas={0: SCORE})
    assert len(model.prompts) == 2
    [result] = results
    assert not result.ok
    assert result.text.startswith("#ERROR: the reply did not fit the fields, twice: ")
    assert (summary.failed, summary.requests) == (1, 2)
    key = Requests(OPENAI.label, Params(), {0: SCORE}).key(job)
    assert store.get_many([key]) == {}


def test_a_400_fails_the_row_at_once(store: Store) -> None:
    model = Model(reply=lambda prompt: reply_of(400, json={"error": {
        "message": "the prompt is too long"}}))
    summary, results = run(model, store, [RowJob(0, "mug")])
    assert model.prompts == ["mug"], "a refusal is not retried"
    assert texts(results) == {(0, 0): "#ERROR: HTTP 400: the prompt is too long"}
    assert (summary.failed, summary.requests, summary.errors) == (
        1, 1, ["HTTP 400: the prompt is too long"])


def test_a_429_is_retried_until_the_answer_comes(store: Store) -> None:
    said: list[str] = []

    def reply(prompt: str) -> httpx.Response | str:
        said.append(prompt)
        return reply_of(429, json={"error": {"message": "slow down"}}) \
            if len(said) == 1 else "fine"

    model = Model(reply=reply)
    summary, results = run(model, store, [RowJob(0, "mug")])
    assert model.prompts == ["mug", "mug"]
    assert texts(results) == {(0, 0): "fine"}
    assert (summary.answered, summary.failed, summary.requests) == (1, 0, 1)


def test_two_runs_sharing_what_is_in_flight_send_a_prompt_once(store: Store) -> None:
    model = Model(delay=0.2)
    shared = InFlight(store)
    heard: list[list[RowResult]] = [[], []]

    async def both() -> list[Summary]:
        engines = [Engine(OPENAI.label, model.connect(), Params(), store, concurrency=None,
                          on_result=results.append, shared=shared) for results in heard]
        try:
            return await asyncio.gather(*(e.run([RowJob(0, "mug")]) for e in engines))
        finally:
            shared.close()

    first, second = asyncio.run(both())
    assert model.prompts == ["mug"]
    assert [texts(results) for results in heard] == [{(0, 0): "Answer: mug"}] * 2
    assert (first.answered, first.requests, second.cached, second.requests) == (1, 1, 1, 0)


def test_the_summary_counts_what_each_row_cost_over_the_messages_api(store: Store) -> None:
    run(Model(ANTHROPIC), store, [RowJob(9, "old")])

    def reply(prompt: str) -> httpx.Response | str:
        if prompt == "long":
            return reply_of(200, json={
                "content": [{"type": "text", "text": "cut sh"}], "stop_reason": "max_tokens",
                "usage": {"input_tokens": 3, "output_tokens": 2}})
        if prompt == "bad":
            return reply_of(429, json={"error": {"message": "busy"}})
        return f"Answer: {prompt}"

    model = Model(ANTHROPIC, reply)
    jobs = [RowJob(0, "old"), RowJob(1, "new"), RowJob(2, "new"), RowJob(3, "long"),
            RowJob(4, "bad")]
    summary, results = run(model, store, jobs)
    assert sorted(set(model.prompts)) == ["bad", "long", "new"]
    assert texts(results)[4, 0].startswith("#ERROR: HTTP 429: busy")
    assert (summary.rows, summary.answered, summary.cached, summary.failed) == (5, 3, 1, 1)
    assert (summary.cut, summary.rate_limited, summary.requests) == (1, 1, 3)
    assert (summary.prompt_tokens, summary.completion_tokens) == (6, 4)
    assert len(summary.errors) == 1 and summary.seconds > 0


def test_the_plan_hook_hears_each_prompt_the_cache_cannot_answer_once(store: Store) -> None:
    run(Model(), store, [RowJob(0, "mug")])
    planned: list[list[RowJob]] = []
    model = Model()
    run(model, store, [RowJob(0, "mug"), RowJob(1, "pen"), RowJob(2, "pen")],
        on_plan=planned.append)
    assert planned == [[RowJob(1, "pen")]]
    assert model.prompts == ["pen"]


def test_once_cancelled_no_request_starts_and_the_rest_are_unsent(store: Store) -> None:
    model = Model()
    jobs = [RowJob(row, f"q{row}") for row in range(4)]
    summary, results = run(model, store, jobs, concurrency=1,
                           cancelled=lambda: bool(model.prompts))
    assert model.prompts == ["q0"]
    assert [r.row for r in results] == [0]
    assert (summary.rows, summary.answered, summary.unsent) == (4, 1, 3)
