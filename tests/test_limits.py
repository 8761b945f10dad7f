"""Adaptive limits: learn the provider's ceiling from its headers, back off on 429 and 529."""

from __future__ import annotations

import asyncio
import csv
import time
from pathlib import Path

import httpx
import pytest

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
    assert throttled <= 32 - 20  # the first wave past the server's 20 a second, then none
    assert elapsed >= 2.0  # 20 requests a second: the run was paced to the server's limit


def test_window_halves_on_429_and_grows_back() -> None:
    limiter = Limiter(max_concurrency=64)
    assert limiter.window == 64  # the user's concurrency from the start
    limiter.throttled_by_server(httpx.Headers(), wait=0.01)  # a server with no limit headers
    assert limiter.window == 32
    limiter.throttled_by_server(httpx.Headers(), wait=0.01)  # same burst: not cut again
    assert limiter.window == 32
    for _ in range(32):  # then one more per window of answers, up to the concurrency
        limiter.succeeded(httpx.Headers())
    assert 32.9 <= limiter.window < 34
    for _ in range(10_000):
        limiter.succeeded(httpx.Headers())
    assert limiter.window == 64


def test_429_under_known_limits_empties_the_buckets_not_the_window() -> None:
    limiter = Limiter(max_concurrency=64, rpm=600)
    limiter.succeeded(httpx.Headers())
    window = limiter.window
    limiter.throttled_by_server(httpx.Headers(), wait=None)
    assert limiter.window == window
    assert limiter.requests is not None and limiter.requests.level <= 0


def test_a_pause_is_not_saved_up_as_a_burst() -> None:
    limiter = Limiter(max_concurrency=64, rpm=600)  # 10 a second, bursts of at most 2
    limiter.throttled_by_server(httpx.Headers(), wait=1.0)
    assert limiter.requests is not None
    # When the pause ends the bucket starts refilling; it did not fill up during the pause.
    assert limiter.requests.wait_for(1, now=limiter.paused_until) == pytest.approx(0.1)


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


def test_bucket_paces_evenly_from_the_start() -> None:
    bucket = Bucket(per_minute=600)  # 10 a second, bursts of at most 2
    waits = [bucket.wait_for(1, now=100.0) for _ in range(4)]
    assert waits == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert bucket.wait_for(1, now=101.0) == 0  # a second later: refilled, capped at the burst
    assert bucket.wait_for(1, now=101.0) == 0
    assert bucket.wait_for(1, now=101.0) == pytest.approx(0.1)
    assert reset_seconds("6m0s") == 360 and reset_seconds("120ms") == 0.12
