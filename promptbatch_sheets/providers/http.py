"""What every HTTP provider shares: one JSON POST, the error taxonomy, retries, redaction.

Every reply passes through ``HTTPProvider._exchange`` and ``send``: read within a deadline
and a size cap, parsed within bounds (``reply``), scrubbed of the key (``redact``), so no
provider, answer, refusal or error text can carry more than that.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from ..errors import ProviderError
from ..limits import Limiter, request_tokens
from .base import Completion, Params, RetryPolicy, SchemaMode
from .redact import Redactor
from .reply import (
    ACCEPTED_ENCODINGS,
    HEADERS_TOO_LARGE,
    TOO_DEEP,
    Body,
    error_message,
    headers_too_large,
    parse_json,
)
from .retry import (
    RETRY_STATUSES,
    Breaker,
    GaveUp,
    Held,
    Retryable,
    server_wait,
    with_retries,
)

QUOTA = b'"insufficient_quota"'
"""OpenAI's code for a 429 that is about billing, not rate: no retry can help it."""
DEFAULT_DEADLINE = 120.0
"""For clients made with no timeout: a request still ends."""


class HTTPProvider(ABC):
    """Base of the wire-protocol providers: subclasses name the endpoint and the auth headers,
    build the payload and parse the body; retries, limits and errors live here once.

    The clients' timeout is each request's deadline, from connecting to the reply's last
    byte (httpx's own timeouts are per read: a byte every few seconds would never trip them),
    and the longest a row is retried after its first failure.
    """

    path = ""

    def __init__(
        self, clients: Sequence[httpx.AsyncClient], *, label: str, base_url: str, model: str,
        api_key: str | None = None, policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None, limiter: Limiter | None = None,
        schema_mode: SchemaMode = "native",
    ) -> None:
        self.label = label
        self.model = model
        self.schema_mode = schema_mode
        self.limiter = limiter or Limiter()
        self._clients = list(clients)
        self._busy = [0] * len(self._clients)
        self._url = base_url.rstrip("/") + self.path
        self._headers = {**self.auth_headers(api_key), "accept-encoding": ACCEPTED_ENCODINGS}
        self._redact = Redactor(api_key)
        self._policy = policy or RetryPolicy()
        self._on_retry = on_retry
        self._deadline = self._clients[0].timeout.read or DEFAULT_DEADLINE
        self._breaker = Breaker(self._deadline)

    @property
    def window(self) -> int:
        return self.limiter.window

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        """Headers that carry the key; never logged."""
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    @abstractmethod
    async def complete(self, prompt: str, params: Params) -> Completion:
        """Build this protocol's payload for ``prompt`` and ``send`` it."""

    async def send(
        self, payload: dict[str, Any], parse: Callable[[dict[str, Any]], Completion]
    ) -> Completion:
        """POST ``payload`` with retries and return the parsed completion, scrubbed."""

        while True:
            probe = await self._breaker.enter()

            async def attempt(probe: bool = probe) -> Completion:
                body = await self._post(payload, probe)
                try:
                    return self._redact.completion(parse(body))
                except RecursionError:
                    raise ProviderError(TOO_DEEP) from None
                except ProviderError as exc:  # a refusal, in the model's words
                    raise ProviderError(self._redact(str(exc))) from None

            try:
                completion = await with_retries(attempt, self._policy, self._on_retry,
                                                self._deadline)
            except Held:
                continue  # the breaker opened meanwhile: wait for its probe, then start again
            except GaveUp as exc:
                self._breaker.gave_up(exc, probe)
                raise
            except BaseException:
                self._breaker.left(probe)
                raise
            self._breaker.answered(probe)
            return completion

    def _least_busy(self) -> int:
        """The pool with the fewest requests in flight: a request never queues behind a slow
        one while another pool has a free connection."""
        return min(range(len(self._busy)), key=self._busy.__getitem__)

    async def _post(self, payload: dict[str, Any], probe: bool) -> dict[str, Any]:
        """Return the JSON body; raise Retryable for passing faults, ProviderError otherwise,
        Held when the breaker opened while the request waited its turn (unless it is the
        probe)."""
        ticket = await self.limiter.acquire(request_tokens(payload))
        try:
            if not probe:
                self._breaker.hold()
            pick = self._least_busy()
            self._busy[pick] += 1
            try:
                status, headers, content = await asyncio.wait_for(
                    self._exchange(self._clients[pick], payload), self._deadline)
            except TimeoutError:
                raise Retryable("the server did not send its whole reply within "
                                f"{self._deadline:g} s") from None
            finally:
                self._busy[pick] -= 1
        finally:
            await self.limiter.release(ticket)
        if status in RETRY_STATUSES:
            reason = self._said(status, content)
            if status == 429 and QUOTA in content:
                raise ProviderError(f"HTTP {status}: {reason}")
            wait = server_wait(headers)
            # the limiter pauses every request for a server's wait: never for longer than a
            # retry would wait ("retry-after: 86400" must not stop a run for a day)
            pause = None if wait is None else min(wait, self._policy.max_delay)
            if status == 529:
                self.limiter.overloaded(pause)
            elif status in (429, 503):
                self.limiter.throttled_by_server(headers, pause, ticket, limited=status == 429)
            raise Retryable(f"HTTP {status}: {reason}", wait, rate_limited=status == 429)
        if status >= 400:
            refused = " (the server refused the API key)" if status in (401, 403) else ""
            raise ProviderError(f"HTTP {status}{refused}: {self._said(status, content)}")
        try:
            body = parse_json(content)
        except ValueError:
            raise Retryable("the server sent a body that is not JSON") from None
        if not isinstance(body, dict):
            raise Retryable("the server sent JSON that is not an object")
        self.limiter.succeeded(headers, ticket)
        return body

    async def _exchange(self, client: httpx.AsyncClient,
                        payload: dict[str, Any]) -> tuple[int, httpx.Headers, bytes]:
        """One POST and its reply, read as it streams in and never past the size cap."""
        try:
            async with client.stream("POST", self._url, json=payload,
                                     headers=self._headers) as response:
                body = Body(response.headers)
                async for chunk in response.aiter_raw():
                    body.add(chunk)
                return response.status_code, response.headers, body.content()
        except httpx.RemoteProtocolError as exc:
            if headers_too_large(exc):
                raise ProviderError(HEADERS_TOO_LARGE) from None
            raise

    def _said(self, status: int, content: bytes) -> str:
        """The server's reason for an error status, fit for a cell and scrubbed of the key."""
        return self._redact(error_message(content, httpx.codes.get_reason_phrase(status)))
