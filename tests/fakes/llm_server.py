"""A real HTTP fake of an OpenAI-compatible and an Anthropic Messages LLM API.

The server is a Starlette app served by uvicorn on ``127.0.0.1`` in a background thread
(OS-assigned port by default). It is used by the test suite and by the throughput benchmark.

Routes
------
* ``POST /v1/chat/completions`` -- OpenAI-compatible chat completions.
* ``POST /v1/messages`` -- Anthropic Messages API (requires ``x-api-key`` and
  ``anthropic-version`` headers; a missing one gives 400 ``invalid_request_error``).
* ``GET /v1/models`` -- OpenAI-style model list.
* ``GET /_fake/stats`` -- the counters and the latency draws as JSON (``count_ok``,
  ``count_429``, ``requests``, ``latencies``, ``time_scale``), so a client in another process
  (the benchmark) can read them. Not recorded in ``requests``.

Request handling order for the two chat routes
----------------------------------------------
1. Request validation (Anthropic headers, JSON body, ``messages``; Anthropic ``max_tokens``).
   Invalid requests get 400 and do *not* consume a fault.
2. Faults: one entry of ``config.faults`` is popped (the list is consumed in place), then, if the
   script gave nothing, ``config.fault_for(prompt)`` is asked. Faulted requests bypass the rate
   limiter and the latency sleep (except ``hang``, which continues normally after its sleep).
3. Rate limiting (only when ``rpm``/``tpm`` is set), see :class:`_WindowLimiter`. With
   ``change_after=(n, rpm, tpm)`` the limits become ``rpm``/``tpm`` once ``n`` requests were
   answered (a provider lowering a tier mid-run); the headers tell the new limits from then on.
4. Latency: a seeded lognormal draw ``median * exp(sigma * N(0, 1))``, drawn in admission order,
   recorded unscaled in ``FakeLLMServer.latencies`` and slept for ``draw / time_scale`` seconds.
   With ``slots=N`` the server is saturating, as llama.cpp or Ollama are: N requests are served
   at once and the rest wait in a FIFO queue first; each wait is recorded in ``queue_waits``
   (real seconds), and ``max_in_flight`` is the most requests the server held at once.
5. The answer: ``config.answer(prompt)`` or ``"Answer: " + prompt[:60]``. A structured request
   (OpenAI ``response_format`` of type ``json_schema``, or Anthropic ``tools``) gets a JSON
   object instead: ``config.structured_answer(prompt, schema)`` or a deterministic value that
   validates against the schema (see ``tests/fakes/structured.py``). OpenAI sends it as the
   message content; Anthropic as a ``tool_use`` block named after the forced tool (the
   ``tool_choice`` tool, else the first), with ``stop_reason`` ``"tool_use"``. A hook that
   returns a string sends that string as plain text instead (content, or a text block).

Fault entries
-------------
``"ok"`` (no fault, useful as a placeholder in a script), ``"429"`` / ``"429:ms=200"``,
``"500"``, ``"502"``, ``"503"``, ``"529"``, ``"malformed"``, ``"empty"``, ``"hang"`` /
``"hang:s=5"`` (default 30 s, not scaled; cut short when the server stops), ``"reset"`` and
``"badjson"``. An unknown entry is answered with a 500 whose message names the bad entry.

Hostile replies, for the client's bounds (``record["sent"]`` counts the body bytes the server
managed to send for the streamed ones):

* ``"429:s=20"`` -- a 429 with only ``retry-after: 20`` (whole seconds, no ``-ms``);
  ``"quota"`` -- OpenAI's 429 ``insufficient_quota`` (billing, not a rate: retrying is futile).
* ``"reflect"`` -- a 200 whose answer quotes the request's key (``authorization`` or
  ``x-api-key``): whole, as the header, and as prefix...suffix and middle fragments, the way a
  reflecting proxy or a careless error page would; ``"reflect:status=401"`` sends that text as
  the error message of a 401 instead, ``"reflect:in=refusal"`` as an OpenAI ``refusal``.
* ``"drip:s=1,n=100"`` -- headers at once, then ``n`` bytes of whitespace one every ``s``
  seconds, then the answer: each read is quick, the whole reply slow.
* ``"huge:mb=50"`` -- a 200 answer of ``mb`` MB, streamed in 64 KB chunks;
  ``"gzip:mb=200"`` -- the same, gzip-compressed (``content-encoding: gzip``): a small body
  that inflates to ``mb`` MB.
* ``"deep:n=100000"`` -- a 200 JSON body nested ``n`` arrays deep.
* ``"hostile"`` -- a 200 answer with an invalid UTF-8 byte, a lone surrogate escape, NUL,
  terminal escape sequences and rich markup; ``"hostile:status=400"`` as an error message.
* ``"usage:prompt=-5,completion=1e30"`` -- a normal answer whose usage counts are those JSON
  literals (any JSON: ``"abc"``, ``[1]``, ``true``).
* ``"headers:kb=200"`` -- a normal answer with one response header of ``kb`` KB.

``badjson`` is not an HTTP failure: the request is rate limited, delayed and answered with 200
like any other, but its reply is prose that holds no JSON object (as a text block, not a tool
call, on the Anthropic route), so a client's schema validation and repair retry can be tested.

``reset`` really resets the TCP connection: uvicorn answers an exception raised before the
response starts with a plain-text 500, so instead the outer ASGI wrapper stores uvicorn's
per-request cycle object (the ``__self__`` of the ``send`` callable) in the scope; the handler
takes its ``transport``, sets ``SO_LINGER`` to zero and aborts it, so the client sees a
connection reset (httpx raises a ``TransportError`` such as ``ReadError`` or
``RemoteProtocolError``). Should that object ever not be reachable (another server or a future
uvicorn) the fault falls back to a 500 with ``connection: close``.

Token estimates
---------------
``prompt_tokens``: total characters of all message texts (plus the Anthropic system prompt)
``// 4 + 1``. ``completion_tokens``: ``config.completion_tokens`` or ``len(reply) // 4 + 1``
(a structured reply counts as its compact JSON text).
For the token bucket a request costs ``prompt_tokens + max_tokens`` when the request carries
``max_tokens`` (as OpenAI does), else ``prompt_tokens + completion_tokens`` (then ``answer``
is called before admission, so it may also run for requests that end up rate limited).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import itertools
import json
import math
import random
import signal
import socket
import struct
import sys
import threading
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from tests.fakes.structured import value_for

__all__ = ["FakeLLMConfig", "FakeLLMServer", "main", "reflection"]

DEFAULT_MODEL = "fake-model"
DEFAULT_HANG_S = 30.0
BAD_JSON_REPLY = "Sure! The sentiment is positive and I would score it highly."
HOSTILE_TEXT = ("nul\x00 esc\x1b[2J\x1b]8;;http://127.0.0.1/x\x07link\x1b]8;;\x07 "
                "markup [/] [/bold] [link=http://127.0.0.1/]x[/link] lone \ud800 end")
"""What the ``hostile`` fault says, besides an invalid UTF-8 byte: NUL, ANSI and OSC 8
escapes, rich markup with unmatched closing tags, a lone surrogate."""
CHUNK = 64 * 1024
_CYCLE_KEY = "fake_llm.cycle"
_RECORD_KEY = "fake_llm.record"
_JSON = "application/json"


@dataclass
class FakeLLMConfig:
    """Behaviour of a :class:`FakeLLMServer`. Mutable: tests may change it between runs."""

    latency_median_s: float = 0.0
    latency_sigma: float = 0.0
    seed: int = 1
    time_scale: float = 1.0
    rpm: int | None = None
    tpm: int | None = None
    answer: Callable[[str], str] | None = None
    completion_tokens: int | None = None
    faults: list[str] = field(default_factory=list)
    send_ratelimit_headers: bool = True
    fault_for: Callable[[str], str | None] | None = None
    structured_answer: Callable[[str, dict[str, Any]], Any] | None = None
    """(prompt, JSON schema) -> the JSON value of a structured reply, or a string sent as
    plain text; default: a value built from the schema (``tests.fakes.structured``)."""
    cut_at_max_tokens: bool = False
    """Cut a text reply longer than the request's max_tokens (4 characters a token) and say
    so, as real servers do: OpenAI ``finish_reason`` ``length``, Anthropic ``stop_reason``
    ``max_tokens``. Off by default: other tests send small caps and want whole replies."""
    scale_ratelimit_headers: bool = False
    """Under ``time_scale``, report ``x-ratelimit-limit-*`` per *real* minute
    (``rpm * time_scale``), consistent with the real-second ``reset`` and ``retry-after``
    values; off by default, when they carry the configured (simulated) ``rpm``/``tpm``."""
    slots: int | None = None
    """Requests served at once; the others queue (None: every request is served at once)."""
    change_after: tuple[int, int | None, int | None] | None = None
    """(answered, rpm, tpm): the limits from the moment ``answered`` requests were answered."""


# --------------------------------------------------------------------------- helpers


def _text_of(content: Any) -> str:
    """Text of a message ``content``: a string or a list of ``{"type": "text"}`` blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            str(block.get("text", ""))
            for block in content
            if isinstance(block, dict) and block.get("type", "text") == "text"
        ]
        return "".join(parts)
    return ""


