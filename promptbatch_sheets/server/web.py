"""``promptbatch app``: the panel (promptbatch_sheets/web/) as a local page, and its routes.

One person on one computer: the server listens on 127.0.0.1 only, and nothing answers without
the one-time token the command prints in the page's address (Jupyter's way). The first page
load trades it for an HttpOnly, SameSite=Strict cookie; every request must name this server
as its Host (so a DNS-rebound name gets nothing) and every POST must come from its own origin.

The page works on one table at a time, uploaded or pasted, kept in a temporary folder; it is
prepared, previewed and run by ``runner`` exactly as ``promptbatch run`` would, with the same
cache, limits and budget, in a worker thread whose progress the page polls.
"""

from __future__ import annotations

import asyncio
import csv
import hmac
import io
import json
import secrets
import shutil
import tempfile
import threading
import time
import webbrowser
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from .. import runner
from ..engine import RowResult
from ..errors import BadRequest, PromptBatchError
from ..estimate import cost
from ..export import file_stem
from ..runner import Prepared
from ..settings import Settings, resolve
from ..store import Store
from ..surfaces import open_surface
from ..surfaces.files import SPREADSHEETS
from ..table import TemplateText
from ..template import display, variable_name
from .checks import body_fields, bounded_body, number_field, text_field

MAX_UPLOAD = 50 * 2**20
"""Bytes of an uploaded workbook; the zip inside is checked again by the xlsx reader."""
MAX_PASTE = 5 * 2**20
COOKIE = "promptbatch_app"
LOOPBACK = frozenset({"127.0.0.1", "localhost", "[::1]"})
ASSETS = {"index.html": "text/html", "panel.css": "text/css", "api.js": "text/javascript",
          "panel.js": "text/javascript", "host-browser.js": "text/javascript"}
