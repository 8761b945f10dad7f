"""Self-test of the fake LLM server used by the other tests and the benchmark."""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer

ANTHROPIC_HEADERS = {"x-api-key": "test-key", "anthropic-version": "2023-06-01"}


def chat(prompt: str, **extra: object) -> dict[str, object]:
    return {"model": "gpt-test", "messages": [{"role": "user", "content": prompt}], **extra}


@pytest.fixture(scope="module")
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer() as srv:
        yield srv


@pytest.fixture
def fake(server: FakeLLMServer) -> Iterator[FakeLLMServer]:
    server.config = FakeLLMConfig()
    server.reset()
    yield server
    server.config = FakeLLMConfig()


def test_openai_answer_with_usage(fake: FakeLLMServer) -> None:
    assert fake.base_url.startswith("http://127.0.0.1:") and fake.base_url.endswith("/v1")
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "What is 2+2?"},
    ]
    r = httpx.post(
        f"{fake.base_url}/chat/completions",
        json={"model": "gpt-test", "messages": messages, "max_tokens": 20},
        headers={"authorization": "Bearer sk-test"},
    )
    assert r.status_code == 200
    data = r.json()
    assert data["object"] == "chat.completion"
    assert data["id"].startswith("chatcmpl-")
    assert data["model"] == "gpt-test"
    choice = data["choices"][0]
    assert choice["message"] == {"role": "assistant", "content": "Answer: What is 2+2?"}
    assert choice["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] == len("be briefWhat is 2+2?") // 4 + 1
    assert usage["completion_tokens"] == len("Answer: What is 2+2?") // 4 + 1
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert fake.prompts == ["What is 2+2?"]
    assert fake.count_ok == 1
    rec = fake.requests[0]
    assert rec["path"] == "/v1/chat/completions"
    assert rec["headers"]["authorization"] == "Bearer sk-test"
    assert rec["json"]["max_tokens"] == 20 and rec["status"] == 200
    models = httpx.get(f"{fake.base_url}/models").json()
    assert models["object"] == "list" and models["data"][0]["id"]


def test_anthropic_answer_and_header_check(fake: FakeLLMServer) -> None:
    fake.config.answer = lambda p: p.upper()
    fake.config.completion_tokens = 7
    body = {
        "model": "claude-test",
        "max_tokens": 50,
        "system": "sys",
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
    }
    r = httpx.post(f"{fake.root_url}/v1/messages", json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200
    data = r.json()
    assert data["type"] == "message" and data["id"].startswith("msg_")
    assert data["content"] == [{"type": "text", "text": "HELLO"}]
    assert data["stop_reason"] == "end_turn" and data["stop_sequence"] is None
    assert data["usage"] == {"input_tokens": len("syshello") // 4 + 1, "output_tokens": 7}
    bad = httpx.post(f"{fake.root_url}/v1/messages", json=body, headers={"x-api-key": "k"})
    assert bad.status_code == 400
    assert bad.json()["error"]["type"] == "invalid_request_error"
    assert fake.prompts == ["hello"]


def test_scripted_faults(fake: FakeLLMServer) -> None:
    fake.config.faults = ["429", "429:ms=1200", "ok", "503", "malformed", "empty"]
    url = f"{fake.base_url}/chat/completions"
    with httpx.Client() as client:
        r1 = client.post(url, json=chat("a"))
        r2 = client.post(url, json=chat("b"))
        r3 = client.post(url, json=chat("c"))
        r4 = client.post(url, json=chat("d"))
        r5 = client.post(url, json=chat("e"))
        r6 = client.post(url, json=chat("f"))
        r7 = client.post(url, json=chat("g"))
    assert r1.status_code == 429
    assert r1.headers["retry-after-ms"] == "50" and r1.headers["retry-after"] == "0"
    assert r1.json()["error"]["code"] == "rate_limit_exceeded"
    assert r2.headers["retry-after-ms"] == "1200" and r2.headers["retry-after"] == "2"
    assert r3.status_code == 200
    assert r4.status_code == 503 and r4.json()["error"]["type"] == "server_error"
    assert r5.status_code == 200 and r5.headers["content-type"].startswith("application/json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(r5.content)
    assert r6.status_code == 200 and r6.json()["choices"] == []
    assert r7.status_code == 200
    assert fake.config.faults == []
    assert fake.count_429 == 2 and fake.count_ok == 2
    assert fake.prompts == ["c", "g"]
    assert [rec["status"] for rec in fake.requests] == [429, 429, 200, 503, 200, 200, 200]


def test_anthropic_faults_and_fault_for(fake: FakeLLMServer) -> None:
    fake.config.faults = ["429", "529"]
    fake.config.fault_for = lambda p: "500" if p == "row 3" else None
    url = f"{fake.root_url}/v1/messages"
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "row 1"}]}
    with httpx.Client(headers=ANTHROPIC_HEADERS) as client:
        r1 = client.post(url, json=body)
        r2 = client.post(url, json=body)
        r3 = client.post(url, json={**body, "messages": [{"role": "user", "content": "row 3"}]})
        r4 = client.post(url, json=body)
    assert r1.status_code == 429 and r1.json()["error"]["type"] == "rate_limit_error"
    assert r2.status_code == 529 and r2.json()["error"]["type"] == "overloaded_error"
    assert r3.status_code == 500 and r3.json()["type"] == "error"
    assert r4.status_code == 200


def test_reset_and_hang(fake: FakeLLMServer) -> None:
    fake.config.faults = ["reset"]
    url = f"{fake.base_url}/chat/completions"
    with httpx.Client() as client:
        with pytest.raises(httpx.TransportError):
            client.post(url, json=chat("x"))
        assert client.post(url, json=chat("y")).status_code == 200
    assert fake.requests[0]["status"] is None

    fake.config.faults = ["hang:s=5"]
    results: dict[str, object] = {}

    def hung() -> None:
        try:
            httpx.post(url, json=chat("slow"), timeout=httpx.Timeout(5.0, read=0.3))
        except httpx.ReadTimeout as exc:
            results["hung"] = exc

    t = threading.Thread(target=hung)
    t.start()
    time.sleep(0.05)
    started = time.monotonic()
    assert httpx.post(url, json=chat("fast")).status_code == 200  # not blocked by the hang
    assert time.monotonic() - started < 0.25
    t.join()
    assert isinstance(results.get("hung"), httpx.ReadTimeout)


def test_rpm_limit_burst() -> None:
    config = FakeLLMConfig(rpm=120, tpm=1_000_000, time_scale=1.0)
    with FakeLLMServer(config) as srv:
        url = f"{srv.base_url}/chat/completions"
        barrier = threading.Barrier(5)
        responses: list[httpx.Response] = []
        lock = threading.Lock()

        def fire(i: int) -> None:
            barrier.wait()
            r = httpx.post(url, json=chat(f"p{i}", max_tokens=10))
            with lock:
                responses.append(r)

        threads = [threading.Thread(target=fire, args=(i,)) for i in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200, 200, 429, 429, 429]
    assert srv.count_ok == 2 and srv.count_429 == 3
    ok = [r for r in responses if r.status_code == 200]
    assert {r.headers["x-ratelimit-limit-requests"] for r in ok} == {"120"}
    assert {r.headers["x-ratelimit-remaining-requests"] for r in ok} == {"0", "1"}
    assert ok[0].headers["x-ratelimit-limit-tokens"] == "1000000"
    assert ok[0].headers["x-ratelimit-reset-requests"].endswith("s")
    for r in responses:
        if r.status_code == 429:
            assert r.json()["error"]["code"] == "rate_limit_exceeded"
            assert r.json()["error"]["type"] == "requests"
            assert 1 <= int(r.headers["retry-after-ms"]) <= 1000
            assert r.headers["retry-after"] == "1"


def test_tpm_limit() -> None:
    config = FakeLLMConfig(tpm=600, time_scale=10.0)  # 10 tokens per 0.1-s window
    with FakeLLMServer(config) as srv, httpx.Client() as client:
        url = f"{srv.base_url}/chat/completions"
        first = client.post(url, json=chat("abc", max_tokens=5))  # cost 1 + 5
        second = client.post(url, json=chat("abc", max_tokens=5))
        assert first.status_code == 200
        assert second.status_code == 429
        assert second.json()["error"]["type"] == "tokens"
        assert int(second.headers["retry-after-ms"]) <= 100
        time.sleep(int(second.headers["retry-after-ms"]) / 1000 + 0.01)
        assert client.post(url, json=chat("abc", max_tokens=5)).status_code == 200


def test_latency_draws_are_lognormal_and_reproducible(fake: FakeLLMServer) -> None:
    fake.config = FakeLLMConfig(latency_median_s=0.01, latency_sigma=0.5, seed=7, time_scale=20)
    fake.reset()
    url = f"{fake.base_url}/chat/completions"
    with httpx.Client() as client:
        for i in range(200):
            assert client.post(url, json=chat(str(i))).status_code == 200
    draws = list(fake.latencies)
    assert len(draws) == 200
    assert abs(statistics.median(draws) - 0.01) <= 0.003
    fake.reset()
    with httpx.Client() as client:
        for i in range(5):
            client.post(url, json=chat(str(i)))
    assert fake.latencies == draws[:5]


def test_structured_requests_get_json_that_follows_the_schema(fake: FakeLLMServer) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"},
                                               "n": {"type": "integer", "maximum": 3}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    r = httpx.post(f"{fake.base_url}/chat/completions", json=chat("hello", response_format=fmt))
    assert json.loads(r.json()["choices"][0]["message"]["content"]) == {"ok": True, "n": 3}
    tools = [{"name": "other", "input_schema": {"type": "object"}},
             {"name": "answer", "input_schema": schema}]
    r = httpx.post(f"{fake.root_url}/v1/messages", headers=ANTHROPIC_HEADERS, json={
        **chat("hello", max_tokens=50), "tools": tools,
        "tool_choice": {"type": "tool", "name": "answer"}})
    data = r.json()
    assert data["stop_reason"] == "tool_use"
    assert [(b["type"], b["name"], b["input"]) for b in data["content"]] == [
        ("tool_use", "answer", {"ok": True, "n": 3})]
