"""``promptbatch serve``: the HTTP API that the Apps Script bridge (addin/gsheets) calls.

Apps Script cannot run Python, so the sheet sends rows here and gets answers back. The server
holds the model choice, the API keys and the one answer cache; a request carries only the
template, the rows and a few sampling options. A caller cannot pick the model or its base URL:
whoever holds the token could otherwise aim our keys at any server, or at a pricier model.
To offer two models, start two servers on two ports.

Every route needs ``Authorization: Bearer TOKEN``; the token is made on first start and kept
(mode 0600) beside the user config.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from . import batch, serve_batch, userconfig
from .engine import RowResult, error_text, run_jobs, structured
from .errors import PromptBatchError
from .estimate import estimate
from .plan import ERROR_PREFIX, RowJob
from .providers import ModelSpec, Params, Provider
from .schema import Schema, load_schema
from .serve_input import (
    BadRequest,
    Scalar,
    body_fields,
    cell_list,
    number_field,
    row_grid,
    sampling_options,
    text_field,
    text_list,
)
from .serve_sheet import layout, schema_text, sheet_request
from .settings import Settings, resolve
from .sheet import CellValue, answer_text, fit_cell
from .store import Store, answer_key
from .template import Template, display

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8787
TOKEN_FILE = "serve-token"
MAX_BODY = 5 * 1024 * 1024
"""Bytes per request: a chunk of rows, never a whole workbook."""
MAX_WAIT_S = 300.0
CELL_LIMIT = 50_000
"""Characters a Google Sheets cell holds."""
PREVIEW_FIRST_MAX = 20


def token_path() -> Path:
    """``$PROMPTBATCH_HOME/serve-token``, else beside the user config file."""
    home = os.environ.get("PROMPTBATCH_HOME")
    folder = Path(home) if home else userconfig.config_path().parent
    return folder / TOKEN_FILE


def load_token(path: Path | None = None) -> tuple[str, bool]:
    """The bearer token and whether it was just made; the file is readable by its owner only."""
    path = path or token_path()
    if path.is_file():
        os.chmod(path, 0o600)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, True


class Backend:
    """What all requests share: the model, the cache, and one provider opened on first need."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.spec = ModelSpec.parse(settings.model or batch.LOCAL, settings.base_url)
        batch.api_key_for(self.spec)  # a missing key stops the server at start, not mid-run
        self.model = f"{self.spec.provider}:{self.spec.model}"
        self.store = store
        self._open = batch.connector(self.spec, settings)
        self._stack = AsyncExitStack()
        self._provider: Provider | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Provider]:
        """The shared provider: one connection pool (and one embedded model) for every chunk."""
        async with self._lock:
            if self._provider is None:
                self._provider = await self._stack.enter_async_context(self._open())
        yield self._provider

    async def close(self) -> None:
        await self._stack.aclose()
        self._provider = None
        self.store.close()

    def params(self, options: Mapping[str, Any]) -> Params:
        s = self.settings
        return Params(options.get("temperature", s.temperature),
                      options.get("max_tokens", s.max_tokens), options.get("system", s.system))


# --------------------------------------------------------------------------- rows


@dataclass(frozen=True)
class Rows:
    """A template and rows to render with it, as every row route receives them."""

    template: Template
    headers: list[str]
    rows: list[list[Scalar]]
    params: Params
    schema: Schema | None = None
    """The fields each answer must have; None for free text."""
    uses: tuple[str, ...] = ()
    """Headers holding other prompt columns' answers this template depends on."""

    @property
    def asked(self) -> Params:
        """What each prompt is sent with, and so part of its cache key."""
        return self.params if self.schema is None else structured(self.params, self.schema)


def _schema(body: dict[str, Any]) -> Schema | None:
    """Structured answers: ``fields`` (``score (number), reason``) or ``schema`` (JSON)."""
    fields = body.get("fields")
    schema = body.get("schema")
    return load_schema(fields=None if fields is None else text_field(fields, "fields"),
                       schema=None if schema is None else schema_text(schema, "schema"),
                       origin="the request's fields")


