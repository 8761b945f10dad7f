"""Adaptive limits: learn the provider's ceiling from its headers, back off on 429 and 529."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import httpx

from promptbatch_sheets.limits import Bucket, Limiter, reset_seconds
from tests.conftest import cli, fake_model
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer


def test_rate_limited_server_is_paced_not_hammered(tmp_path: Path) -> None:
    book = tmp_path / "b.csv"
    with book.open("w", newline="") as handle:
        csv.writer(handle).writerows([["n"]] + [[str(i)] for i in range(60)])
    with FakeLLMServer(FakeLLMConfig(rpm=1200, latency_median_s=0.05)) as server:
        started = time.monotonic()
        result = cli("run", str(book), "--template", "Number {{ n }}", "--concurrency", "32",
                     *fake_model(server))
        elapsed = time.monotonic() - started
        throttled, answered = server.count_429, server.count_ok
    assert result.exit_code == 0, result.output
    assert answered == 60
    assert throttled <= 12  # learning the limit costs a few 429s, not a storm
    assert elapsed >= 2.0  # 20 requests a second: the run was paced to the server's limit


def test_window_halves_on_429_and_grows_back() -> None:
    limiter = Limiter(max_concurrency=64)
    start = limiter.window
    limiter.throttled_by_server(httpx.Headers(), wait=0.01)
    assert limiter.window == start / 2
    limiter.throttled_by_server(httpx.Headers(), wait=0.01)  # same burst: not cut again
    assert limiter.window == start / 2
    for _ in range(200):
        limiter.succeeded(httpx.Headers())
    assert limiter.window > start


def test_overload_pauses_without_lowering_the_rate() -> None:
    limiter = Limiter(max_concurrency=16)
    limiter.succeeded(httpx.Headers({"x-ratelimit-limit-requests": "600"}))
    window = limiter.window
    limiter.overloaded(wait=0.2)
    assert limiter.window == window and limiter.requests is not None
    assert limiter.requests.per_minute == 600

    async def timed() -> float:
        started = time.monotonic()
        await limiter.acquire(10)
        await limiter.release()
        return time.monotonic() - started

    assert asyncio.run(timed()) >= 0.15


def test_user_caps_win_over_learned_limits() -> None:
    limiter = Limiter(max_concurrency=8, rpm=60)
    limiter.succeeded(httpx.Headers({"x-ratelimit-limit-requests": "10000",
                                     "anthropic-ratelimit-tokens-limit": "90000"}))
    assert limiter.requests is not None and limiter.requests.per_minute == 60
    assert limiter.tokens is not None and limiter.tokens.per_minute == 90000


def test_bucket_refills_per_second_slices() -> None:
    bucket = Bucket(per_minute=120)  # 2 a second
    assert bucket.wait_for(1, now=100.0) == 0
    assert bucket.wait_for(1, now=100.0) == 0
    assert bucket.wait_for(1, now=100.0) == 0.5
    assert reset_seconds("6m0s") == 360 and reset_seconds("120ms") == 0.12
