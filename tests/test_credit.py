"""A server's ``remaining`` is spent at once, never overspent, never past the user's cap, and
no longer trusted once the server refuses a request sent on it."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from promptbatch_sheets.limits import Limiter, Ticket
from tests.conftest import cli
from tests.test_limits import book
from tests.test_llmock import llmock


def told(remaining: int, limit: int = 60, reset: str | None = None) -> httpx.Headers:
    """OpenAI's headers: ``limit`` requests a minute, ``remaining`` of them left (whole again
    in ``reset``)."""
    headers = {"x-ratelimit-limit-requests": str(limit),
               "x-ratelimit-remaining-requests": str(remaining)}
    return httpx.Headers(headers | ({"x-ratelimit-reset-requests": reset} if reset else {}))


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


def test_a_refilling_bucket_spent_holds_nothing_back() -> None:
    """A reset that is the time the missing requests take to refill (55 of 60 a minute: 55 s)
    shows a bucket refilling at its limit: once its five are spent the run goes on at the
    limit's pace. A slice that ends in half a second holds the rest back instead: what went on
    its count is charged to the pace."""

    async def run(reset: str) -> tuple[list[Ticket], list[Ticket]]:
        limiter = Limiter()
        first = await limiter.acquire(10)
        await limiter.release(first)
        limiter.succeeded(told(5, reset=reset), first)
        return await sends(limiter, 5), await sends(limiter, 3, within=1.6)

    went, after = asyncio.run(run("55s"))
    assert sum(t.credited for t in went) == 5 and len(after) == 1  # one a second, at once
    went, after = asyncio.run(run("500ms"))
    assert sum(t.credited for t in went) == 5 and after == []


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


def spread(records: list[dict[str, Any]]) -> tuple[int, int, float]:
    """The chat requests llmock answered and refused, and the longest it waited between two."""
    chats = [r for r in records if "chat/completions" in str(r.get("path"))]
    starts = sorted(float(r["started_at"]) for r in chats)
    gap = max((b - a for a, b in itertools.pairwise(starts)), default=0.0)
    return (sum(r["status"] == 200 for r in chats), sum(r["status"] == 429 for r in chats), gap)


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
    monkeypatch.setenv("PROMPTBATCH_API_KEY", "test-key")
    result = cli("run", str(book(tmp_path / "b.csv", 300)), "--template", "Number {{ n }}",
                 "--model", "openai-compatible:bench", "--base-url", f"{full_bucket}/v1")
    assert result.exit_code == 0, result.output
    records = [r for r in httpx.get(f"{full_bucket}/_llmock/requests", timeout=30).json()
               ["requests"] if "chat/completions" in str(r.get("path"))]
    assert spread(records)[:2] == (300, 0)
    events = sorted([(float(r["started_at"]), 1) for r in records]
                    + [(float(r["ended_at"]), -1) for r in records])
    flying = most = 0
    for _, step in events:
        flying += step
        most = max(most, flying)
    assert most > 32  # beyond the first wave: the window opened to what the server has left


def test_a_run_past_a_full_bucket_goes_on_at_its_pace(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """llmock's bucket of 1,200 a minute, full at the start, then 20 a second: 1,300 rows are
    the bucket at once and 100 more at its refill. What went on the bucket's count is no debt
    on the pace: the run never stops for the minute a paced 1,200 would have taken."""
    with llmock("--latency-ms", "50", "--rpm", "1200") as url:
        monkeypatch.setenv("PROMPTBATCH_API_KEY", "test-key")
        result = cli("run", str(book(tmp_path / "b.csv", 1300)), "--template",
                     "Number {{ n }}", "--model", "openai-compatible:bench", "--base-url",
                     f"{url}/v1")
        records = httpx.get(f"{url}/_llmock/requests", timeout=30).json()["requests"]
    assert result.exit_code == 0, result.output
    answered, refused, gap = spread(records)
    assert (answered, refused) == (1300, 0)
    assert gap < 2.0  # 0.05 s at its pace; the minute's debt stopped it for 57 s
