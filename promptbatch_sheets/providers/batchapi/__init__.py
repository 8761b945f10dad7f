"""Provider Batch APIs: the protocol both clients implement, and the HTTP they share.

A batch is sent once and read back hours later, perhaps on another machine, so a client keeps
no state beyond its connection: what a later collect needs is in the journal. Batches are few
and big, so this is a plain synchronous client; the realtime engine's pools are not needed.
"""

from __future__ import annotations

import json
import re
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlparse

import certifi
import httpx

from ...errors import BatchError, ProviderError
from ..base import Completion, Params
from ..redact import Redactor
from ..reply import (
    ACCEPTED_ENCODINGS,
    MAX_REPLY_BYTES,
    TOO_DEEP,
    Body,
    Inflater,
    count,
    error_message,
    one_line,
    parse_json,
)

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
    BatchError that says which call failed and why, scrubbed of the key; every reply is read
    within the timeout and the size cap, as a realtime reply is (``reply``)."""

    def __init__(self, base_url: str, model: str, api_key: str | None, timeout: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self._redact = Redactor(api_key)
        self._timeout = timeout
        tls = ssl.create_default_context(cafile=certifi.where())
        headers = {**self.auth_headers(api_key), "accept-encoding": ACCEPTED_ENCODINGS}
        self._http = httpx.Client(headers=headers, verify=tls,
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

    def _failed(self, what: str, status: int, content: bytes) -> BatchError:
        refused = " (the server refused the API key)" if status in (401, 403) else ""
        reason = self.scrub(error_message(content, httpx.codes.get_reason_phrase(status)))
        return BatchError(f"{what} failed: HTTP {status}{refused}: {reason}", status)

    def _unreachable(self, what: str, exc: httpx.HTTPError) -> BatchError:
        reason = self.scrub(str(exc) or type(exc).__name__)
        return BatchError(f"{what} failed: cannot reach {urlparse(self.base_url).netloc} "
                          f"({reason}). Run the same command again later.")

    def _late(self, what: str, started: float) -> None:
        if time.monotonic() - started > self._timeout:
            raise BatchError(f"{what} failed: the server did not send its reply within "
                             f"{self._timeout:g} s. Run the same command again later.")

    def call(self, what: str, method: str, url: str, **kwargs: Any) -> dict[str, Any]:
        """One request whose answer is a JSON object, read within the deadline and size cap."""
        started = time.monotonic()
        try:
            with self._http.stream(method, url, **kwargs) as response:
                body = Body(response.headers)
                for chunk in response.iter_raw():
                    body.add(chunk)
                    self._late(what, started)
                status = response.status_code
        except ProviderError as exc:
            raise BatchError(f"{what} failed: {exc}.") from None
        except httpx.HTTPError as exc:
            raise self._unreachable(what, exc) from None
        if status >= 400:
            raise self._failed(what, status, body.content())
        try:
            value = parse_json(body.content())
        except (ValueError, ProviderError):
            value = None
        if not isinstance(value, dict):
            raise BatchError(f"{what} failed: the server's answer is not a JSON object.")
        return value

    def read_results(self, what: str, url: str,
                     outcome: Callable[[dict[str, Any]], Outcome]) -> Iterator[tuple[str, Outcome]]:
        """(custom_id, outcome) of each line of a results file, as it streams in, scrubbed
        of the key. A line over the size cap, or one that is not a JSON object, is the
        failure of the request it names, if its opening names one; else it is skipped."""
        for raw, cut in self._lines(what, url):
            line = None if cut else _object(raw)
            if line is None:
                custom_id = _named(raw)
                if custom_id is not None:
                    yield custom_id, LINE_TOO_LARGE if cut else LINE_UNREADABLE
                continue
            try:
                result = outcome(line)
            except RecursionError:
                result = TOO_DEEP
            answer = (self._redact.completion(result) if isinstance(result, Completion)
                      else self.scrub(result))
            yield str(line.get("custom_id")), answer

    def _lines(self, what: str, url: str) -> Iterator[tuple[bytes, bool]]:
        """The lines of a results file, each with whether it was cut: a line longer than the
        size cap keeps only its opening, the rest is read past. Each line must arrive within
        the timeout, a whole reply's deadline."""
        try:
            with self._http.stream("GET", url) as response:
                if response.status_code >= 400:
                    body = Body(response.headers)
                    for chunk in response.iter_raw():
                        body.add(chunk)
                    raise self._failed(what, response.status_code, body.content())
                inflater = Inflater(response.headers)
                line, cut, started = bytearray(), False, time.monotonic()
                for chunk in response.iter_raw():
                    for piece in inflater.feed(chunk):
                        *ends, rest = piece.split(b"\n")
                        for end in ends:
                            if not cut:
                                line += end
                            yield bytes(line), cut or len(line) > MAX_REPLY_BYTES
                            line, cut, started = bytearray(), False, time.monotonic()
                        if not cut:
                            line += rest
                            if len(line) > MAX_REPLY_BYTES:
                                del line[OPENING:]
                                cut = True
                    self._late(what, started)
                if line.strip() or cut:
                    yield bytes(line), cut
        except ProviderError as exc:
            raise BatchError(f"{what} failed: {exc}.") from None
        except httpx.HTTPError as exc:
            raise self._unreachable(what, exc) from None

    def scrub(self, reason: str) -> str:
        """Server text for a cell or a terminal: one printable line, without the key."""
        return self._redact(one_line(reason))


OPENING = 4096
"""Bytes of a cut results line kept to find the request it answers."""
LINE_TOO_LARGE = "its result is over 4 MB, far longer than any answer"
LINE_UNREADABLE = "its result line is not a JSON object"
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,200}")


def _object(raw: bytes) -> dict[str, Any] | None:
    if not raw.strip():
        return None
    try:
        value = parse_json(raw)
    except (ValueError, ProviderError):
        return None
    return value if isinstance(value, dict) else None


def _named(raw: bytes) -> str | None:
    """The custom_id a results line names in its opening, if it does."""
    found = _CUSTOM_ID.search(raw[:OPENING])
    return found.group(1).decode() if found else None


def ident(value: Any, what: str) -> str:
    """An id the server gave (a batch, a file): it goes into URLs and the journal, so it must
    be an id, not a path or a paragraph."""
    if isinstance(value, str) and _ID.fullmatch(value):
        return value
    raise BatchError(f"{what} failed: the server's answer holds no valid id "
                     f"({one_line(str(value))[:40]!r}).")


def counts(value: Any) -> dict[str, int]:
    """A batch's request counts, as whole numbers (the server's; a few names at most)."""
    if not isinstance(value, dict):
        return {}
    return {one_line(str(k))[:40]: count(v) for k, v in list(value.items())[:10]}


def error_reason(error: Any, fallback: str) -> str:
    """``message (code)`` of an error object, whichever of the common shapes it has."""
    if isinstance(error, dict) and isinstance(error.get("error"), dict):
        error = error["error"]  # Anthropic wraps it: {"type": "error", "error": {...}}
    if not isinstance(error, dict):
        return fallback
    message = str(error.get("message") or fallback)
    code = error.get("code") or error.get("type")
    return f"{message} ({code})" if code else message
