"""The limiter seeks the ceiling: the window grows to what the headers allow, backs off when
latency rises at the server, follows a changed limit, and never fails a row on the way."""

from __future__ import annotations

import asyncio
import csv
import heapq
import math
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from promptbatch_sheets.limits import CAP, Bucket, Knee, Limiter, Ticket, reset_seconds
from tests.conftest import cli, fake_model
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer


def book(path: Path, rows: int) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["n"]] + [[str(i)] for i in range(rows)])
    return path


def answers(out: Path) -> list[str]:
    with out.open(newline="") as handle:
        return [row[1] for row in list(csv.reader(handle))[1:]]


def answer(limiter: Limiter, load: int, latency: float, headers: dict[str, str] | None = None,
           sent: float = 0.0) -> None:
    """One answer as the HTTP provider reports it: sent at ``load`` in flight."""
    limiter.succeeded(httpx.Headers(headers or {}), Ticket(sent, load, latency))


Server = Callable[[int, random.Random], float]
"""Latency of a request sent with ``load`` requests in flight (itself included)."""


def simulate(limiter: Limiter, server: Server, answers: int, seed: int = 1,
             headers: dict[str, str] | None = None) -> list[int]:
    """A run that keeps the window full, on a simulated clock: each answer is reported as the
    HTTP provider reports it, then the window is filled again. The windows after each answer."""
    rng = random.Random(seed)
    now = 0.0
    flying: list[tuple[float, float, int]] = []
    windows = []

    def fill() -> None:
        while len(flying) < limiter.window:
            load = len(flying) + 1
            heapq.heappush(flying, (now + server(load, rng), now, load))

    fill()
    for _ in range(answers):
        now, sent, load = heapq.heappop(flying)
        limiter.in_flight = len(flying)
        limiter.succeeded(httpx.Headers(headers or {}), Ticket(sent, load, now - sent))
        fill()
        windows.append(limiter.window)
    return windows


def spread(load: int, rng: random.Random) -> float:
    """A server with room for everyone: answers take 0.3 s or 2 s, whatever the load."""
    return rng.lognormvariate(math.log(0.8), 0.5)


def slotted(slots: int) -> Server:
    """A saturating server: ``slots`` answers at once (0.2 s each), a queue beyond."""
    return lambda load, rng: 0.2 * max(1.0, load / slots) * rng.lognormvariate(0, 0.05)


def test_window_grows_to_what_the_headers_allow() -> None:
    limiter = Limiter(start=32)
    assert limiter.window == 32
    headers = {"x-ratelimit-limit-requests": "6000"}  # 100 a second
    simulate(limiter, lambda load, rng: 0.5, 300, headers=headers)
    assert 50 <= limiter.window <= 70  # Little's law: 100 a second x 0.5 s, plus headroom
    assert limiter.requests is not None and limiter.requests.per_minute == 6000
    capped = Limiter(cap=20, start=8)
    simulate(capped, lambda load, rng: 0.5, 300, headers=headers)
    assert capped.window == 20  # --concurrency stays a hard cap


def test_a_token_limit_sizes_the_window_by_tokens_per_request() -> None:
    limiter = Limiter()
    limiter.sent, limiter.charged = 100, 25_000  # 250 tokens a request
    simulate(limiter, lambda load, rng: 0.1, 100, headers={"x-ratelimit-limit-tokens": "300000"})
    assert limiter.window <= 6  # 20 a second x 0.1 s = 2 in flight, plus headroom


def test_without_headers_a_free_server_is_driven_to_the_cap() -> None:
    windows = simulate(Limiter(start=32), spread, 2000)
    assert min(windows[500:]) == CAP  # latency spreads widely, but not with the load


def test_window_backs_off_to_the_knee_when_latency_rises() -> None:
    limiter = Limiter(start=32)
    windows = simulate(limiter, slotted(4), 1000)
    assert 4 <= statistics.median(windows[-200:]) <= 6  # the 4 slots, one queued at most
    assert limiter.knee_at is not None and 3 <= limiter.knee_at <= 6


def test_window_follows_a_knee_that_moves() -> None:
    limiter = Limiter(start=32)
    assert 8 <= statistics.median(simulate(limiter, slotted(8), 800)[-200:]) <= 10
    # another job takes half the server's slots, then leaves: the probes find the room again
    assert 4 <= statistics.median(simulate(limiter, slotted(4), 800)[-200:]) <= 6
    assert 8 <= statistics.median(simulate(limiter, slotted(8), 1500)[-200:]) <= 10


