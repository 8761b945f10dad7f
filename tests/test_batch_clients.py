"""The two Batch API clients against the fake server: same bodies as realtime, every outcome."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from promptbatch_sheets.errors import BatchError
from promptbatch_sheets.providers import Completion, ModelSpec, Params, open_batch_api
from promptbatch_sheets.providers.anthropic import messages_payload
from promptbatch_sheets.providers.batchapi import Remote, split
from promptbatch_sheets.providers.batchapi.anthropic import AnthropicBatch
from promptbatch_sheets.providers.openai import chat_payload
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer

KEY = "sk-client-test-key"
FATES = {"b": "error", "c": "expired"}


@pytest.fixture
def fake() -> Iterator[FakeBatchServer]:
    config = FakeBatchConfig(outcome=lambda prompt: FATES.get(prompt, "ok"), api_key=KEY)
    with FakeBatchServer(config) as server:
        yield server


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_batch_round_trip_gives_answers_and_reasons(fake: FakeBatchServer,
                                                      provider: str) -> None:
    base = fake.base_url if provider == "openai" else fake.root_url
    spec = ModelSpec.parse(f"{provider}:m1", base)
    params = Params(temperature=0.0, max_tokens=20, system="Be brief.")
    api = open_batch_api(spec, KEY, 5)
    lines = [api.encode(f"id-{p}", p, params) for p in "abcd"]
    sent = json.loads(lines[0])
    realtime = (chat_payload if provider == "openai" else messages_payload)("m1", "a", params)
    assert sent.get("body", sent.get("params")) == realtime  # batch and realtime bodies agree

    batch_id = api.create(lines)
    assert not api.poll(batch_id).ended
    fake.finish()
    remote = api.poll(batch_id)
    assert remote.ended and remote.results
    results = dict(api.results(remote))
    answer = results["id-a"]
    assert isinstance(answer, Completion) and answer.text == "Answer: a"
    assert answer.completion_tokens == 3 and answer.finish_reason in ("stop", "end_turn")
    assert "refuse this request" in str(results["id-b"]) and "expired" in str(results["id-c"])
    assert isinstance(results["id-d"], Completion)
    api.close()


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_refused_key_is_named_but_never_quoted(fake: FakeBatchServer, provider: str) -> None:
    base = fake.base_url if provider == "openai" else fake.root_url
    wrong = "sk-wrong-0123456789"
    api = open_batch_api(ModelSpec.parse(f"{provider}:m1", base), wrong, 5)
    with pytest.raises(BatchError) as caught:
        api.poll("batch_1")
    assert "refused the API key" in str(caught.value) and wrong not in str(caught.value)
    assert caught.value.status == 401
    api.close()


def test_split_keeps_each_batch_under_both_limits() -> None:
    requests = [(f"k{i}", b"x" * 9) for i in range(7)]  # 10 bytes each with its separator
    assert [len(c) for c in split(requests, 100, 30)] == [3, 3, 1]
    assert [len(c) for c in split(requests, 2, 1000)] == [2, 2, 2, 1]
    assert [len(c) for c in split([("big", b"x" * 50)], 10, 30)] == [1]


def test_results_elsewhere_than_the_server_do_not_get_the_key() -> None:
    client = AnthropicBatch("http://127.0.0.1:9", "claude-haiku-4-5", KEY, 5)
    remote = Remote("ended", True, {}, None, ("http://elsewhere.test/results",))
    with pytest.raises(BatchError, match="the key is not sent there"):
        next(iter(client.results(remote)))
    client.close()