"""The panel's files, each served with its type; nothing else is."""
HEADERS = {
    "content-security-policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}
OPTIONS = {"variations", "output_column"}
"""What the page chooses; the model, its server, limits and budget are the command's."""


@dataclass
class Progress:
    """One run of the page's table, as the worker thread reports it."""

    total: int
    label: str
    """The model's price label, for the cost so far."""
    state: str = "running"
    """running, done, cancelled or failed."""
    started: float = field(default_factory=time.monotonic)
    ended: float | None = None
    done: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    unsent: int = 0
    error: str | None = None
    results: list[dict[str, Any]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)


class Workspace:
    """The page's table (a file in a temporary folder), its last preview and its run."""

    def __init__(self, settings: Settings, store_path: Path | None = None) -> None:
        self.settings = settings
        self.store_path = store_path
        self.folder = Path(tempfile.mkdtemp(prefix="promptbatch-app-"))
        self.source: Path | None = None
        self.template: TemplateText | None = None
        self.progress: Progress | None = None
        self.lock = threading.Lock()

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop.set()
        shutil.rmtree(self.folder, ignore_errors=True)

    @property
    def busy(self) -> bool:
        return self.progress is not None and self.progress.state == "running"

    def replace_source(self, name: str, data: bytes) -> None:
        if self.busy:
            raise BadRequest("A run is going on: cancel it or wait for it to end first.", 409)
        stem, _, suffix = name.rpartition(".")
        suffix = f".{suffix.lower()}"
        if suffix not in SPREADSHEETS:
            raise BadRequest(f"{name!r} is not a workbook: choose an .xlsx, .xlsm or .csv file.")
        for old in self.folder.iterdir():
            old.unlink()
        self.source = self.folder / (file_stem(stem or "book") + suffix)
        self.source.write_bytes(data)
        self.template = None
        self.progress = None

    @property
    def output(self) -> Path:
        if self.source is None:
            raise BadRequest("Choose a workbook or paste a table first.", 409)
        return self.source.with_name(f"{self.source.stem}.promptbatch{self.source.suffix}")

    def prepare(self, options: dict[str, Any]) -> tuple[Any, Prepared]:
        """The table as ``promptbatch run`` reads it, with the page's choices as flags."""
        if self.source is None:
            raise BadRequest("Choose a workbook or paste a table first.", 409)
        surface = open_surface(str(self.source), output=str(self.output))
        flags = {**_command_flags(self.settings), **options}
        return surface, runner.prepare(surface, flags, self.template,
                                       base_dir=self.source.parent)

    def store(self) -> Store:
        return Store(self.store_path)


def _command_flags(settings: Settings) -> dict[str, Any]:
    """The settings ``promptbatch app`` was started with, as the flag layer of each run."""
    return {name: getattr(settings, name) for name in (
        "model", "base_url", "temperature", "max_tokens", "concurrency", "rpm", "tpm",
        "budget", "timeout", "retries")}


def page_options(body: Any) -> dict[str, Any]:
    """The page's choices: variations and the answers column."""
    body = body_fields(body if body is not None else {}, set(), OPTIONS)
    options: dict[str, Any] = {}
    if body.get("variations") is not None:
        options["variations"] = int(number_field(body["variations"], "variations", 1, 100))
    column = body.get("output_column")
    if column is not None and text_field(column, "output_column").strip():
        options["output_column"] = column.strip()
    return options


# --------------------------------------------------------------------------- what the page shows


def describe(prepared: Prepared, store: Store, first: int = 3) -> dict[str, Any]:
    """The preview as the panel shows it: variables against columns, the first prompts with
    their system prompt, counts and the estimate."""
    shown = runner.preview(prepared, store, first)
    plan = prepared.plan
    table = plan.table
    used = {v for step in plan.steps for v in step.template.variables}
    est = shown.estimate
    grid = prepared.data.grid
    key = min(table.columns)
    return {
        "sheet": table.sheet,
        "model": prepared.price_label,
        "server": prepared.spec.server,
        "columns": [{"header": h, "variable": variable_name(h),
                     "used": variable_name(h) in used or plan.template.uses_row}
                    for h in table.columns.values()],
        "outputs": [o.header for step in plan.steps for o in step.outputs],
        "rows": [{"row": r + 1, "label": display(table.value(grid, r, key))}
                 for r in table.rows],
        "counts": {"rows": shown.rows, "kept": plan.kept, "cached": shown.cached,
                   "to_send": shown.to_send, "distinct": shown.unique_prompts,
                   "waiting": shown.waiting},
        "prompts": [{"row": job.row + 1, "prompt": job.prompt,
                     "system": job.system or prepared.params.system,
                     "system_origin": shown.system_origin} for job in shown.first_prompts],
        "estimate": {"prompt_tokens": est.prompt_tokens,
                     "completion_tokens": est.completion_tokens,
                     "completion_tokens_max": est.completion_tokens_max,
                     "cost_usd": est.cost_usd, "cost_max_usd": est.cost_max_usd,
                     "seconds": est.seconds, "basis": est.basis},
    }


def _result(prepared: Prepared, result: RowResult) -> dict[str, Any]:
    """One answer as the panel's table cells: header -> value."""
    step = prepared.plan.steps[result.step]
    values = step.cells(result.text) if result.ok else [result.text] + [""] * (
        len(step.outputs) - 1)
    return {"row": result.row + 1, "ok": result.ok, "cached": result.cached,
            "cells": {o.header: v for o, v in zip(step.outputs, values, strict=True)}}


def start_run(space: Workspace, options: dict[str, Any]) -> Progress:
    """Prepare on the caller's thread (a mistake is the request's 400), then run on a worker."""
    if space.busy:
        raise BadRequest("A run is going on already.", 409)
    surface, prepared = space.prepare(options)
    plan = prepared.plan
    progress = Progress(plan.prompts - len(plan.refused), prepared.price_label)

    def heard(result: RowResult) -> None:
        with space.lock:
            progress.done += 1
            progress.cached += result.cached
            progress.failed += not result.ok
            if result.completion is not None and not result.cached:
                progress.prompt_tokens += result.completion.prompt_tokens
                progress.completion_tokens += result.completion.completion_tokens
            progress.results.append(_result(prepared, result))

    def work() -> None:
        store = space.store()
        try:
            summary = runner.run(prepared, surface, store, on_result=heard,
                                 cancelled=progress.stop.is_set)
            progress.unsent = summary.unsent
            progress.state = "cancelled" if progress.stop.is_set() else "done"
        except PromptBatchError as exc:
            progress.error, progress.state = str(exc), "failed"
        except Exception as exc:  # broad on purpose: the page must hear of any failure
            progress.error, progress.state = f"{type(exc).__name__}: {exc}", "failed"
        finally:
            store.close()
            progress.ended = time.monotonic()

    space.progress = progress
    threading.Thread(target=work, name="promptbatch-app-run", daemon=True).start()
    return progress


def report(progress: Progress, since: int) -> dict[str, Any]:
    """Counts, money and time so far, and the answers from ``since`` on."""
    elapsed = (progress.ended or time.monotonic()) - progress.started
    left = progress.total - progress.done
    eta = elapsed / progress.done * left if progress.done and progress.state == "running" \
        else None
    spent = cost(progress.label, progress.prompt_tokens, progress.completion_tokens)
    return {"state": progress.state, "total": progress.total, "done": progress.done,
            "cached": progress.cached, "failed": progress.failed, "unsent": progress.unsent,
            "prompt_tokens": progress.prompt_tokens,
            "completion_tokens": progress.completion_tokens, "cost_usd": spent,
            "elapsed": elapsed, "eta": eta, "error": progress.error,
            "results": progress.results[since:], "next": len(progress.results)}


def table_from_paste(text: str) -> str:
    """A table pasted from a spreadsheet (tab-separated, quoted where a cell holds a tab, a
    quote or a line break), as CSV text."""
    rows = list(csv.reader(io.StringIO(text), delimiter="\t"))
    while rows and not any(cell.strip() for cell in rows[-1]):
        rows.pop()
    if len(rows) < 2:
        raise BadRequest("The pasted table needs a header row and at least one row below it: "
                         "copy the cells, headers included, from your spreadsheet.")
    out = io.StringIO()
    csv.writer(out).writerows(rows)
    return out.getvalue()


# --------------------------------------------------------------------------- routes


async def _body(request: Request, limit: int) -> bytes:
    return await bounded_body(request, limit, f"The file is larger than {limit // 2**20} MB.")


async def _json(request: Request) -> Any:
    raw = await _body(request, MAX_PASTE)
    try:
        return json.loads(raw) if raw else {}
    except ValueError:
        raise BadRequest("The request body is not valid JSON.") from None


def _space(request: Request) -> Workspace:
    space: Workspace = request.app.state.space
    return space


async def upload(request: Request) -> dict[str, Any]:
    name = request.query_params.get("name", "")
    data = await _body(request, MAX_UPLOAD)
    _space(request).replace_source(name, data)
    return {"ok": True, "name": name}


async def paste(request: Request) -> dict[str, Any]:
    body = body_fields(await _json(request), {"template", "table"}, set())
    template = text_field(body["template"], "template")
    space = _space(request)
    space.replace_source("pasted.csv", table_from_paste(text_field(body["table"], "table"))
                         .encode())
    space.template = TemplateText(template, "the pasted template")
    return {"ok": True, "name": "pasted.csv"}


async def preview(request: Request) -> dict[str, Any]:
    options = page_options(await _json(request))
    space = _space(request)

    def work() -> dict[str, Any]:
        _, prepared = space.prepare(options)
        store = space.store()
        try:
            return describe(prepared, store)
        finally:
            store.close()

    return await asyncio.to_thread(work)


async def run(request: Request) -> dict[str, Any]:
    options = page_options(await _json(request))
    space = _space(request)
    progress = await asyncio.to_thread(start_run, space, options)
    return {"total": progress.total}


async def status(request: Request) -> dict[str, Any]:
    progress = _space(request).progress
    if progress is None:
        return {"state": "idle"}
    since = request.query_params.get("since", "0")
    with _space(request).lock:
        return report(progress, int(since) if since.isdigit() else 0)


async def cancel(request: Request) -> dict[str, Any]:
    progress = _space(request).progress
    if progress is not None:
        progress.stop.set()
    return {"ok": True}


async def download(request: Request) -> Response:
    space = _space(request)
    if space.busy:
        raise BadRequest("The run is still going on: download when it ends.", 409)
    output = space.output
    if not output.is_file():
        raise BadRequest("Nothing to download yet: run the table first.", 409)
    return FileResponse(output, filename=output.name, headers=HEADERS)


ROUTES: dict[str, tuple[str, Callable[[Request], Any]]] = {
    "/api/upload": ("POST", upload),
    "/api/paste": ("POST", paste),
    "/api/preview": ("POST", preview),
    "/api/run": ("POST", run),
    "/api/progress": ("GET", status),
    "/api/cancel": ("POST", cancel),
    "/api/download": ("GET", download),
}


# --------------------------------------------------------------------------- the gate


class Gate:
    """The one-time token, the session cookie it becomes, and the Host and Origin checks."""

    def __init__(self, token: str) -> None:
        self.token: str | None = token
        self.session = secrets.token_urlsafe(32)

    @staticmethod
    def at_home(request: Request) -> bool:
        """Whether the request names this server by a loopback name and its own port: a
        page of another site that a DNS trick points at 127.0.0.1 names its own host."""
        name, _, port = request.headers.get("host", "").rpartition(":")
        server = request.scope.get("server") or ("", 0)
        return name in LOOPBACK and port == str(server[1])

    def refusal(self, request: Request) -> Response | None:
        """Why ``request`` gets nothing, or None when it may go on."""
        host = request.headers.get("host", "")
        if not self.at_home(request):
            return _refused(f"Host {host!r} is not this computer's promptbatch app.", 421)
        if request.method != "GET" and request.headers.get("origin") != f"http://{host}":
            return _refused("Requests must come from the promptbatch page itself.", 403)
        if not hmac.compare_digest(request.cookies.get(COOKIE, ""), self.session):
            return _refused("Open the address that promptbatch app printed: it carries a "
                            "one-time token (run promptbatch app again for a new one).", 403)
        return None

    def exchange(self, request: Request) -> Response | None:
        """The first load's token for the session cookie; the token then stops working."""
        given = request.query_params.get("token", "")
        if self.token is None or not given or not hmac.compare_digest(given, self.token):
            return None
        self.token = None
        response = RedirectResponse("/", 303, headers=HEADERS)
        response.set_cookie(COOKIE, self.session, httponly=True, samesite="strict", path="/")
        return response


def _refused(message: str, status: int) -> Response:
    return JSONResponse({"error": message}, status, headers=HEADERS)


def create_web_app(settings: Settings, token: str, store_path: Path | None = None) -> Starlette:
    """The page's app; ``settings`` are the command's (model, server, limits, budget)."""
    gate = Gate(token)
    space = Workspace(settings, store_path)

    async def page(request: Request) -> Response:
        exchanged = gate.exchange(request) if gate.at_home(request) else None
        if exchanged is not None:
            return exchanged
        refused = gate.refusal(request)
        if refused is not None:
            return refused
        return _asset("index.html")

    async def asset(request: Request) -> Response:
        refused = gate.refusal(request)
        if refused is not None:
            return refused
        name = request.path_params["name"]
        if name not in ASSETS:
            return _refused("No such file.", 404)
        return _asset(name)

    def api(handler: Callable[[Request], Any]) -> Callable[[Request], Any]:
        async def endpoint(request: Request) -> Response:
            refused = gate.refusal(request)
            if refused is not None:
                return refused
            try:
                answer = await handler(request)
            except BadRequest as exc:
                return _refused(str(exc), exc.status)
            except PromptBatchError as exc:
                return _refused(str(exc), 400)
            return answer if isinstance(answer, Response) else JSONResponse(answer,
                                                                            headers=HEADERS)

        return endpoint

    routes = [Route("/", page, methods=["GET"]),
              Route("/static/{name}", asset, methods=["GET"])]
    routes += [Route(path, api(handler), methods=[method])
               for path, (method, handler) in ROUTES.items()]
    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            space.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.space = space
    return app


def _asset(name: str) -> Response:
    data = files("promptbatch_sheets").joinpath("web", name).read_bytes()
    return Response(data, media_type=ASSETS[name], headers=HEADERS)


def serve_app(port: int = 0, flags: dict[str, Any] | None = None, open_browser: bool = True,
              store_path: Path | None = None,
              announce: Callable[[str], None] | None = None) -> None:
    """Run the page's server on 127.0.0.1 until Ctrl-C; print (and open) its address."""
    say = announce or (lambda line: print(line, flush=True))
    settings = resolve(flags or {}, {})
    token = secrets.token_urlsafe(24)
    app = create_web_app(settings, token, store_path)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, access_log=False,
                                           log_level="warning"))

    async def go() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started and not task.done():
            await asyncio.sleep(0.02)
        if server.started:
            bound = server.servers[0].sockets[0].getsockname()[1]
            address = f"http://127.0.0.1:{bound}/?token={token}"
            model = runner.model_spec(settings)
            say(f"PromptBatch app on {address}")
            say(f"(model {model.label}, answered by {model.server}; the address works once, "
                "in one browser; Ctrl-C stops it)")
            if open_browser:
                await asyncio.to_thread(webbrowser.open, address)
        await task

    asyncio.run(go())

