"""Rate limiting that finds the provider's ceiling instead of guessing it.

Three gates before each request: a concurrency window that grows while answers flow and halves
on a 429 (AIMD), a request bucket and a token bucket. The buckets start from the user's caps
(--rpm, --tpm) and learn the provider's own limits from its headers (OpenAI's
``x-ratelimit-*``, Anthropic's ``anthropic-ratelimit-*``). Servers that send no headers
(Ollama, vLLM, llama.cpp) are steered by 429/503 alone.

The window starts at the whole concurrency. Waiting for a first answer's headers before
opening it left most of the window idle for a model's latency at the start of every run; a
server over its limit says so at once instead (a 429 comes back in a round trip, not after the
model's latency, and carries the same headers), so at most the first wave beyond its allowance
is refused, and the buckets pace everything after it.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

ASSUMED_ANSWER_TOKENS = 256
"""Token-bucket charge for the answer when a request sets no max_tokens."""


def request_tokens(payload: dict[str, Any]) -> int:
    """What a provider's token limit charges: the prompt (~4 chars a token) plus max_tokens."""
    chars = sum(len(str(m.get("content", ""))) for m in payload.get("messages", []))
    chars += len(str(payload.get("system", "")))
    return chars // 4 + 1 + int(payload.get("max_tokens") or ASSUMED_ANSWER_TOKENS)


BURST_SECONDS = 0.2
"""A bucket holds this many seconds' worth: providers enforce per-minute limits in short
slices, and a full second's burst landing late in one slice doubles up with the next."""


@dataclass
class Bucket:
    """Units per minute, refilled continuously, starting empty: it is made when a run is
    already sending, or from a cap that should not be spent in one burst."""

    per_minute: float
    level: float = 0.0
    stamp: float = 0.0

    def wait_for(self, units: float, now: float) -> float:
        """Seconds until ``units`` are available; takes them (possibly into debt) at once."""
        rate = self.per_minute / 60.0
        capacity = max(rate * BURST_SECONDS, units)
        if self.stamp == 0.0:
            self.stamp = now
        self.level = min(capacity, self.level + (now - self.stamp) * rate)
        self.stamp = now
        self.level -= units
        return 0.0 if self.level >= 0 else -self.level / rate


def _limit(headers: httpx.Headers, *names: str) -> float | None:
    for name in names:
        value = headers.get(name)
        if value:
            try:
                return float(value)
            except ValueError:
                return None
    return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def reset_seconds(value: str | None) -> float | None:
    """OpenAI writes resets as durations (``1s``, ``6m0s``, ``120ms``)."""
    if not value:
        return None
    parts = _DURATION.findall(value)
    if not parts:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


class Limiter:
    """Shared by every request of one provider and model in a run."""

    def __init__(self, max_concurrency: int, rpm: float | None = None,
                 tpm: float | None = None) -> None:
        self.max_concurrency = max_concurrency
        self.window = float(max_concurrency)
        self.in_flight = 0
        self.user_rpm, self.user_tpm = rpm, tpm
        self.requests = Bucket(rpm) if rpm else None
        self.tokens = Bucket(tpm) if tpm else None
        self.paused_until = 0.0
        self.last_cut = 0.0
        self.throttled = 0
        self._changed = asyncio.Condition()

    async def acquire(self, tokens: int) -> None:
        """Wait for a place in the window, then for the buckets; never for long at once."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.in_flight < int(self.window))
            self.in_flight += 1
        now = time.monotonic()
        wait = max(0.0, self.paused_until - now)
        if self.requests is not None:
            wait = max(wait, self.requests.wait_for(1, now))
        if self.tokens is not None:
            wait = max(wait, self.tokens.wait_for(tokens, now))
        if wait > 0:
            await asyncio.sleep(wait)

    async def release(self) -> None:
        async with self._changed:
            self.in_flight -= 1
            self._changed.notify_all()

    def succeeded(self, headers: httpx.Headers) -> None:
        """Learn limits from headers; grow a cut window back by one per window of answers
        (AIMD)."""
        self._learn(headers)
        self.window = min(float(self.max_concurrency), self.window + 1.0 / self.window)

    def throttled_by_server(self, headers: httpx.Headers, wait: float | None) -> None:
        """A 429 (or a headerless 503): pause everyone for the server's wait. Where the limits
        are known, the buckets set the pace, so they are emptied and refill only from the end
        of the pause: a pause saved up as a burst would overrun the server's next slice. Where
        the limits are not known, the window is halved, once per burst (AIMD)."""
        self.throttled += 1
        now = time.monotonic()
        self._learn(headers)
        if wait:
            self.paused_until = max(self.paused_until, now + wait)
        buckets = [b for b in (self.requests, self.tokens) if b is not None]
        for bucket in buckets:
            bucket.level, bucket.stamp = min(bucket.level, 0.0), max(now, self.paused_until)
        if not buckets and now - self.last_cut > 1.0:
            self.window = max(1.0, self.window / 2)
            self.last_cut = now

    def overloaded(self, wait: float | None) -> None:
        """Anthropic's 529 is everyone's overload: pause, but keep the learned rate."""
        if wait:
            self.paused_until = max(self.paused_until, time.monotonic() + wait)

    def _learn(self, headers: httpx.Headers) -> None:
        rpm = _limit(headers, "x-ratelimit-limit-requests",
                     "anthropic-ratelimit-requests-limit")
        tpm = _limit(headers, "x-ratelimit-limit-tokens", "anthropic-ratelimit-tokens-limit",
                     "anthropic-ratelimit-input-tokens-limit")
        if rpm:
            rpm = min(rpm, self.user_rpm or rpm)
            if self.requests is None or self.requests.per_minute != rpm:
                self.requests = Bucket(rpm)
        if tpm:
            tpm = min(tpm, self.user_tpm or tpm)
            if self.tokens is None or self.tokens.per_minute != tpm:
                self.tokens = Bucket(tpm)
        remaining = _limit(headers, "x-ratelimit-remaining-requests")
        reset = reset_seconds(headers.get("x-ratelimit-reset-requests"))
        if remaining == 0 and reset:
            self.paused_until = max(self.paused_until, time.monotonic() + reset)
