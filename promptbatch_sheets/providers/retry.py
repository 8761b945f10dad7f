"""Retries with exponential backoff and full jitter that honour ``retry-after(-ms)``, within
bounds: a row is retried for at most ``patience`` seconds, and a run stops sending into a
server that refuses everything (``Breaker``)."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import httpx

from ..errors import ProviderError
from .base import RetryPolicy

T = TypeVar("T")

RETRY_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504, 529})
"""Statuses that say "try again later"; every other 4xx is the request's own fault."""
TRIP_AFTER = 2
"""Rows given up one after another, with no answer between them, that stop a run sending."""


class Retryable(Exception):
    """A failure worth another attempt, with the server's requested wait if it gave one."""

    def __init__(self, reason: str, wait: float | None = None,
                 rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.wait = wait
        self.rate_limited = rate_limited


class GaveUp(ProviderError):
    """A passing fault that outlasted the attempts, or the waiting, a row may spend on it."""


def server_wait(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``retry-after``."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return _seconds(float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _seconds(float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return _seconds((when - datetime.now(UTC)).total_seconds())


def _seconds(value: float) -> float | None:
    return max(0.0, value) if math.isfinite(value) else None


def _attempts(n: int) -> str:
    return "1 attempt" if n == 1 else f"{n} attempts"


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: Callable[[str], None] | None = None,
    patience: float = math.inf,
) -> T:
    """Run ``attempt`` until it succeeds or raises ProviderError; ``GaveUp`` when the attempts
    run out, or when the next try would come more than ``patience`` seconds after the row
    first failed. That time counts the row's queueing behind other rows' pauses too: a server
    that asks for 20 s again and again cannot hold a row for as long as it likes."""
    last, wait, rate_limited, first = "no attempt made", None, False, 0.0
    for n in range(1, policy.attempts + 1):
        try:
            return await attempt()
        except Retryable as exc:
            last, wait, rate_limited = str(exc), exc.wait, exc.rate_limited
        except httpx.TimeoutException:
            last, wait, rate_limited = "the server did not answer in time", None, False
        except httpx.TransportError as exc:
            last, wait, rate_limited = f"connection failed ({type(exc).__name__})", None, False
        if n == policy.attempts:
            break
        now = time.monotonic()
        first = first or now
        delay = policy.delay(n - 1, wait)
        if now - first + max(delay, wait or 0.0) > patience:
            raise GaveUp(f"{last} (gave up after {_attempts(n)}; a row is retried for at most "
                         f"{patience:g} s)", rate_limited)
        if on_retry is not None:
            on_retry(last)
        await asyncio.sleep(delay)
    raise GaveUp(f"{last} (gave up after {_attempts(policy.attempts)})", rate_limited)


class Held(Exception):
    """A row that was on its way when the breaker opened: it waits for the probe instead."""


class Breaker:
    """Stops sending into a server that only refuses. Without it, a server that answers 429
    (or nothing) forever holds every row for its whole retries in turn: hours for a big run.

    Once ``TRIP_AFTER`` rows in a row gave up with no answer between them, the breaker opens:
    one row at a time goes out as a probe while the others wait for it. An answered probe
    closes the breaker and the waiting rows go on; a probe that gives up fails them, and
    every row for ``pause`` seconds after it, with no request. A few failed rows therefore
    cost a healthy server one probe's time, never a pause: one provider serves every sheet
    of a ``promptbatch serve``, and one sheet's bad rows must not fail another's."""

    def __init__(self, pause: float) -> None:
        self._pause = pause
        self._streak = 0
        self._until = 0.0
        self._why: ProviderError | None = None
        self._probe: asyncio.Future[bool] | None = None
        """The probe under way while the breaker is open: True once it is answered."""

    async def enter(self) -> bool:
        """Wait until a row may be sent; True when it goes as the probe. Raises the reason a
        row is not sent while the last probe's failure holds."""
        while self._streak >= TRIP_AFTER:
            if self._why is not None and time.monotonic() < self._until:
                raise ProviderError(str(self._why), self._why.rate_limited, sent=False)
            if self._probe is None:
                self._probe = asyncio.get_running_loop().create_future()
                return True
            await asyncio.shield(self._probe)
        return False

    def hold(self) -> None:
        """Raise Held when the breaker is open: a row that is not the probe waits for it."""
        if self._streak >= TRIP_AFTER:
            raise Held

    def answered(self, probe: bool) -> None:
        self._streak, self._until, self._why = 0, 0.0, None
        self._settle(probe, True)

    def left(self, probe: bool) -> None:
        """The row ended without a verdict (it was cancelled): another row probes."""
        self._settle(probe, False)

    def gave_up(self, exc: GaveUp, probe: bool) -> None:
        self._streak += 1
        if probe or self._streak == TRIP_AFTER:
            if exc.rate_limited:
                why = (f"not sent: the provider refused the {self._streak} requests before it "
                       "for its rate limit, each for as long as a row may wait")
            else:
                why = f"not sent: the {self._streak} requests before it failed for good ({exc})"
            self._why = ProviderError(why, exc.rate_limited)
        if probe:
            self._until = time.monotonic() + self._pause
        self._settle(probe, False)

    def _settle(self, probe: bool, answered: bool) -> None:
        if probe and self._probe is not None:
            self._probe.set_result(answered)
            self._probe = None
