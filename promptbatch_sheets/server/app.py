"""The Starlette app of ``promptbatch serve``: bearer auth, bounded JSON bodies, one route per
handler, and the uvicorn runner."""

from __future__ import annotations

import array
import asyncio
import hmac
import itertools
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..errors import BadRequest, PromptBatchError
from ..settings import Settings, resolve
from ..store import Store
from . import batchapi, formula, menu
from .backend import Backend, load_token, token_path
from .checks import bounded_body
from .sheet import layout, sheet_request

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
MAX_BODY = 5 * 1024 * 1024
"""Bytes per request: a chunk of rows, never a whole workbook."""
MAX_DEPTH = 64
"""Nesting a request may use: its rows are three levels deep, a JSON schema a few more."""



async def find_table(backend: Backend, body: Any) -> dict[str, Any]:
    """Where the table and every prompt column sit, read by the CLI's own rules."""
    return await asyncio.to_thread(layout, sheet_request(backend.settings, body))


async def batch_submit(backend: Backend, body: Any) -> dict[str, Any]:
    """A provider Batch API job for the sheet's unanswered prompts (see server/batchapi.py)."""
    return {"model": backend.model, **await batchapi.submit(
        backend.settings, backend.spec, backend.store.path, body)}


async def batch_collect(backend: Backend, body: Any) -> dict[str, Any]:
    """The finished answers of the sheet's Batch API jobs, as cells to write."""
    return {"model": backend.model, **await batchapi.collect(
        backend.settings, backend.spec, backend.store.path, body)}


async def health(backend: Backend, body: Any) -> dict[str, Any]:
    return {"ok": True, "model": backend.model, "server": backend.spec.server}


# --------------------------------------------------------------------------- the app

Handler = Callable[[Backend, Any], Awaitable[dict[str, Any]]]


def _authorized(request: Request, token: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


async def _read_json(request: Request) -> Any:
    """The body as JSON, refused past MAX_BODY bytes whatever Content-Length claims."""
    raw = await bounded_body(request, MAX_BODY, f"The request is larger than "
                             f"{MAX_BODY // 2**20} MB; send fewer rows per chunk.")
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise BadRequest(f"The request nests JSON {depth} levels deep; at most {MAX_DEPTH} "
                         "are allowed (rows are a list of lists of cells).")
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None


_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = bytes.maketrans(b"[{]}", b"\x01\x01\xff\xff")


def json_depth(raw: bytes) -> int:
    """How deep arrays and objects nest in ``raw``, counted without parsing it: a parser's
    recursion on ``[[[[...`` would fail on the stack instead of saying why."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKET)
    return max(itertools.accumulate(array.array("b", brackets.translate(_STEP))), default=0)


def _route(path: str, handler: Handler, token: bytes, method: str = "POST") -> Route:
    async def endpoint(request: Request) -> Response:
        if not _authorized(request, token):
            return JSONResponse({"error": "Missing or wrong bearer token."}, 401,
                                headers={"www-authenticate": "Bearer"})
        try:
            body = await _read_json(request) if method == "POST" else None
            return JSONResponse(await handler(request.app.state.backend, body))
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, exc.status)
        except PromptBatchError as exc:
            return JSONResponse({"error": str(exc)}, 400)

    return Route(path, endpoint, methods=[method])


def create_app(token: str, settings: Settings | None = None,
               store_path: Path | None = None) -> Starlette:
    """The ASGI app; ``settings`` default to the environment and user config, as in the CLI."""
    backend = Backend(settings or resolve({}, {}), Store(store_path))
    secret = token.encode()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await backend.close()

    app = Starlette(lifespan=lifespan, routes=[
        _route("/v1/complete", formula.complete, secret),
        _route("/v1/locate", find_table, secret),
        _route("/v1/run", menu.run_rows, secret),
        _route("/v1/preview", menu.preview, secret),
        _route("/v1/batch/submit", batch_submit, secret),
        _route("/v1/batch/collect", batch_collect, secret),
        _route("/v1/health", health, secret, method="GET"),
    ])
    app.state.backend = backend
    return app


def serve(host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          flags: dict[str, Any] | None = None, store_path: Path | None = None,
          announce: Callable[[str], None] | None = None) -> None:
    """Run until Ctrl-C; prints the address (the real port when ``port`` is 0) and the token."""
    say = announce or (lambda line: print(line, flush=True))
    token, created = load_token()
    app = create_app(token, resolve(flags or {}, {}), store_path)
    for line in app.state.backend.store.take_notices():
        say(line)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            backend = app.state.backend
            say(f"PromptBatch backend listening on http://{shown}:{bound} "
                f"(model {backend.model}, answered by {backend.spec.server})")
            say(f"Bearer token: {token}" if created else f"Bearer token: in {token_path()}")
            if host not in ("127.0.0.1", "localhost", "::1"):
                say("Warning: reachable beyond this machine. Use HTTPS in front of it; "
                         "anyone with the token can spend your model credit.")
        await task

    asyncio.run(run())