def _rows_request(backend: Backend, body: dict[str, Any]) -> Rows:
    template = Template.parse(text_field(body["template"], "template"),
                              text_field(body.get("origin", "the template"), "origin"))
    headers = [display(h).strip() for h in cell_list(body["headers"], "headers")]
    template.check_columns(headers)
    uses = tuple(text_list(body.get("uses") or [], "uses"))
    missing = next((u for u in uses if u not in headers), None)
    if missing is not None:
        raise BadRequest(f"uses names {missing!r}, which is not among the headers.")
    return Rows(template, headers, row_grid(body["rows"], "rows"),
                backend.params(sampling_options(body.get("options"))), _schema(body), uses)


def _render(rows: Rows) -> tuple[list[RowJob], dict[int, str]]:
    """Prompts by row index, and the cells settled without a model: blanks, render errors,
    and rows whose template uses an answer that failed."""
    jobs: list[RowJob] = []
    settled: dict[int, str] = {}
    for i, cells in enumerate(rows.rows):
        record = {h: (cells[c] if c < len(cells) else None)
                  for c, h in enumerate(rows.headers) if h}
        if all(display(v).strip() == "" for v in record.values()):
            settled[i] = ""
            continue
        failed = next((u for u in rows.uses if display(record.get(u)).startswith(ERROR_PREFIX)),
                      None)
        if failed is not None:
            settled[i] = error_text(f"uses the answer in column {failed!r}, which failed; a "
                                    "rerun retries both")
            continue
        try:
            jobs.append(RowJob(i, rows.template.render(record, "this row")))
        except PromptBatchError as exc:
            settled[i] = error_text(str(exc))
    return jobs, settled


async def _rendered(backend: Backend, body: dict[str, Any]
                    ) -> tuple[Rows, list[RowJob], dict[int, str]]:
    """The request's template parsed and rendered off the event loop: a template that spends
    its whole time budget must not stall the other requests, or a shutdown."""
    def work() -> tuple[Rows, list[RowJob], dict[int, str]]:
        rows = _rows_request(backend, body)
        return (rows, *_render(rows))

    return await asyncio.to_thread(work)


def _answer(rows: Rows, result: RowResult) -> Answer:
    """The cell text, or one typed cell per field of an answer that fits them."""
    if rows.schema is None or not result.ok:
        return fit_cell(answer_text(result.text), CELL_LIMIT)
    values = rows.schema.cells(rows.schema.check(result.text))
    return [fit_cell(v, CELL_LIMIT) if isinstance(v, str) else v for v in values]


# --------------------------------------------------------------------------- routes

ROW_FIELDS = {"template", "headers", "rows"}
ROW_OPTIONAL = {"origin", "options", "fields", "schema", "uses"}
Answer = str | list[CellValue] | None


async def complete(backend: Backend, body: Any) -> dict[str, Any]:
    """Answers for a chunk of rows, from the cache first; ``null`` for rows past the wait."""
    body = body_fields(body, ROW_FIELDS, ROW_OPTIONAL | {"wait_seconds"})
    wait = body.get("wait_seconds")
    wait = None if wait is None else number_field(wait, "wait_seconds", 1, MAX_WAIT_S)
    rows, jobs, settled = await _rendered(backend, body)
    answers: list[Answer] = [settled.get(i) for i in range(len(rows.rows))]
    counts = {"cached": 0, "answered": 0, "failed": sum(1 for t in settled.values() if t)}

    def deliver(result: RowResult) -> None:
        answers[result.row] = _answer(rows, result)
        key = "cached" if result.cached else "answered" if result.ok else "failed"
        counts[key] += 1

    run = run_jobs(jobs, backend.spec.label, backend.connect, rows.params, backend.store,
                   concurrency=backend.settings.concurrency, on_result=deliver,
                   schemas=None if rows.schema is None else {0: rows.schema})
    with contextlib.suppress(asyncio.TimeoutError):  # what arrived is stored; ask again
        await asyncio.wait_for(run, wait)
    pending = sum(1 for a in answers if a is None)
    return {"answers": answers, "model": backend.model, **counts, "pending": pending}


