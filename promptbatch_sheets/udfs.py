"""``=PROMPTBATCH()`` for Excel: xlwings worksheet functions (Windows, with xlwings' add-in).

Excel recalculates often and thousands of cells at once, and every answer costs money. So a
call first asks the answer cache shared with the CLI; a prompt that another cell is already
waiting for is not sent again; and the rest go to one background event loop that gathers the
prompts of a recalculation for a moment and sends them through ``engine.run_jobs`` (dedupe,
cache, bounded concurrency). Failures come back as ``#ERROR: ...`` text, never as tracebacks.

With a ``fields`` argument the answer is structured: the model is asked for JSON with those
fields and each data row spills into one typed cell per field; a reply that does not follow
the schema says why in the row's first cell.

Arguments are typed ``Any``: xlwings turns type hints into converters, and unions have none.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xlwings as xw

from .cells import EXCEL_CELL_LIMIT, CellValue, fit_cell
from .engine import RowResult, error_text, run_jobs
from .errors import PromptBatchError, SchemaMismatch, TemplateError
from .plan import ERROR_PREFIX, RowJob
from .providers import ModelSpec, Params
from .runner import LOCAL, connector
from .schema import Schema, load_schema
from .settings import Settings, is_set, resolve
from .store import Store, answer_key, default_path
from .template import Template, display, variable_name
from .trust import check_server

GATHER_SECONDS = 0.05
"""How long the sender waits for the other cells of a recalculation before it sends."""


@dataclass(frozen=True)
class Target:
    """Everything besides the prompt that decides where an answer comes from."""

    spec: ModelSpec
    params: Params
    settings: Settings
    store: Path


class Sender:
    """One event loop in a daemon thread for every call in this Excel process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[str, Future[str]] = {}
        self._queued: dict[Target, dict[str, tuple[str, Future[str]]]] = {}
        self._stores: dict[Path, Store] = {}

    def cached(self, path: Path, keys: Sequence[str]) -> dict[str, str]:
        """Answers already stored, read through one connection that every call shares."""
        with self._lock:
            store = self._stores.get(path)
            if store is None:
                store = self._stores[path] = Store(path)
            return {k: c.text.strip() for k, c in store.get_many(keys).items()}

    def ask(self, target: Target, prompts: dict[str, str]) -> dict[str, Future[str]]:
        """Futures of the cell text for each answer key; keys already on their way are shared."""
        futures: dict[str, Future[str]] = {}
        with self._lock:
            for key, prompt in prompts.items():
                future = self._inflight.get(key)
                if future is None:
                    future = self._inflight[key] = Future()
                    queue = self._queued.setdefault(target, {})
                    if not queue:
                        self._running_loop().call_soon_threadsafe(self._start, target)
                    queue[key] = (prompt, future)
                futures[key] = future
        return futures

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            loop = asyncio.new_event_loop()
            threading.Thread(target=loop.run_forever, name="promptbatch-udfs", daemon=True).start()
            self._loop = loop
        return self._loop

    def _start(self, target: Target) -> None:
        asyncio.ensure_future(self._send(target))

    def _settle(self, key: str, future: Future[str], text: str) -> None:
        """Answer the cells waiting for ``key``; a later call asks again (a failure is retried)."""
        with self._lock:
            if self._inflight.get(key) is future:
                del self._inflight[key]
        if not future.done():
            future.set_result(text)

    async def _send(self, target: Target) -> None:
        await asyncio.sleep(GATHER_SECONDS)
        with self._lock:
            queued = self._queued.pop(target, {})
        keys = list(queued)

        def deliver(result: RowResult) -> None:
            key = keys[result.row]
            self._settle(key, queued[key][1], result.text.strip())

        reason = "the request was cancelled"
        store: Store | None = None
        try:
            with self._lock:  # a new cache file is created by one thread only
                store = Store(target.store)
            await run_jobs([RowJob(i, queued[k][0]) for i, k in enumerate(keys)],
                           target.spec.label, connector(target.spec, target.settings),
                           target.params, store, concurrency=target.settings.concurrency,
                           on_result=deliver, use_cache=target.settings.use_cache)
        except Exception as exc:  # a missing key, a server that won't start: every cell says so
            reason = _reason(exc)
        finally:
            if store is not None:
                store.close()
            for key, (_, future) in queued.items():
                self._settle(key, future, error_text(reason))


SENDER = Sender()


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, PromptBatchError) else f"{type(exc).__name__}: {exc}"


@functools.lru_cache(maxsize=256)
def _template(source: str) -> Template:
    """Compiling Jinja2 costs a millisecond; thousands of cells share a handful of templates."""
    return Template.parse(source, "the PROMPTBATCH template")


def answers(target: Target, prompts: Sequence[str]) -> list[str]:
    """The cell text for each prompt: from the cache, from a call in flight, or sent once."""
    label = target.spec.label
    keys = [answer_key(label, target.params, p) for p in prompts]
    found = SENDER.cached(target.store, keys) if target.settings.use_cache else {}
    missing = {k: p for k, p in zip(keys, prompts, strict=True) if k not in found}
    futures = SENDER.ask(target, missing) if missing else {}
    return [found[k] if k in found else futures[k].result() for k in keys]


