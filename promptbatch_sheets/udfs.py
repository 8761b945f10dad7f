"""``=PROMPTBATCH()`` for Excel: xlwings worksheet functions (Windows, with xlwings' add-in).

The range is planned by ``formula.plan_range``: the command line's rules over a formula's
range, and its answers become cells as a run writes them. Excel recalculates often and
thousands of cells at once, and every answer costs money. So a call first asks the answer
cache shared with the CLI; a prompt that another cell is already waiting for is not sent
again; and the rest go to one background event loop that gathers the prompts of a
recalculation for a moment and sends them through the ``Engine`` (dedupe, cache, bounded
concurrency, the schema repair). Failures come back as ``#ERROR: ...`` text, never as
tracebacks.

With a ``fields`` argument the answer is structured: the model is asked for JSON with those
fields and each data row spills into one typed cell per field; a reply that does not follow
the schema is asked again once, then says why in the row's first cell.

Arguments are typed ``Any``: xlwings turns type hints into converters, and unions have none.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import xlwings as xw

from . import formula, runner
from .cells import EXCEL_CELL_LIMIT, CellValue
from .engine import Engine, RowResult, error_text, fits
from .errors import PromptBatchError, TemplateError
from .plan import ERROR_PREFIX, RowJob
from .providers import ModelSpec, Params
from .runner import LOCAL, connector
from .schema import Schema, load_schema
from .settings import Settings, is_set, resolve
from .store import Store, default_path
from .surfaces.caught import CaughtCells
from .table import TemplateText
from .template import Template, display, variable_name
from .trust import check_server

ORIGIN = "the PROMPTBATCH template"
"""How messages name the template argument."""
GATHER_SECONDS = 0.05
"""How long the sender waits for the other cells of a recalculation before it sends."""


@dataclass(frozen=True)
class Target:
    """Everything besides the prompt that decides where an answer comes from."""

    spec: ModelSpec
    params: Params
    settings: Settings
    store: Path
    schema: Schema | None = field(default=None, compare=False)
    """What a structured answer must fit (its text is part of ``params``)."""


class Sender:
    """One event loop in a daemon thread for every call in this Excel process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._inflight: dict[str, Future[str]] = {}
        self._queued: dict[Target, dict[str, tuple[RowJob, Future[str]]]] = {}
        self._stores: dict[Path, Store] = {}

    def cached(self, target: Target, keys: Sequence[str]) -> dict[str, str]:
        """Answers already stored (that fit the fields, if any), read through one connection
        that every call shares."""
        with self._lock:
            store = self._stores.get(target.store)
            if store is None:
                store = self._stores[target.store] = Store(target.store)
            found = store.get_many(keys)
        return {k: c.text for k, c in found.items()
                if target.schema is None or fits(target.schema, c.text)}

    def ask(self, target: Target, jobs: dict[str, RowJob]) -> dict[str, Future[str]]:
        """Futures of the answer text for each answer key (``#ERROR: ...`` for a failure);
        keys already on their way are shared."""
        futures: dict[str, Future[str]] = {}
        with self._lock:
            for key, job in jobs.items():
                future = self._inflight.get(key)
                if future is None:
                    future = self._inflight[key] = Future()
                    queue = self._queued.setdefault(target, {})
                    if not queue:
                        self._running_loop().call_soon_threadsafe(self._start, target)
                    queue[key] = (job, future)
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
            self._settle(key, queued[key][1], result.text)

        reason = "the request was cancelled"
        store: Store | None = None
        try:
            with self._lock:  # a new cache file is created by one thread only
                store = Store(target.store)
            engine = Engine(target.spec.label, connector(target.spec, target.settings),
                            target.params, store, concurrency=target.settings.concurrency,
                            on_result=deliver, use_cache=target.settings.use_cache,
                            schemas=None if target.schema is None else {0: target.schema})
            await engine.run([replace(queued[k][0], row=i) for i, k in enumerate(keys)])
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


