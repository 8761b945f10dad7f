"""What every HTTP provider shares: one JSON POST, the error taxonomy, retries, redaction."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any

import httpx

from ..limits import Limiter, request_tokens
from .base import Completion, Params, ProviderError, RetryPolicy, SchemaMode
from .retry import RETRY_STATUSES, Retryable, server_wait, with_retries


def redact(text: str, secret: str | None) -> str:
    """Remove a key from text a server sent back, before it can reach a cell or a log."""
    return text.replace(secret, "***") if secret else text


def error_message(response: httpx.Response) -> str:
    """The server's own words for an error, whichever common shape its body has."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip() or response.reason_phrase
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return str(error["message"])
    if isinstance(error, str):
        return error
    return response.text[:200].strip()


class HTTPProvider(ABC):
    """Base of the wire-protocol providers: subclasses name the endpoint and the auth headers,
    build the payload and parse the body; retries, limits and errors live here once."""

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
        self._headers = self.auth_headers(api_key)
        self._key = api_key
        self._policy = policy or RetryPolicy()
        self._on_retry = on_retry

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
        """POST ``payload`` with retries and return the parsed completion."""

        async def attempt() -> Completion:
            return parse(await self._post(payload))

        return await with_retries(attempt, self._policy, self._on_retry)

    def _least_busy(self) -> int:
        """The pool with the fewest requests in flight: a request never queues behind a slow
        one while another pool has a free connection."""
        return min(range(len(self._busy)), key=self._busy.__getitem__)

    async def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Return the JSON body; raise Retryable for passing faults, ProviderError otherwise."""
        ticket = await self.limiter.acquire(request_tokens(payload))
        try:
            pick = self._least_busy()
            self._busy[pick] += 1
            try:
                response = await self._clients[pick].post(self._url, json=payload,
                                                          headers=self._headers)
            finally:
                self._busy[pick] -= 1
        finally:
            await self.limiter.release(ticket)
        status = response.status_code
        if status in RETRY_STATUSES:
            reason = redact(error_message(response), self._key)
            wait = server_wait(response.headers)
            if status == 529:
                self.limiter.overloaded(wait)
            elif status in (429, 503):
                self.limiter.throttled_by_server(response.headers, wait, ticket)
            raise Retryable(f"HTTP {status}: {reason}", wait)
        if status >= 400:
            refused = " (the server refused the API key)" if status in (401, 403) else ""
            reason = redact(error_message(response), self._key)
            raise ProviderError(f"HTTP {status}{refused}: {reason}")
        try:
            body = json.loads(response.content)
        except ValueError:
            raise Retryable("the server sent a body that is not JSON") from None
        if not isinstance(body, dict):
            raise Retryable("the server sent JSON that is not an object")
        self.limiter.succeeded(response.headers, ticket)
        return body
