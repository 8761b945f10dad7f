"""Reading what a server sends back, within bounds: a reply is untrusted bytes.

A body is read as it streams in, inflated here (so a small gzip body cannot become gigabytes)
and refused past ``MAX_REPLY_BYTES``; JSON too deep for the parser is an error, not a crash;
text a server wrote reaches a cell or a terminal only as printable text; token counts are
whole numbers in a sane range, since they feed the cost, the budget and later estimates.
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Iterator
from typing import Any

import httpx

from ..errors import ProviderError

MAX_REPLY_BYTES = 4 * 1024 * 1024
"""The longest reply read: an answer of 128,000 tokens (more than any model writes at once)
is about 512 KB, or 1.5 MB of JSON-escaped CJK; nothing real comes near 4 MB."""
TOO_LARGE = "the reply is over 4 MB, far longer than any answer; it was not read further"
HEADERS_TOO_LARGE = "the reply's headers are over 100 KB; it was not read further"
"""httpcore reads at most 100 KB of headers (h11's buffer), then fails the request."""
TOO_DEEP = "the server's reply nests JSON too deep to read, deeper than any answer does"
ACCEPTED_ENCODINGS = "gzip, deflate"
"""Sent as accept-encoding: the compressions ``Body`` inflates within its bound."""
MAX_TOKENS = 1_000_000
"""A usage count above this is no count: no prompt or answer we send comes near it."""
PIECE = 64 * 1024
MAX_REASON_CHARS = 300
MAX_LABEL_CHARS = 40

_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
"""C0 and C1 controls but tab, LF and CR: terminal escapes (ESC, CSI), NUL, bell."""
_SURROGATE = re.compile(r"[\ud800-\udfff]")
"""A surrogate left alone in a str (JSON pairs are joined on parsing) cannot be encoded."""
_SPACE = re.compile(r"\s+")


def headers_too_large(exc: httpx.RemoteProtocolError) -> bool:
    """Whether httpx gave up on headers past its buffer (h11 says "Receive buffer too long")."""
    return "buffer too long" in str(exc)


class Inflater:
    """Undoes a reply's content-encoding as its bytes arrive, in pieces of at most ``PIECE``
    bytes: 64 KB of gzip can hold 64 MB, which is never made at once."""

    def __init__(self, headers: httpx.Headers) -> None:
        encoding = headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("identity", "", "gzip", "x-gzip", "deflate"):
            raise ProviderError(f"the server compressed its reply as {encoding[:20]!r}, which "
                                f"was not asked for (only {ACCEPTED_ENCODINGS})")
        self._zlib = (None if encoding in ("identity", "")
                      else zlib.decompressobj(zlib.MAX_WBITS | 32))  # a gzip or zlib header

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        if self._zlib is None:
            yield chunk
            return
        try:
            while chunk:
                yield self._zlib.decompress(chunk, PIECE)
                chunk = self._zlib.unconsumed_tail
        except zlib.error:
            raise ProviderError("the server's compressed reply is damaged") from None


class Body:
    """A reply's bytes as they arrive, inflated; ``ProviderError`` past ``limit``."""

    def __init__(self, headers: httpx.Headers, limit: int = MAX_REPLY_BYTES) -> None:
        self._inflater = Inflater(headers)
        self._limit = limit
        self._parts: list[bytes] = []
        self._size = 0

    def add(self, chunk: bytes) -> None:
        for piece in self._inflater.feed(chunk):
            self._size += len(piece)
            if self._size > self._limit:
                raise ProviderError(TOO_LARGE)
            self._parts.append(piece)

    def content(self) -> bytes:
        return b"".join(self._parts)


def parse_json(content: bytes) -> Any:
    """The JSON value of a body; bytes that are not UTF-8 become U+FFFD, as a browser does.
    ``ValueError`` if it is not JSON, ``ProviderError`` if it nests too deep to parse."""
    try:
        return json.loads(content.decode("utf-8", "replace"))
    except RecursionError:
        raise ProviderError(TOO_DEEP) from None


def error_message(content: bytes, fallback: str) -> str:
    """The server's own words for an error, whichever common shape its body has."""
    try:
        body = parse_json(content)
    except (ValueError, ProviderError):
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and error.get("message"):
        return one_line(str(error["message"]))
    if isinstance(error, str):
        return one_line(error)
    return one_line(content[:MAX_REASON_CHARS].decode("utf-8", "replace")) or fallback


def printable(text: str) -> str:
    """Server text as data: control characters dropped, lone surrogates as U+FFFD."""
    return _SURROGATE.sub("\ufffd", _UNPRINTABLE.sub("", text))


def one_line(text: str) -> str:
    """Server text fit for one line of an error cell or a terminal."""
    text = _SPACE.sub(" ", printable(text)).strip()
    return text if len(text) <= MAX_REASON_CHARS else text[:MAX_REASON_CHARS - 3] + "..."


def label(value: Any) -> str | None:
    """A short word a server names something by (a finish reason, a status), or None."""
    return one_line(value)[:MAX_LABEL_CHARS] if isinstance(value, str) else None


def count(value: Any) -> int:
    """A usage count as a whole number from 0 to ``MAX_TOKENS``: a negative, textual or
    missing count is 0 (it must not hand budget back), a huge one the cap (a budget had
    better stop than trust it), a fraction rounded down."""
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return 0
    return int(min(MAX_TOKENS, max(0, value)))