def answers(target: Target, prepared: runner.Prepared, jobs: Sequence[RowJob]) -> list[str]:
    """The answer text for each job: from the cache, from a call in flight, or sent once."""
    keys = [prepared.key(job) for job in jobs]
    found = SENDER.cached(target, keys) if target.settings.use_cache else {}
    missing = {k: j for k, j in zip(keys, jobs, strict=True) if k not in found}
    futures = SENDER.ask(target, missing) if missing else {}
    return [found[k] if k in found else futures[k].result() for k in keys]


def _table(template: str, table: list[list[Any]], headers: list[Any] | None) -> list[list[Any]]:
    """The range as a header row and data rows.

    A template with one variable may take bare values (no header) in one column; otherwise
    the first row of ``table`` is the header row unless ``headers`` is given.
    """
    if headers is not None:
        return [headers, *table]
    names = sorted(Template.parse(template, ORIGIN).variables)
    first = display(table[0][0]).strip() if table and table[0] else ""
    if len(names) <= 1 and len(table[0]) == 1 and variable_name(first) not in names:
        return [[names[0] if names else "value"], *table]
    if len(table) < 2:
        raise TemplateError("PROMPTBATCH needs a header row and at least one data row, or a "
                            "third argument with the headers.")
    return table


@functools.lru_cache(maxsize=256)
def _schema(spec: str) -> Schema | None:
    return load_schema(fields=spec, schema=None, origin="The PROMPTBATCH fields argument")


def _fields_spec(fields: Any) -> str:
    """The fields as one text, or a range of header cells such as ``score (number)``."""
    if not isinstance(fields, list):
        return display(fields)
    return ", ".join(_fields_spec(f) for f in fields if _fields_spec(f).strip())


def _settings(model: Any, temperature: Any, max_tokens: Any, system: Any) -> Settings:
    """The model argument comes from a cell of the workbook, so it is the workbook's choice:
    it may not send one of the user's keys to an address given for another provider."""
    options = dict(temperature=temperature, max_tokens=max_tokens, system=system)
    settings = resolve(dict(options, model=model), {})
    if is_set(model):
        check_server(ModelSpec.parse(settings.model or LOCAL, settings.base_url),
                     resolve(options, {}), {"model": "The model argument of =PROMPTBATCH"})
    return settings


def run_formula(template: Any, table: list[list[Any]], headers: list[Any] | None = None,
                model: Any = None, temperature: Any = None, max_tokens: Any = None,
                system: Any = None, fields: Any = None) -> list[list[CellValue]]:
    """One row of cells per data row: the answer, or one cell per field; a row that cannot
    be answered says why in its first cell."""
    text = display(template)
    schema = _schema(_fields_spec(fields)) if fields is not None else None
    prepared = formula.plan_range(TemplateText(text, ORIGIN), _table(text, table, headers),
                                  _settings(model, temperature, max_tokens, system), schema)
    jobs = prepared.plan.jobs
    target = Target(prepared.spec, prepared.params, prepared.settings, default_path(),
                    schema)
    caught = CaughtCells(prepared.data, EXCEL_CELL_LIMIT)
    writer = runner.writer_for(prepared, caught)
    for job, reply in zip(jobs, answers(target, prepared, jobs), strict=True):
        writer.add(RowResult(job.row, reply, not reply.startswith(ERROR_PREFIX), False))
    writer.flush()
    return [row if row is not None else [""] * formula.width(prepared)
            for row in formula.row_values(prepared, caught.cells)]


def _grid(value: Any) -> list[list[Any]]:
    if isinstance(value, list):
        return [list(r) if isinstance(r, list) else [r] for r in value] or [[None]]
    return [[value]]


@xw.func(async_mode="threading")
@xw.arg("table", ndim=2, err_to_str=True,
        doc="The table with its header row, or one row (then give headers).")
@xw.arg("headers", ndim=1, err_to_str=True, doc="The header row, when table holds only data rows.")
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