class Watched(Limiter):
    """A limiter that notes the knee it holds after each answer."""

    def __init__(self, start: int) -> None:
        super().__init__(start=start)
        self.knees: list[float | None] = []

    def succeeded(self, headers: httpx.Headers, ticket: Ticket | None = None) -> None:
        super().succeeded(headers, ticket)
        self.knees.append(self.knee_at)


def test_probes_keep_a_saturating_server_full_and_its_knee_known() -> None:
    """4 slots: the window sits one above them. A probe below the slots leaves one idle, so it
    is rare; the probes above reach as far as a knee must show its rise, so the knee is never
    lost from the answers (it was, on a range of 4 to 6: the window then grew past it and was
    halved below the slots, a fifth of the rate lost each time)."""
    limiter = Watched(start=32)
    windows = simulate(limiter, slotted(4), 3000)[500:]
    assert statistics.median(windows) == 5
    assert sum(w < 4 for w in windows) <= 0.06 * len(windows)
    assert None not in limiter.knees[500:]


def test_a_knee_at_the_least_load_kept_is_read_from_the_quick_answers() -> None:
    """Every load kept is past 4 slots (5 to 7 in flight): a hinge cannot tell a knee at 5
    from one below it, but the first wave's answers (0.2 s, no queue) can: the answers at 5
    came no markedly slower, so the server has (about) 5 slots. The window stays by them,
    with a probe one level below; it was halved past them, to 2 and 1."""
    limiter = Limiter(start=8)
    for _ in range(16):  # the first wave: not filed (it waited for connections), but quick
        answer(limiter, 4, 0.2)
    windows = []
    for i in range(96):
        load = 5 + i % 3
        answer(limiter, load, 0.2 * load / 4, sent=1.0 + i / 100)
        windows.append(limiter.window)
    assert limiter.knee_at is not None and limiter.knee.at_lowest
    assert 5 <= statistics.median(windows[8:]) <= 6
    assert min(windows[8:]) >= 3  # a probe below the least load kept, one level down


def test_a_base_latency_from_the_first_answers_brings_a_deep_window_back() -> None:
    """A first wave 32 times a 4-slot server: its first answers came at the service time, and
    every later one waited behind the wave. Once every recent answer has queued, their tenth
    percentile is the queue, no base: read from it, a least load 50 deep looked like the slots
    and the window stayed in the queue (every wait 0.66 s at a 0.05 s service, in a CI run).
    The run's quick answers, the first wave's among them, bring it back to the slots."""
    for seed in range(3):
        windows = simulate(Limiter(start=128), slotted(4), 3000, seed=seed)
        assert statistics.median(windows[-300:]) <= 6  # the 4 slots, one queued, a probe


def test_knee_fit_ignores_spread_but_finds_slots() -> None:
    rng = random.Random(2)
    free, queued = Knee(), Knee()
    for load in list(range(1, 65)) * 4:
        free.add(load, rng.lognormvariate(math.log(0.8), 0.6))
        queued.add(load, rng.lognormvariate(math.log(0.2), 0.3) * max(1, load / 8))
    assert free.fit(1000) is None
    knee = queued.fit(1000)
    assert knee is not None and 5 <= knee <= 12


def test_a_moment_of_slow_answers_at_the_top_is_no_knee() -> None:
    """A free server at 256 in flight answers some 300 rows a second; slow start passed the
    loads below in a few answers each. A moment (40 answers, a seventh of a second) when the
    client's machine was busy doubles those answers' latency: that is no knee, and the window
    must not be cut (it was, to about 140, in a bench run: a level kept only its last 32
    answers, a moment's worth at that load)."""
    for seed in range(10):
        rng = random.Random(seed)
        knee = Knee()
        for load in [*range(1, 32), *range(32, 257, 4)]:
            knee.add(load, rng.lognormvariate(math.log(0.8), 0.5))
        for i in range(300):
            knee.add(256, rng.lognormvariate(math.log(0.8), 0.5) * (2.0 if i >= 260 else 1.0))
        assert knee.fit(4096) is None


def test_a_knee_below_every_load_kept_is_looked_for() -> None:
    """After a first wave far past a 4-slot server, every load the window visits may queue,
    over a range too narrow for a hinge: the knee lies below them all."""
    rng = random.Random(3)
    knee = Knee()
    for load in list(range(30, 41)) * 8:
        knee.add(load, 0.05 * load / 4 * rng.lognormvariate(0, 0.05))
    found = knee.fit(1000)
    assert found is not None and found <= 33 and knee.at_lowest  # the lowest level: 30-34


