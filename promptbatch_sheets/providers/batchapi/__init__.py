"""Provider Batch APIs: the protocol both clients implement, and the HTTP they share.

A batch is sent once and read back hours later, perhaps on another machine, so a client keeps
no state beyond its connection: what a later collect needs is in the journal. Batches are few
and big, so this is a plain synchronous client; the realtime engine's pools are not needed.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import certifi
import httpx

from ...errors import BatchError
from ..base import Completion, Params
from ..http import error_message, redact

Outcome = Completion | str
"""One request's result: the answer, or why there is none (for its row's #ERROR cell)."""


@dataclass(frozen=True)
class Remote:
    """A batch as the provider reports it."""

    status: str
    ended: bool
    """No request of it will change any more: its results can be read."""
    counts: dict[str, int]
    error: str | None = None
    """Why the batch as a whole gave no answers (it failed validation, say)."""
    results: tuple[str, ...] = ()
    """Where its result lines are: file ids (OpenAI) or the results URL (Anthropic)."""


class BatchAPI(Protocol):
    """What a Batch API run (batchapi.py) needs of a provider: encode, create, poll, read."""

    @property
    def max_requests(self) -> int:
        """Requests one batch may hold."""
        ...

    @property
    def max_bytes(self) -> int:
        """Bytes of encoded requests one batch may hold."""
        ...

    def encode(self, custom_id: str, prompt: str, params: Params) -> bytes:
        """One request as the provider's batch input holds it, with the realtime body."""
        ...

    def create(self, requests: Sequence[bytes]) -> str:
        """Send one batch of encoded requests; return the provider's batch id."""
        ...

    def poll(self, batch_id: str) -> Remote: ...

    def results(self, remote: Remote) -> Iterator[tuple[str, Outcome]]:
        """(custom_id, outcome) of an ended batch, in the provider's order."""
        ...

    def close(self) -> None: ...


def split(requests: Sequence[tuple[str, bytes]], max_requests: int,
          max_bytes: int) -> Iterator[list[tuple[str, bytes]]]:
    """Consecutive slices within both limits; each request costs its bytes plus a separator."""
    chunk: list[tuple[str, bytes]] = []
    size = 0
    for item in requests:
        cost = len(item[1]) + 1
        if chunk and (len(chunk) >= max_requests or size + cost > max_bytes):
            yield chunk
            chunk, size = [], 0
        chunk.append(item)
        size += cost
    if chunk:
        yield chunk


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


class BatchClient:
    """One HTTP client carrying the provider's auth headers. Every failure becomes a
    BatchError that says which call failed and why, scrubbed of the key."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._key = api_key
        tls = ssl.create_default_context(cafile=certifi.where())
        self._http = httpx.Client(headers=self.auth_headers(api_key), verify=tls,
                                  timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)))

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"authorization": f"Bearer {api_key}"} if api_key else {}

    def close(self) -> None:
        self._http.close()

    def check_same_server(self, url: str) -> None:
        """Result URLs come from the server: the key goes nowhere but where it was sent."""
        if urlparse(url).netloc != urlparse(self.base_url).netloc:
            raise BatchError(f"The batch's results are at {urlparse(url).netloc}, not at "
                             f"{urlparse(self.base_url).netloc}; the key is not sent there.")

    def _failed(self, what: str, response: httpx.Response) -> BatchError:
        status = response.status_code
        refused = " (the server refused the API key)" if status in (401, 403) else ""
        reason = redact(error_message(response), self._key)
        return BatchError(f"{what} failed: HTTP {status}{refused}: {reason}", status)

    def _unreachable(self, what: str, exc: httpx.HTTPError) -> BatchError:
        reason = redact(str(exc) or type(exc).__name__, self._key)
        return BatchError(f"{what} failed: cannot reach {urlparse(self.base_url).netloc} "
                          f"({reason}). Run the same command again later.")

    def call(self, what: str, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One request whose answer is a JSON object."""
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise self._unreachable(what, exc) from None
        if response.status_code >= 400:
            raise self._failed(what, response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise BatchError(f"{what} failed: the server's answer is not a JSON object.")
        return body

    def lines(self, what: str, url: str) -> Iterator[dict[str, Any]]:
        """The JSON lines of a results file, read as they stream in."""
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._failed(what, response)
                for line in response.iter_lines():
                    if line.strip():
                        yield _object(what, line)
        except httpx.HTTPError as exc:
            raise self._unreachable(what, exc) from None

    def scrub(self, reason: str) -> str:
        return redact(reason, self._key)


def _object(what: str, line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise BatchError(f"{what} failed: a results line is not a JSON object: {line[:80]!r}")
    return value


def error_reason(error: Any, fallback: str) -> str:
    """``message (code)`` of an error object, whichever of the common shapes it has."""
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]  # Anthropic wraps it: {"type": "error", "error": {...}}
    if not isinstance(error, dict):
        return fallback
    message = str(error.get("message") or fallback)
    code = error.get("code") or error.get("type")
    return f"{message} ({code})" if code else message