async def preview(backend: Backend, body: Any) -> dict[str, Any]:
    """Counts, first prompts and an estimate for rows to send; ``total`` scales a sample."""
    body = body_fields(body, ROW_FIELDS, ROW_OPTIONAL | {"total", "first"})
    first = int(number_field(body.get("first", 3), "first", 0, PREVIEW_FIRST_MAX))
    rows, jobs, settled = await _rendered(backend, body)
    keys = {job.row: answer_key(backend.spec.label, rows.asked, job.prompt) for job in jobs}
    hits = backend.store.get_many(keys.values())
    fresh = list({keys[j.row]: j.prompt for j in jobs if keys[j.row] not in hits}.values())
    errors = [t for t in settled.values() if t]
    sent = len(jobs) + len(errors)
    total = int(number_field(body.get("total", sent), "total", sent, 10_000_000))
    scale = total / sent if sent else 1.0
    guess = estimate(backend.model, fresh, rows.params.max_tokens,
                     backend.settings.concurrency)
    cost = guess.cost_usd
    return {
        "model": backend.model,
        "rows": total,
        "sample": sent,
        "cached": sum(1 for k in keys.values() if k in hits),
        "to_send": sum(1 for k in keys.values() if k not in hits),
        "unique_prompts": len(fresh),
        "render_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "first_prompts": [j.prompt for j in jobs[:first]],
        "estimate": {
            "prompt_tokens": round(guess.prompt_tokens * scale),
            "completion_tokens": round(guess.completion_tokens * scale),
            "cost_usd": None if cost is None else cost * scale,
            "seconds": guess.seconds * scale,
        },
    }


async def find_table(backend: Backend, body: Any) -> dict[str, Any]:
    """Where the table and every prompt column sit, read by the CLI's own rules."""
    return await asyncio.to_thread(layout, sheet_request(backend.settings, body))


async def batch_submit(backend: Backend, body: Any) -> dict[str, Any]:
    """A provider Batch API job for the sheet's unanswered prompts (see serve_batch)."""
    return {"model": backend.model, **await serve_batch.submit(
        backend.settings, backend.spec, backend.store.path, body)}


async def batch_collect(backend: Backend, body: Any) -> dict[str, Any]:
    """The finished answers of the sheet's Batch API jobs, as cells to write."""
    return {"model": backend.model, **await serve_batch.collect(
        backend.settings, backend.spec, backend.store.path, body)}


async def health(backend: Backend, body: Any) -> dict[str, Any]:
    return {"ok": True, "model": backend.model}


# --------------------------------------------------------------------------- the app

Handler = Callable[[Backend, Any], Awaitable[dict[str, Any]]]


def _authorized(request: Request, token: bytes) -> bool:
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token)


async def _read_json(request: Request) -> Any:
    """The body as JSON, refused past MAX_BODY bytes whatever Content-Length claims."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(f"The request is larger than {MAX_BODY // 2**20} MB; send fewer "
                         "rows per chunk.", 413)
    raw = bytearray()
    async for part in request.stream():
        raw += part
        if len(raw) > MAX_BODY:
            raise BadRequest(f"The request is larger than {MAX_BODY // 2**20} MB; send fewer "
                             "rows per chunk.", 413)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None


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
        _route("/v1/complete", complete, secret),
        _route("/v1/preview", preview, secret),
        _route("/v1/locate", find_table, secret),
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
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, access_log=False))

    async def run() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            shown = f"[{host}]" if ":" in host else host
            say(f"PromptBatch backend listening on http://{shown}:{bound} "
                     f"(model {app.state.backend.model})")
            say(f"Bearer token: {token}" if created else f"Bearer token: in {token_path()}")
            if host not in ("127.0.0.1", "localhost", "::1"):
                say("Warning: reachable beyond this machine. Use HTTPS in front of it; "
                         "anyone with the token can spend your model credit.")
        await task

    asyncio.run(run())

