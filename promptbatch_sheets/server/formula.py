"""The Sheets formula's route: ``=PROMPTBATCH(template, range)`` answered by
``/v1/complete``.

The script sends the template, the range's header row and its data rows (those its own cache
lacks); the server plans them with ``formula.plan_range``, the command line's rules over a
formula's range, and answers from its cache first, for at most ``wait_seconds`` (a custom
function is stopped at 30 s). Each row's answer is its cell text, or one typed cell per field;
a row still waiting is ``null``, and its answer is in the cache when the formula asks again.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .. import formula
from ..cells import GOOGLE_CELL_LIMIT
from ..runner import Prepared
from ..schema import load_schema
from ..settings import overlay
from ..surfaces.caught import CaughtCells
from ..table import TemplateText
from .backend import Backend
from .checks import body_fields, cell_list, number_field, row_grid, sampling_options, text_field
from .sheet import schema_text

MAX_WAIT_S = 300.0
ROW_FIELDS = {"template", "headers", "rows"}
ROW_OPTIONAL = {"origin", "options", "fields", "schema", "wait_seconds"}


async def complete(backend: Backend, body: Any) -> dict[str, Any]:
    """Answers for a chunk of rows, from the cache first; ``null`` for rows past the wait."""
    body = body_fields(body, ROW_FIELDS, ROW_OPTIONAL)
    wait = body.get("wait_seconds")
    wait = None if wait is None else number_field(wait, "wait_seconds", 1, MAX_WAIT_S)
    # parsed and rendered off the event loop: a template that spends its whole time budget
    # must not stall the other requests, or a shutdown
    ready = await asyncio.to_thread(_planned, backend, body)
    caught = CaughtCells(ready.data, GOOGLE_CELL_LIMIT)
    tally = await backend.answer(ready, caught, wait)
    schema = ready.plan.steps[0].schema
    rows = formula.row_values(ready, caught.cells)
    return {"answers": [row if row is None or schema else row[0] for row in rows],
            "fields": None if schema is None else [f.name for f in schema.fields],
            "model": backend.model, "server": backend.spec.server, **tally.counts(ready.plan),
            "pending": sum(1 for row in rows if row is None)}


def _planned(backend: Backend, body: dict[str, Any]) -> Prepared:
    template = TemplateText(text_field(body["template"], "template"),
                            text_field(body.get("origin", "the request's template field"),
                                       "origin"))
    fields, schema = body.get("fields"), body.get("schema")
    structured = load_schema(fields=None if fields is None else text_field(fields, "fields"),
                             schema=None if schema is None else schema_text(schema, "schema"),
                             origin="the request's fields")
    settings = overlay(backend.settings, sampling_options(body.get("options")),
                       "the request's options")
    return formula.plan_range(template, [cell_list(body["headers"], "headers"),
                                         *row_grid(body["rows"], "rows")], settings, structured)