def _records(template: Template, table: list[list[Any]],
             headers: list[Any] | None) -> tuple[list[str], list[list[Any]]]:
    """Split the arguments into header names and data rows.

    A template with one variable may take bare values (no header) in one column; otherwise
    the first row of ``table`` is the header row unless ``headers`` is given.
    """
    if headers is not None:
        return [display(h).strip() for h in headers], table
    names = sorted(template.variables)
    first = display(table[0][0]).strip() if table and table[0] else ""
    if len(names) <= 1 and len(table[0]) == 1 and variable_name(first) not in names:
        return [names[0] if names else "value"], table
    if len(table) < 2:
        raise TemplateError("PROMPTBATCH needs a header row and at least one data row, or a "
                            "third argument with the headers.")
    return [display(h).strip() for h in table[0]], table[1:]


@functools.lru_cache(maxsize=256)
def _schema(spec: str) -> Schema | None:
    return load_schema(fields=spec, schema=None, origin="The PROMPTBATCH fields argument")


def _fields_spec(fields: Any) -> str:
    """The fields as one text, or a range of header cells such as ``score (number)``."""
    if not isinstance(fields, list):
        return display(fields)
    return ", ".join(_fields_spec(f) for f in fields if _fields_spec(f).strip())


def _target(model: Any, temperature: Any, max_tokens: Any, system: Any,
            schema: Schema | None) -> Target:
    """The model argument comes from a cell of the workbook, so it is the workbook's choice:
    it may not send one of the user's keys to an address given for another provider."""
    options = dict(temperature=temperature, max_tokens=max_tokens, system=system)
    settings = resolve(dict(options, model=model), {})
    spec = ModelSpec.parse(settings.model or LOCAL, settings.base_url)
    if is_set(model):
        check_server(spec, resolve(options, {}),
                     {"model": "The model argument of =PROMPTBATCH"})
    params = Params(settings.temperature, settings.max_tokens, settings.system,
                    schema.text() if schema else None)
    return Target(spec, params, settings, default_path())


def _is_blank(row: Sequence[Any]) -> bool:
    return all(display(v).strip() == "" for v in row)


def run_formula(template: Any, table: list[list[Any]], headers: list[Any] | None = None,
                model: Any = None, temperature: Any = None, max_tokens: Any = None,
                system: Any = None, fields: Any = None) -> list[list[CellValue]]:
    """One row of cells per data row: the answer, or one cell per field; a row that cannot
    be rendered or answered says why in its first cell."""
    parsed = _template(display(template))
    names, rows = _records(parsed, table, headers)
    parsed.check_columns(names)
    schema = _schema(_fields_spec(fields)) if fields is not None else None
    target = _target(model, temperature, max_tokens, system, schema)
    width = len(schema.fields) if schema else 1
    out: list[list[CellValue]] = [[""] * width for _ in rows]
    prompts: dict[int, str] = {}
    for i, row in enumerate(rows):
        if _is_blank(row):
            continue
        try:
            prompts[i] = parsed.render(dict(zip(names, row, strict=False)), f"data row {i + 1}")
        except TemplateError as exc:
            out[i][0] = error_text(str(exc))
    for i, text in zip(prompts, answers(target, list(prompts.values())), strict=True):
        out[i] = _cells(text, schema)
    return [[fit_cell(v, EXCEL_CELL_LIMIT) if isinstance(v, str) else v for v in row]
            for row in out]


def _cells(text: str, schema: Schema | None) -> list[CellValue]:
    """An answer as cells: the text itself, or its fields once the reply is checked."""
    if schema is None:
        return [text]
    blank: list[CellValue] = [""] * (len(schema.fields) - 1)
    if text.startswith(ERROR_PREFIX):
        return [text, *blank]
    try:
        return schema.cells(schema.check(text))
    except SchemaMismatch as exc:
        return [error_text(exc.reason), *blank]


def _grid(value: Any) -> list[list[Any]]:
    if isinstance(value, list):
        return [list(r) if isinstance(r, list) else [r] for r in value] or [[None]]
    return [[value]]


@xw.func(async_mode="threading")
@xw.arg("table", ndim=2, doc="The table with its header row, or one row (then give headers).")
@xw.arg("headers", ndim=1, doc="The header row, when table holds only data rows.")
@xw.arg("template", doc="A Jinja2 prompt template, e.g. Describe {{ product_name }}.")
@xw.arg("model", doc="provider:model, e.g. openai:gpt-4o-mini (default: your config).")
@xw.arg("fields", ndim=1, doc="Answer in columns: e.g. sentiment (positive|negative), "
                              "score (number), reason; or a range of such headers.")
def PROMPTBATCH(template: Any, table: Any, headers: Any = None, model: Any = None,
                temperature: Any = None, max_tokens: Any = None, system: Any = None,
                fields: Any = None) -> Any:
    """One model answer per data row of a table (a column that spills), or one for one row;
    with ``fields``, one spilled row of typed cells per data row."""
    fields = fields if fields is not None and _fields_spec(fields).strip() else None
    try:
        grid = _grid(table)
        heads = headers if headers is None or isinstance(headers, list) else [headers]
        rows = run_formula(template, grid, heads, model, temperature, max_tokens, system,
                           fields)
    except Exception as exc:  # a worksheet function answers with text, never a traceback
        return error_text(_reason(exc))
    if len(rows) == 1 and fields is None and (
            headers is not None or (len(grid), len(grid[0])) == (1, 1)):
        return rows[0][0]
    return rows
