"""The formula route: answers (``/v1/complete``) for a chunk of rows that a script sends with
its template."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

from ..cells import GOOGLE_CELL_LIMIT, CellValue, answer_text, fit_cell
from ..engine import RowResult, error_text, run_jobs, structured
from ..errors import BadRequest, PromptBatchError
from ..plan import ERROR_PREFIX, RowJob
from ..providers import Params
from ..schema import Schema, load_schema
from ..template import Template, display
from .backend import Backend
from .checks import (
    Scalar,
    body_fields,
    cell_list,
    number_field,
    row_grid,
    sampling_options,
    text_field,
    text_list,
)
from .sheet import schema_text

MAX_WAIT_S = 300.0



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
                              text_field(body.get("origin", "the request's template field"),
                                         "origin"))
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
        return fit_cell(answer_text(result.text), GOOGLE_CELL_LIMIT)
    values = rows.schema.cells(rows.schema.check(result.text))
    return [fit_cell(v, GOOGLE_CELL_LIMIT) if isinstance(v, str) else v for v in values]


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
                   schemas=None if rows.schema is None else {0: rows.schema},
                   shared=backend.in_flight)
    with contextlib.suppress(asyncio.TimeoutError):  # what arrived is stored; ask again
        await asyncio.wait_for(run, wait)
    pending = sum(1 for a in answers if a is None)
    return {"answers": answers, "model": backend.model, **counts, "pending": pending}