def test_window_halves_on_429_and_grows_back_by_one_per_window() -> None:
    limiter = Limiter(cap=64)
    assert limiter.window == 64  # an explicit --concurrency is the first wave too
    # a server with no limit headers: a 503, or a 429 before answers have shown a rate
    limiter.throttled_by_server(httpx.Headers(), wait=0.01, limited=False)
    assert limiter.window == 32
    limiter.throttled_by_server(httpx.Headers(), wait=0.01)  # same burst: not cut again
    assert limiter.window == 32
    windows = simulate(limiter, lambda load, rng: 0.1, 40)  # no knee, but past the last 429
    assert 32 <= windows[-1] <= 35
    assert simulate(limiter, lambda load, rng: 0.1, 5000)[-1] == 64


def test_a_headerless_429_teaches_the_rate_the_server_let_through() -> None:
    """Answers in 0.04 s and a limit of 40 a second: no window paces that (1 in flight is 25 a
    second, 2 are 50), a rate does; it steps down at each later 429 and creeps up with each
    answer, and published limits replace it."""
    limiter = Limiter(start=32)
    now = time.monotonic()
    limiter.answered_at.extend(now - 1 + i / 40 for i in range(40))  # the last second's
    limiter.throttled_by_server(httpx.Headers(), 0.01, Ticket(now - 0.04, 2))
    assert limiter.learned and limiter.requests is not None
    assert limiter.requests.per_minute == pytest.approx(40 * 60, rel=0.05)
    assert limiter.window == 32  # the rate paces; the window is not cut as well
    learned = limiter.requests.per_minute
    limiter.throttled_by_server(httpx.Headers(), 0.01, Ticket(time.monotonic(), 2))
    assert limiter.requests.per_minute == pytest.approx(learned * 0.9)
    for _ in range(10):
        answer(limiter, 2, 0.04, sent=time.monotonic())
    assert learned * 0.9 < limiter.requests.per_minute < learned
    answer(limiter, 2, 0.04, {"x-ratelimit-limit-requests": "600"}, sent=time.monotonic())
    assert not limiter.learned and limiter.requests.per_minute == 600


def test_a_learned_rate_is_let_go_when_the_window_cannot_reach_it() -> None:
    """One 429 from a server that then answers everything: the learned rate rises until the
    window, not the rate, is what holds the run back, and then it paces nothing."""
    limiter = Limiter(cap=16)
    now = time.monotonic()
    limiter.answered_at.extend(now - 1 + i / 10 for i in range(10))
    limiter.throttled_by_server(httpx.Headers(), 0.01, Ticket(now, 2))
    assert limiter.learned
    for _ in range(2000):
        answer(limiter, 8, 0.5, sent=time.monotonic())
        if not limiter.learned:
            break
    assert not limiter.learned and limiter.requests is None  # 16 / 0.5 s = 32 a second


def test_limits_that_change_are_followed_and_old_answers_do_not_undo_it() -> None:
    limiter = Limiter()
    before = time.monotonic()
    answer(limiter, 10, 0.5, {"x-ratelimit-limit-requests": "3000"}, sent=before)
    answer(limiter, 10, 0.5, {"x-ratelimit-limit-requests": "600"}, sent=before + 1)
    assert limiter.requests is not None and limiter.requests.per_minute == 600
    # an answer to a request sent before the change still carries the old limit
    answer(limiter, 10, 2.0, {"x-ratelimit-limit-requests": "3000"}, sent=before + 0.5)
    assert limiter.requests.per_minute == 600
    limiter.throttled_by_server(httpx.Headers({"x-ratelimit-limit-requests": "300"}), 0.1,
                                Ticket(before + 2, 10))
    assert limiter.requests.per_minute == 300  # a 429 says so in a round trip


def test_429_under_known_limits_empties_the_buckets_not_the_window() -> None:
    limiter = Limiter(cap=64, rpm=600)
    window = limiter.window
    limiter.throttled_by_server(httpx.Headers(), wait=None)
    assert limiter.window == window
    assert limiter.requests is not None and limiter.requests.level <= 0


def test_a_pause_is_not_saved_up_as_a_burst() -> None:
    limiter = Limiter(cap=64, rpm=600)  # 10 a second, bursts of at most 2
    limiter.throttled_by_server(httpx.Headers(), wait=1.0)
    assert limiter.requests is not None
    # When the pause ends the bucket starts refilling; it did not fill up during the pause.
    assert limiter.requests.wait_for(1, now=limiter.paused_until) == pytest.approx(0.1)