def _last_user_text(messages: list[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return _text_of(message.get("content"))
    return ""


def _prompt_tokens(messages: list[Any], system: Any = None) -> int:
    chars = len(_text_of(system))
    for message in messages:
        if isinstance(message, dict):
            chars += len(_text_of(message.get("content")))
    return chars // 4 + 1


def _format_reset(seconds: float) -> str:
    """OpenAI style reset duration: ``"120ms"``, ``"1s"``, ``"1.5s"``, ``"6m0s"``."""
    ms = max(1, math.ceil(seconds * 1000))
    if ms < 1000:
        return f"{ms}ms"
    minutes, rest_ms = divmod(ms, 60_000)
    secs = f"{rest_ms / 1000:g}s"
    return f"{minutes}m{secs}" if minutes else secs


def _reply_text(reply: Any) -> str:
    """A reply as the text a client receives: strings as they are, JSON values compact."""
    if isinstance(reply, str):
        return reply
    return json.dumps(reply, separators=(",", ":"), ensure_ascii=False)


def _response_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The schema of an OpenAI ``response_format`` of type ``json_schema``, if any."""
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return None
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    return schema if isinstance(schema, dict) else {}


def _forced_tool(body: dict[str, Any]) -> dict[str, Any]:
    """``schema`` and ``tool`` for an Anthropic request with tools: the ``tool_choice`` tool
    (or the first) is the one the fake calls."""
    tools = [t for t in body.get("tools") or [] if isinstance(t, dict)]
    if not tools:
        return {}
    choice = body.get("tool_choice")
    wanted = choice.get("name") if isinstance(choice, dict) else None
    tool = next((t for t in tools if t.get("name") == wanted), tools[0])
    schema = tool.get("input_schema")
    return {"schema": schema if isinstance(schema, dict) else {}, "tool": str(tool.get("name"))}


def reflection(header: str) -> str:
    """What the ``reflect`` fault says about a request's key header."""
    key = header.removeprefix("Bearer ")
    return (f"You sent {header!r}. Key: {key}. Incorrect API key provided: "
            f"{key[:10]}...{key[-9:]}; the middle reads {key[5:14]}.")


def _parse_fault(entry: str) -> tuple[str, dict[str, str]]:
    name, _, rest = entry.strip().partition(":")
    params: dict[str, str] = {}
    for item in rest.split(","):
        key, sep, value = item.partition("=")
        if sep:
            params[key.strip()] = value.strip()
    return name.strip().lower(), params


def _json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, status_code=status, headers=headers, media_type=_JSON)


def _openai_error(message: str, type_: str, code: str | None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _anthropic_error(type_: str, message: str) -> Any:
    return {"type": "error", "error": {"type": type_, "message": message}}


_SERVER_ERRORS: dict[int, tuple[str, str, str]] = {
    # status: (openai message, anthropic error type, anthropic message)
    500: (
        "The server had an error while processing your request. Sorry about that!",
        "api_error",
        "Internal server error",
    ),
    502: ("Bad gateway.", "api_error", "Bad gateway"),
    503: (
        "The engine is currently overloaded, please try again later.",
        "overloaded_error",
        "Service unavailable",
    ),
    529: ("The server is overloaded, please try again later.", "overloaded_error", "Overloaded"),
}


class _NoResponse(Response):
    """Returned after the connection was aborted; uvicorn drops whatever it would send."""

    def __init__(self) -> None:
        super().__init__(b"", status_code=500)


@dataclass
class _Admission:
    ok: bool
    kind: str  # "" when admitted, else "requests" or "tokens"
    reset_s: float  # real (client-visible) seconds until the current window ends
    used_tokens: int
    requested_tokens: int
    req_limit: int | None
    req_remaining: int | None
    tok_limit: int | None
    tok_remaining: int | None


class _WindowLimiter:
    """Fixed windows of ``1 / time_scale`` real seconds (one simulated second each).

    Each window admits ``max(1, rpm // 60)`` requests and ``max(1, tpm // 60)`` tokens. Every
    request, admitted or rejected, counts against the request limit (as providers do); only
    admitted requests consume tokens. A request whose cost alone exceeds the token allowance
    is admitted when it is the first to use tokens in its window, so it cannot starve forever.
    The first window starts at the first request after a (re)build, which keeps bursts fired
    right after ``start()``/``reset()`` inside a single window.
    """

    def __init__(self, rpm: int | None, tpm: int | None, time_scale: float) -> None:
        self.key = (rpm, tpm, time_scale)
        self.rpm = rpm
        self.tpm = tpm
        self.window_s = 1.0 / time_scale
        self.req_limit = max(1, rpm // 60) if rpm else None
        self.tok_limit = max(1, tpm // 60) if tpm else None
        self.t0: float | None = None
        self.index = -1
        self.req_used = 0
        self.tok_used = 0

    def admit(self, cost: int, now: float) -> _Admission:
        if self.t0 is None:
            self.t0 = now
        index = int((now - self.t0) / self.window_s)
        if index != self.index:
            self.index = index
            self.req_used = 0
            self.tok_used = 0
        reset_s = self.t0 + (index + 1) * self.window_s - now
        kind = ""
        if self.req_limit is not None and self.req_used >= self.req_limit:
            kind = "requests"
        elif (
            self.tok_limit is not None
            and self.tok_used > 0
            and self.tok_used + cost > self.tok_limit
        ):
            kind = "tokens"
        used_before = self.tok_used
        self.req_used += 1
        if not kind:
            self.tok_used += cost
        return _Admission(
            ok=not kind,
            kind=kind,
            reset_s=max(reset_s, 0.001),
            used_tokens=used_before,
            requested_tokens=cost,
            req_limit=self.rpm,
            req_remaining=(
                None if self.req_limit is None else max(0, self.req_limit - self.req_used)
            ),
            tok_limit=self.tpm,
            tok_remaining=(
                None if self.tok_limit is None else max(0, self.tok_limit - self.tok_used)
            ),
        )


def _ratelimit_headers(adm: _Admission, limit_scale: float = 1.0) -> dict[str, str]:
    """OpenAI ``x-ratelimit-*`` headers. ``limit`` is the per-minute figure (rpm/tpm, times
    ``limit_scale``); ``remaining`` and ``reset`` describe the current one-second window."""
    headers: dict[str, str] = {}
    reset = _format_reset(adm.reset_s)
    if adm.req_limit is not None:
        headers["x-ratelimit-limit-requests"] = f"{round(adm.req_limit * limit_scale)}"
        headers["x-ratelimit-remaining-requests"] = str(adm.req_remaining)
        headers["x-ratelimit-reset-requests"] = reset
    if adm.tok_limit is not None:
        headers["x-ratelimit-limit-tokens"] = f"{round(adm.tok_limit * limit_scale)}"
        headers["x-ratelimit-remaining-tokens"] = str(adm.tok_remaining)
        headers["x-ratelimit-reset-tokens"] = reset
    return headers


# --------------------------------------------------------------------------- server


class FakeLLMServer:
    """The fake server. Use as a context manager or call :meth:`start` / :meth:`stop`.

    Records (cleared by :meth:`reset`):

    * ``requests`` -- every request received on the three routes, as
      ``{"path", "headers" (lower-case names), "json" (parsed body or None), "status", "fault"}``;
      the record is appended on arrival and ``status`` filled in when answered (``None`` for a
      hanging request not yet answered and for a ``reset``).
    * ``prompts`` -- the last user message of every chat request answered normally with 200
      (the ``malformed`` and ``empty`` faults are 200s too but are not listed).
    * ``count_ok`` (normal 200 answers), ``count_429`` (scripted and rate-limiter 429s).
    * ``latencies`` -- the unscaled latency draws, in draw order.
    * ``arrivals`` -- when each chat request arrived, in seconds since the first; ``finishes``
      -- when each normal 200 answer was sent, on the same clock;
      ``changed_at`` -- when ``change_after`` took effect, on the same clock (None before).
    * ``queue_waits``, ``max_in_flight`` -- see ``slots``.
    """

    def __init__(
        self, config: FakeLLMConfig | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.config = config if config is not None else FakeLLMConfig()
        self.host = host
        self.port = port
        self.requests: list[dict[str, Any]] = []
        self.prompts: list[str] = []
        self.latencies: list[float] = []
        self.arrivals: list[float] = []
        self.finishes: list[float] = []
        self.queue_waits: list[float] = []
        self.changed_at: float | None = None
        self.in_flight = 0
        self.max_in_flight = 0
        self.count_429 = 0
        self.count_ok = 0
        self._origin: float | None = None
        self._slots: asyncio.Semaphore | None = None
        self._lock = threading.Lock()
        self._rng = random.Random(self.config.seed)
        self._limiter: _WindowLimiter | None = None
        self._ids = itertools.count(1)
        self._stopping = False
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._app = Starlette(
            routes=[
                Route("/v1/chat/completions", self._openai_chat, methods=["POST"]),
                Route("/v1/messages", self._anthropic_messages, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/_fake/stats", self._stats, methods=["GET"]),
            ]
        )

    # ------------------------------------------------------------------ lifecycle

    @property
    def root_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def start(self, timeout: float = 10.0) -> FakeLLMServer:
        if self._thread is not None:
            raise RuntimeError("FakeLLMServer already started")
        http = "httptools" if importlib.util.find_spec("httptools") is not None else "h11"
        uv_config = uvicorn.Config(
            self._asgi,
            host=self.host,
            port=self.port,
            loop="asyncio",
            http=http,
            lifespan="off",
            interface="asgi3",
            log_level="warning",
            access_log=False,
            timeout_graceful_shutdown=2,
            backlog=4096,
        )
        server = uvicorn.Server(uv_config)
        self._stopping = False
        self._server = server
        self._thread = threading.Thread(target=server.run, name="fake-llm-server", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not server.started:
            if not self._thread.is_alive():
                self._thread = None
                raise RuntimeError("fake LLM server thread exited before it started")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("fake LLM server did not start in time")
            time.sleep(0.005)
        self.port = int(server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._thread = None
        self._server = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def reset(self) -> None:
        """Clear records and counters, reseed the latency RNG from ``config.seed`` and restart
        the rate-limit windows. ``config`` (including ``faults``) is left alone."""
        with self._lock:
            self.requests.clear()
            self.prompts.clear()
            self.latencies.clear()
            self.arrivals.clear()
            self.finishes.clear()
            self.queue_waits.clear()
            self.changed_at = None
            self.max_in_flight = 0
            self._origin = None
            self.count_429 = 0
            self.count_ok = 0
            self._rng = random.Random(self.config.seed)
            self._limiter = None

    # ------------------------------------------------------------------ internals

    async def _asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            # uvicorn passes a bound method of its per-request cycle object, which owns the
            # transport; kept so that the "reset" fault can abort the TCP connection.
            scope[_CYCLE_KEY] = getattr(send, "__self__", None)
        await self._app(scope, receive, send)

    def _record(self, request: Request, body: Any) -> dict[str, Any]:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in request.scope["headers"]}
        record: dict[str, Any] = {
            "path": request.scope["path"],
            "headers": headers,
            "json": body,
            "status": None,
            "fault": None,
        }
        self.requests.append(record)
        request.scope[_RECORD_KEY] = record
        return record

    def _next_fault(self, prompt: str) -> str | None:
        with self._lock:
            faults = self.config.faults
            entry = faults.pop(0) if faults else None
        if entry is None and self.config.fault_for is not None:
            entry = self.config.fault_for(prompt)
        if entry is None or _parse_fault(entry)[0] in ("", "ok"):
            return None
        return entry

    def _draw_latency(self) -> float:
        cfg = self.config
        if cfg.latency_median_s <= 0:
            return 0.0
        with self._lock:
            draw = self._rng.lognormvariate(math.log(cfg.latency_median_s), cfg.latency_sigma)
            self.latencies.append(draw)
        return draw

    def _clock(self) -> float:
        """Seconds since the first chat request (``arrivals`` and ``changed_at``)."""
        now = time.monotonic()
        with self._lock:
            if self._origin is None:
                self._origin = now
            return now - self._origin

    def _limits(self) -> tuple[int | None, int | None]:
        cfg = self.config
        change = cfg.change_after
        if change is None or self.count_ok < change[0]:
            return cfg.rpm, cfg.tpm
        if self.changed_at is None:
            self.changed_at = self._clock()
        return change[1], change[2]

    def _admit(self, cost: int) -> _Admission | None:
        rpm, tpm = self._limits()
        if not rpm and not tpm:
            return None
        key = (rpm, tpm, self.config.time_scale)
        with self._lock:
            if self._limiter is None or self._limiter.key != key:
                self._limiter = _WindowLimiter(rpm, tpm, self.config.time_scale)
            return self._limiter.admit(cost, time.monotonic())

    async def _serve(self, seconds: float) -> None:
        """Sleep ``seconds`` in one of ``slots`` places, queueing first when all are taken."""
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            slots = self.config.slots
            if slots is None:
                if seconds > 0:
                    await asyncio.sleep(seconds)
                return
            if self._slots is None:
                self._slots = asyncio.Semaphore(slots)
            queued = time.monotonic()
            async with self._slots:
                with self._lock:
                    self.queue_waits.append(time.monotonic() - queued)
                await asyncio.sleep(seconds)
        finally:
            self.in_flight -= 1

    def _answer(self, prompt: str, schema: dict[str, Any] | None, bad_json: bool) -> Any:
        """The reply: text (a ``str``) or, for a structured request, a JSON value."""
        if bad_json:
            return BAD_JSON_REPLY
        if schema is not None:
            hook = self.config.structured_answer
            return hook(prompt, schema) if hook is not None else value_for(schema, prompt)
        fn = self.config.answer
        return fn(prompt) if fn is not None else "Answer: " + prompt[:60]

    def _completion_tokens(self, reply: Any) -> int:
        configured = self.config.completion_tokens
        return configured if configured is not None else len(_reply_text(reply)) // 4 + 1

    async def _hang(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            await asyncio.sleep(min(left, 0.1))

    async def _reset_connection(self, request: Request) -> bool:
        cycle = request.scope.get(_CYCLE_KEY)
        transport = getattr(cycle, "transport", None)
        if transport is None or not hasattr(transport, "abort"):
            return False
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        # connection_lost() runs on a later loop iteration and marks the cycle disconnected;
        # after that uvicorn ignores whatever the app sends and does not add its own 500.
        for _ in range(100):
            if getattr(cycle, "disconnected", True):
                break
            await asyncio.sleep(0)
        return True

    # ------------------------------------------------------------------ shared chat logic

    async def _chat(
        self,
        request: Request,
        record: dict[str, Any],
        *,
        anthropic: bool,
        model: str,
        messages: list[Any],
        system: Any,
        max_tokens: int | None,
        schema: dict[str, Any] | None = None,
        tool: str = "",
    ) -> Response:
        prompt = _last_user_text(messages)
        arrived = self._clock()
        with self._lock:
            self.arrivals.append(arrived)
        fault = self._next_fault(prompt)
        bad_json = False
        if fault is not None:
            record["fault"] = fault
            name, params = _parse_fault(fault)
            if name == "badjson":
                bad_json = True
            elif name == "hang":
                await self._hang(float(params.get("s", DEFAULT_HANG_S)))
            else:
                return await self._fault_response(request, name, params, fault, anthropic)

        prompt_tokens = _prompt_tokens(messages, system)
        reply: Any = None
        if max_tokens is not None:
            cost = prompt_tokens + max_tokens
        else:
            reply = self._answer(prompt, schema, bad_json)
            cost = prompt_tokens + self._completion_tokens(reply)

        admission = self._admit(cost)
        headers: dict[str, str] = {}
        if admission is not None:
            if self.config.send_ratelimit_headers:
                scale = self.config.time_scale if self.config.scale_ratelimit_headers else 1.0
                headers = _ratelimit_headers(admission, scale)
            if not admission.ok:
                with self._lock:
                    self.count_429 += 1
                return self._rate_limited(admission, headers, model, anthropic)

        await self._serve(self._draw_latency() / self.config.time_scale)

        if reply is None:
            reply = self._answer(prompt, schema, bad_json)
        cut = (self.config.cut_at_max_tokens and isinstance(reply, str)
               and max_tokens is not None and len(reply) > 4 * max_tokens)
        if cut:
            reply = reply[:4 * max_tokens]
        payload = self._payload(anthropic, model, reply, tool, prompt_tokens,
                                self._completion_tokens(reply), "length" if cut else "stop")
        finished = self._clock()
        with self._lock:
            self.count_ok += 1
            self.prompts.append(prompt)
            self.finishes.append(finished)
        return _json_response(payload, 200, headers)

    def _payload(self, anthropic: bool, model: str, reply: Any, tool: str,
                 prompt_tokens: Any, completion_tokens: Any, finish: str = "stop") -> Any:
        """A 200 answer body: a Messages API message or a chat completion."""
        n = next(self._ids)
        if anthropic:
            block: dict[str, Any] = {"type": "text", "text": reply}
            if not isinstance(reply, str):
                block = {"type": "tool_use", "id": f"toolu_fake{n:012d}", "name": tool,
                         "input": reply}
            return {
                "id": f"msg_fake{n:012d}",
                "type": "message",
                "role": "assistant",
                "model": model,
                "content": [block],
                "stop_reason": "max_tokens" if finish == "length" else "end_turn"
                if isinstance(reply, str)
                else "tool_use",
                "stop_sequence": None,
                "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens},
            }
        return {
            "id": f"chatcmpl-fake{n:012d}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": _reply_text(reply)},
                    "finish_reason": finish,
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": (prompt_tokens + completion_tokens
                                 if isinstance(prompt_tokens, int)
                                 and isinstance(completion_tokens, int) else None),
            },
        }

    def _rate_limited(
        self, adm: _Admission, headers: dict[str, str], model: str, anthropic: bool
    ) -> Response:
        ms = max(1, math.ceil(adm.reset_s * 1000))
        headers = {**headers, "retry-after-ms": str(ms), "retry-after": str(math.ceil(ms / 1000))}
        wait = _format_reset(adm.reset_s)
        if adm.kind == "tokens":
            limit = adm.tok_limit
            what = f"tokens per min (TPM): Limit {limit}, Used {adm.used_tokens}, "
            what += f"Requested {adm.requested_tokens}"
        else:
            what = f"requests per min (RPM): Limit {adm.req_limit}, Used {adm.req_limit}, "
            what += "Requested 1"
        message = (
            f"Rate limit reached for {model} in organization org-fake on {what}. "
            f"Please try again in {wait}."
        )
        if anthropic:
            return _json_response(_anthropic_error("rate_limit_error", message), 429, headers)
        body = _openai_error(message, adm.kind, "rate_limit_exceeded")
        return _json_response(body, 429, headers)

    async def _fault_response(
        self, request: Request, name: str, params: dict[str, str], entry: str, anthropic: bool
    ) -> Response:
        if name == "429":
            ms = int(params["ms"]) if "ms" in params else 50
            retry_after = str(math.ceil(ms / 1000)) if "ms" in params else "0"
            headers = {"retry-after": retry_after, "retry-after-ms": str(ms)}
            if "s" in params:
                headers = {"retry-after": params["s"]}
            message = (
                "Rate limit reached for requests in organization org-fake on requests per min "
                "(RPM): Limit 3, Used 3, Requested 1. Please try again in 20s."
            )
            with self._lock:
                self.count_429 += 1
            if anthropic:
                body = _anthropic_error("rate_limit_error", message)
            else:
                body = _openai_error(message, "requests", "rate_limit_exceeded")
            return _json_response(body, 429, headers)
        if name.isdigit() and int(name) in _SERVER_ERRORS:
            status = int(name)
            oa_message, an_type, an_message = _SERVER_ERRORS[status]
            if anthropic:
                return _json_response(_anthropic_error(an_type, an_message), status)
            return _json_response(_openai_error(oa_message, "server_error", None), status)
        if name == "malformed":
            raw = b'{"content": [' if anthropic else b'{"choices": ['
            return Response(raw, status_code=200, media_type=_JSON)
        if name == "empty":
            if anthropic:
                return _json_response(
                    {
                        "id": f"msg_fake{next(self._ids):012d}",
                        "type": "message",
                        "role": "assistant",
                        "model": DEFAULT_MODEL,
                        "content": [],
                        "stop_reason": "end_turn",
                        "stop_sequence": None,
                        "usage": {"input_tokens": 1, "output_tokens": 0},
                    }
                )
            return _json_response(
                {
                    "id": f"chatcmpl-fake{next(self._ids):012d}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": DEFAULT_MODEL,
                    "choices": [],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 0, "total_tokens": 1},
                }
            )
        if name in _HOSTILE:
            return await _HOSTILE[name](self, request, params, anthropic)
        if name == "reset":
            if await self._reset_connection(request):
                return _NoResponse()
            body = _openai_error("connection reset (fallback)", "server_error", None)
            return _json_response(body, 500, {"connection": "close"})
        message = f"fake LLM server: unknown fault entry {entry!r}"
        return _json_response(_openai_error(message, "server_error", None), 500)

    # ------------------------------------------------------------------ hostile replies

    async def _quota(self, request: Request, params: dict[str, str],
                     anthropic: bool) -> Response:
        message = ("You exceeded your current quota, please check your plan and billing "
                   "details.")
        return _json_response(_openai_error(message, "insufficient_quota",
                                            "insufficient_quota"), 429)

    async def _reflect(self, request: Request, params: dict[str, str],
                       anthropic: bool) -> Response:
        text = reflection(request.headers.get("authorization")
                          or request.headers.get("x-api-key", ""))
        status = int(params.get("status", "200"))
        if status != 200:
            body = (_anthropic_error("authentication_error", text) if anthropic
                    else _openai_error(text, "invalid_request_error", "invalid_api_key"))
            return _json_response(body, status)
        payload = self._payload(anthropic, DEFAULT_MODEL, text, "", 1, 1)
        if params.get("in") == "refusal" and not anthropic:
            payload["choices"][0]["message"] = {"role": "assistant", "content": None,
                                                "refusal": text}
        return _json_response(payload)

    def _streamed(self, request: Request, chunks: AsyncIterator[bytes],
                  headers: dict[str, str] | None = None) -> Response:
        """A 200 whose body is sent as ``chunks`` come, counted in the request's record."""
        record = request.scope[_RECORD_KEY]
        record["sent"] = 0

        async def counted() -> AsyncIterator[bytes]:
            async for chunk in chunks:
                if self._stopping:
                    return
                record["sent"] += len(chunk)
                yield chunk

        return StreamingResponse(counted(), status_code=200, headers=headers,
                                 media_type=_JSON)

    def _huge_body(self, anthropic: bool, size: int) -> AsyncIterator[bytes]:
        """A valid answer whose text is ``size`` bytes of ``x``, in 64 KB chunks."""
        marker = "\u0000MARK\u0000"
        body = json.dumps(self._payload(anthropic, DEFAULT_MODEL, marker, "", 1, 1))
        head, _, tail = body.partition(json.dumps(marker)[1:-1])

        async def chunks() -> AsyncIterator[bytes]:
            yield head.encode()
            for start in range(0, size, CHUNK):
                yield b"x" * min(CHUNK, size - start)
                await asyncio.sleep(0)
            yield tail.encode()

        return chunks()

    async def _drip(self, request: Request, params: dict[str, str],
                    anthropic: bool) -> Response:
        seconds, count = float(params.get("s", "1")), int(params.get("n", "100"))
        answer = json.dumps(self._payload(anthropic, DEFAULT_MODEL, "dripped", "", 1, 1))

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(count):
                yield b" "
                await self._hang(seconds)
            yield answer.encode()

        return self._streamed(request, chunks())

    async def _huge(self, request: Request, params: dict[str, str],
                    anthropic: bool) -> Response:
        size = int(float(params.get("mb", "50")) * 1024 * 1024)
        return self._streamed(request, self._huge_body(anthropic, size))

    async def _gzip(self, request: Request, params: dict[str, str],
                    anthropic: bool) -> Response:
        size = int(float(params.get("mb", "200")) * 1024 * 1024)
        plain = self._huge_body(anthropic, size)

        async def chunks() -> AsyncIterator[bytes]:
            packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            async for chunk in plain:
                if out := packer.compress(chunk):
                    yield out
            yield packer.flush()

        return self._streamed(request, chunks(), {"content-encoding": "gzip"})

    async def _deep(self, request: Request, params: dict[str, str],
                    anthropic: bool) -> Response:
        depth = int(params.get("n", "100000"))
        name = "content" if anthropic else "choices"
        raw = f'{{"{name}":' + "[" * depth + "]" * depth + "}"
        return Response(raw.encode(), status_code=200, media_type=_JSON)

    async def _hostile(self, request: Request, params: dict[str, str],
                       anthropic: bool) -> Response:
        status = int(params.get("status", "200"))
        if status != 200:
            body = (_anthropic_error("invalid_request_error", HOSTILE_TEXT) if anthropic
                    else _openai_error(HOSTILE_TEXT, "invalid_request_error", None))
        else:
            body = self._payload(anthropic, DEFAULT_MODEL, HOSTILE_TEXT, "", 1, 1)
        raw = json.dumps(body).encode()  # ASCII, with \ud800 and \u0000 escapes
        raw = raw.replace(b" end", b" \xff end", 1)
        return Response(raw, status_code=status, media_type=_JSON)

    async def _usage(self, request: Request, params: dict[str, str],
                     anthropic: bool) -> Response:
        counts = [json.loads(params.get(k, "1")) for k in ("prompt", "completion")]
        return _json_response(self._payload(anthropic, DEFAULT_MODEL, "Counted.", "", *counts))

    async def _headers(self, request: Request, params: dict[str, str],
                       anthropic: bool) -> Response:
        size = int(float(params.get("kb", "200")) * 1024)
        payload = self._payload(anthropic, DEFAULT_MODEL, "Padded.", "", 1, 1)
        return _json_response(payload, 200, {"x-fake-padding": "p" * size})

    # ------------------------------------------------------------------ endpoints

    async def _read_json(self, request: Request) -> tuple[Any, bool]:
        raw = await request.body()
        if not raw:
            return None, False
        try:
            return json.loads(raw), True
        except ValueError:
            return None, False

    @staticmethod
    def _finish(record: dict[str, Any], response: Response) -> Response:
        record["status"] = None if isinstance(response, _NoResponse) else response.status_code
        return response

    async def _openai_chat(self, request: Request) -> Response:
        body, ok = await self._read_json(request)
        record = self._record(request, body)
        if not ok or not isinstance(body, dict):
            err = _openai_error(
                "We could not parse the JSON body of your request.", "invalid_request_error", None
            )
            return self._finish(record, _json_response(err, 400))
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            err = _openai_error(
                "'messages' must be a non-empty array.",
                "invalid_request_error",
                None,
                "messages",
            )
            return self._finish(record, _json_response(err, 400))
        max_tokens = body.get("max_tokens", body.get("max_completion_tokens"))
        response = await self._chat(
            request,
            record,
            anthropic=False,
            model=str(body.get("model") or DEFAULT_MODEL),
            messages=messages,
            system=None,
            max_tokens=max_tokens if isinstance(max_tokens, int) else None,
            schema=_response_schema(body),
        )
        return self._finish(record, response)

    async def _anthropic_messages(self, request: Request) -> Response:
        body, ok = await self._read_json(request)
        record = self._record(request, body)
        headers = record["headers"]
        problem: str | None = None
        if not headers.get("x-api-key"):
            problem = "x-api-key header is required"
        elif not headers.get("anthropic-version"):
            problem = "anthropic-version: header is required"
        elif not ok or not isinstance(body, dict):
            problem = "There was an issue with your request body: invalid JSON"
        elif not isinstance(body.get("messages"), list) or not body["messages"]:
            problem = "messages: Field required"
        elif not isinstance(body.get("max_tokens"), int):
            problem = "max_tokens: Field required"
        if problem is not None or not isinstance(body, dict):
            err = _anthropic_error("invalid_request_error", problem or "invalid request")
            return self._finish(record, _json_response(err, 400))
        response = await self._chat(
            request,
            record,
            anthropic=True,
            model=str(body.get("model") or DEFAULT_MODEL),
            messages=body["messages"],
            system=body.get("system"),
            max_tokens=body["max_tokens"],
            **_forced_tool(body),
        )
        return self._finish(record, response)

    async def _stats(self, request: Request) -> Response:
        with self._lock:
            payload = {
                "count_ok": self.count_ok,
                "count_429": self.count_429,
                "requests": len(self.requests),
                "time_scale": self.config.time_scale,
                "latencies": list(self.latencies),
                "arrivals": list(self.arrivals),
                "finishes": list(self.finishes),
                "queue_waits": list(self.queue_waits),
                "changed_at": self.changed_at,
                "max_in_flight": self.max_in_flight,
            }
        return _json_response(payload)

    async def _models(self, request: Request) -> Response:
        record = self._record(request, None)
        payload = {
            "object": "list",
            "data": [{"id": DEFAULT_MODEL, "object": "model", "created": 0, "owned_by": "fake"}],
        }
        return self._finish(record, _json_response(payload))


_HOSTILE: dict[str, Callable[[FakeLLMServer, Request, dict[str, str], bool],
                              Awaitable[Response]]] = {
    "quota": FakeLLMServer._quota,
    "reflect": FakeLLMServer._reflect,
    "drip": FakeLLMServer._drip,
    "huge": FakeLLMServer._huge,
    "gzip": FakeLLMServer._gzip,
    "deep": FakeLLMServer._deep,
    "hostile": FakeLLMServer._hostile,
    "usage": FakeLLMServer._usage,
    "headers": FakeLLMServer._headers,
}
"""The hostile-reply faults by name: each answers one request as a hostile server would."""


# --------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tests.fakes.llm_server",
        description="Serve the fake OpenAI/Anthropic LLM API until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency-median", type=float, default=0.0, help="seconds")
    parser.add_argument("--sigma", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rpm", type=int, default=None)
    parser.add_argument("--tpm", type=int, default=None)
    parser.add_argument("--time-scale", type=float, default=1.0)
    parser.add_argument("--completion-tokens", type=int, default=None)
    parser.add_argument("--no-ratelimit-headers", action="store_true")
    parser.add_argument("--slots", type=int, default=None,
                        help="serve this many at once and queue the rest")
    parser.add_argument("--change-after", type=int, default=None,
                        help="after this many answers, the limits become --rpm-after/--tpm-after")
    parser.add_argument("--rpm-after", type=int, default=None)
    parser.add_argument("--tpm-after", type=int, default=None)
    parser.add_argument(
        "--scale-ratelimit-headers",
        action="store_true",
        help="report x-ratelimit-limit-* per real minute (limit * time-scale)",
    )
    args = parser.parse_args(argv)
    config = FakeLLMConfig(
        latency_median_s=args.latency_median,
        latency_sigma=args.sigma,
        seed=args.seed,
        time_scale=args.time_scale,
        rpm=args.rpm,
        tpm=args.tpm,
        completion_tokens=args.completion_tokens,
        send_ratelimit_headers=not args.no_ratelimit_headers,
        scale_ratelimit_headers=args.scale_ratelimit_headers,
        slots=args.slots,
        change_after=(None if args.change_after is None
                      else (args.change_after, args.rpm_after, args.tpm_after)),
    )
    server = FakeLLMServer(config, host=args.host, port=args.port).start()
    done = threading.Event()

    def _on_signal(signum: int, frame: object) -> None:
        done.set()

    # SIGINT (Ctrl-C) and SIGTERM (Popen.terminate()) both stop the server cleanly; SIGINT is
    # installed explicitly because shells start background jobs with SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)
    print(server.base_url, flush=True)
    try:
        while not done.wait(0.5):
            pass
    finally:
        server.stop()
        print(
            f"served ok={server.count_ok} 429={server.count_429} total={len(server.requests)}",
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
