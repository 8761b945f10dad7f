"""A server's ``remaining`` is spent at once, never overspent, never past the user's cap, and
no longer trusted once the server refuses a request sent on it."""

from __future__ import annotations

import asyncio
import csv
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from promptbatch_sheets.limits import Limiter, Ticket
from tests.conftest import cli
from tests.test_llmock import llmock


def told(remaining: int, limit: int = 60) -> httpx.Headers:
    """OpenAI's headers: ``limit`` requests a minute, ``remaining`` of them left."""
    return httpx.Headers({"x-ratelimit-limit-requests": str(limit),
                          "x-ratelimit-remaining-requests": str(remaining)})


async def sends(limiter: Limiter, count: int, within: float = 1.0) -> list[Ticket]:
    """The requests of ``count`` that leave within ``within`` seconds (the rest wait)."""
    tasks = [asyncio.create_task(limiter.acquire(10)) for _ in range(count)]
    done, waiting = await asyncio.wait(tasks, timeout=within)
    for task in waiting:
        task.cancel()
    return [task.result() for task in done]


def test_remaining_goes_at_once_and_no_further() -> None:
    async def run() -> tuple[list[Ticket], list[Ticket]]:
        limiter = Limiter()
        first = await limiter.acquire(10)
        await limiter.release(first)
        limiter.succeeded(told(5), first)  # one a second, but five left now
        return await sends(limiter, 8), await sends(limiter, 3)

    went, after = asyncio.run(run())
    # one a second would let one or two go; the five the server has left go at once, and
    # the bucket, charged for them, holds the rest back
    assert len(went) in (5, 6) and sum(t.credited for t in went) == 5
    assert after == []


def test_requests_in_flight_may_reach_the_server_after_the_one_that_told() -> None:
    async def run() -> list[Ticket]:
        limiter = Limiter()
        early = [await limiter.acquire(10) for _ in range(4)]
        last = early[-1]  # sent with three others unanswered: they may arrive after it
        await limiter.release(last)
        limiter.succeeded(told(5), last)
        return await sends(limiter, 8)

    went = asyncio.run(run())
    assert sum(t.credited for t in went) == 5 - 3


def test_a_changed_limit_drops_what_was_told_under_the_old_one() -> None:
    async def run() -> list[Ticket]:
        limiter = Limiter()
        first = await limiter.acquire(10)
        await limiter.release(first)
        limiter.succeeded(told(50, limit=6000), first)
        second = await limiter.acquire(10)
        await limiter.release(second)
        limiter.succeeded(told(1, limit=600), second)  # a lower tier now, one left of it
        return await sends(limiter, 5)

    assert sum(t.credited for t in asyncio.run(run())) == 1


def test_a_refused_credit_ends_the_trust() -> None:
    async def run() -> list[Ticket]:
        limiter = Limiter()
        first = await limiter.acquire(10)
        limiter.succeeded(told(5), first)
        (credited,) = [t for t in await sends(limiter, 3) if t.credited][:1]
        limiter.throttled_by_server(told(0), 0.01, credited)  # the server refused it
        await asyncio.sleep(0.02)
        later = await limiter.acquire(10)
        limiter.succeeded(told(100), later)  # it says there is room again: not believed
        return await sends(limiter, 5)

    assert not any(t.credited for t in asyncio.run(run()))


def test_the_users_rpm_is_never_passed_on_credit() -> None:
    async def run() -> list[Ticket]:
        limiter = Limiter(rpm=60)
        first = await limiter.acquire(10)
        limiter.succeeded(told(1000, limit=6000), first)
        return await sends(limiter, 5)

    went = asyncio.run(run())
    assert not any(t.credited for t in went) and len(went) <= 2  # one a second, as asked


@pytest.fixture
def full_bucket() -> Iterator[str]:
    """llmock (not ours) at 600 requests a minute, its bucket full at the start, as
    providers' are: 0.2 s answers."""
    with llmock("--latency-ms", "200", "--rpm", "600") as url:
        yield url


def test_a_full_bucket_is_spent_at_the_speed_it_allows(tmp_path: Path, full_bucket: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """300 rows: at the minute's average (10 a second) the run would keep 2 or 3 in flight
    for 30 s; the 600 the bucket holds let them all go with no 429."""
    book = tmp_path / "b.csv"
    with book.open("w", newline="") as handle:
        csv.writer(handle).writerows([["n"]] + [[str(i)] for i in range(300)])
    monkeypatch.setenv("PROMPTBATCH_API_KEY", "test-key")
    result = cli("run", str(book), "--template", "Number {{ n }}", "--model",
                 "openai-compatible:bench", "--base-url", f"{full_bucket}/v1")
    assert result.exit_code == 0, result.output
    records = [r for r in httpx.get(f"{full_bucket}/_llmock/requests", timeout=30).json()
               ["requests"] if "chat/completions" in str(r.get("path"))]
    assert sum(r["status"] == 200 for r in records) == 300
    assert not any(r["status"] == 429 for r in records)
    events = sorted([(float(r["started_at"]), 1) for r in records]
                    + [(float(r["ended_at"]), -1) for r in records])
    flying = most = 0
    for _, step in events:
        flying += step
        most = max(most, flying)
    assert most > 32  # beyond the first wave: the window opened to what the server has left