def test_overload_pauses_without_lowering_the_rate() -> None:
    limiter = Limiter(cap=16)
    limiter.succeeded(httpx.Headers({"x-ratelimit-limit-requests": "600"}))
    window = limiter.window
    limiter.overloaded(wait=0.2)
    assert limiter.window == window and limiter.requests is not None
    assert limiter.requests.per_minute == 600

    async def timed() -> float:
        started = time.monotonic()
        ticket = await limiter.acquire(10)
        await limiter.release(ticket)
        return time.monotonic() - started

    assert asyncio.run(timed()) >= 0.15


def test_user_caps_win_over_learned_limits() -> None:
    limiter = Limiter(cap=8, rpm=60)
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


# End to end: the real CLI, no flags, against the fake server on 127.0.0.1.


def test_rate_limited_server_is_paced_not_hammered(tmp_path: Path) -> None:
    rows = book(tmp_path / "b.csv", 60)
    with FakeLLMServer(FakeLLMConfig(rpm=1200, latency_median_s=0.05)) as server:
        started = time.monotonic()
        result = cli("run", str(rows), "--template", "Number {{ n }}", *fake_model(server))
        elapsed = time.monotonic() - started
        throttled, answered = server.count_429, server.count_ok
    assert result.exit_code == 0, result.output
    assert answered == 60
    assert throttled <= 32 - 20  # the first wave past the server's 20 a second, then none
    assert elapsed >= 2.0  # 20 requests a second: the run was paced to the server's limit


def test_saturating_server_is_kept_full_without_a_queue(tmp_path: Path) -> None:
    """4 slots and a queue beyond, no headers: after the first wave, requests hardly wait."""
    rows = book(tmp_path / "b.csv", 800)
    with FakeLLMServer(FakeLLMConfig(slots=4, latency_median_s=0.05)) as server:
        result = cli("run", str(rows), "--template", "Number {{ n }}", *fake_model(server))
        waits = server.queue_waits[400:]  # the first waves queue behind the 4 slots
    assert result.exit_code == 0, result.output
    assert len(answers(tmp_path / "b.promptbatch.csv")) == 800
    assert statistics.median(waits) <= 0.05  # no longer than one service time


def test_changed_limit_is_followed_with_few_429s(tmp_path: Path) -> None:
    rows = book(tmp_path / "b.csv", 200)
    config = FakeLLMConfig(rpm=6000, latency_median_s=0.05, change_after=(100, 1200, None))
    with FakeLLMServer(config) as server:
        result = cli("run", str(rows), "--template", "Number {{ n }}", *fake_model(server))
        changed, arrivals, throttled = server.changed_at, server.arrivals, server.count_429
    assert result.exit_code == 0, result.output
    assert changed is not None
    late = [t for t in arrivals if t >= changed + 1.0]  # a second to learn the new limit
    assert len(late) <= 20 * (arrivals[-1] - changed - 1.0) + 25  # 20 a second, a burst
    assert throttled <= 30


def test_headerless_token_bound_server_fails_no_row_with_no_flags(tmp_path: Path) -> None:
    """Only 429 + retry-after say there is a limit: 20 rows a second (time-scaled 10x)."""
    rows = book(tmp_path / "b.csv", 300)
    config = FakeLLMConfig(tpm=30_000, time_scale=10, latency_median_s=0.5,
                           send_ratelimit_headers=False)
    with FakeLLMServer(config) as server:
        result = cli("run", str(rows), "--template", "Number {{ n }}", "--max-tokens", "150",
                     *fake_model(server))
        answered = server.count_ok
    assert result.exit_code == 0, result.output
    assert answered == 300
    assert all(a.startswith("Answer:") for a in answers(tmp_path / "b.promptbatch.csv"))


def test_hostile_limit_headers_are_bounded() -> None:
    """A server's headers are its words: a limit of 0.001 requests a minute, or a reset of a
    thousand hours with nothing remaining, must not hold a run for weeks."""
    limiter = Limiter()
    before = time.monotonic()
    answer(limiter, 1, 0.1, {"x-ratelimit-limit-requests": "0.001",
                             "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "1000h"}, sent=before)
    assert limiter.requests is not None and limiter.requests.per_minute >= 0.9
    assert limiter.paused_until - before <= 61
    answer(limiter, 1, 0.1, {"x-ratelimit-limit-requests": "nan"}, sent=time.monotonic())
    assert limiter.requests.per_minute >= 0.9
