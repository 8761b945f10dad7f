"""Retries with exponential backoff and full jitter that honour ``retry-after(-ms)``."""

from __future__ import annotations

import asyncio
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


class Retryable(Exception):
    """A failure worth another attempt, with the server's requested wait if it gave one."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


def server_wait(headers: httpx.Headers) -> float | None:
    """Seconds the server asked us to wait: ``retry-after-ms``, else ``retry-after``."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, (when - datetime.now(UTC)).total_seconds())


async def with_retries(
    attempt: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    on_retry: Callable[[str], None] | None = None,
) -> T:
    """Run ``attempt`` until it succeeds, raises ProviderError, or the attempts run out."""
    last = "no attempt made"
    for n in range(policy.attempts):
        try:
            return await attempt()
        except Retryable as exc:
            last = str(exc)
            wait = exc.wait
        except httpx.TimeoutException:
            last, wait = "the server did not answer in time", None
        except httpx.TransportError as exc:
            last, wait = f"connection failed ({type(exc).__name__})", None
        if n + 1 < policy.attempts:
            if on_retry is not None:
                on_retry(last)
            await asyncio.sleep(policy.delay(n, wait))
    raise ProviderError(f"{last} (gave up after {policy.attempts} attempts)")
