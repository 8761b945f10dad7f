"""The Sheets menu's routes: a run over windows of a sheet's rows (``/v1/run``) and its dry
run (``/v1/preview``), planned and answered by the command line's own code.

Apps Script stops an execution at 6 minutes and a fetch at about 60 seconds, so a run comes
in windows of numbered rows, each answered for at most ``wait_seconds``: the reply carries
the cells to write (answers headers, answers, ``#ERROR`` cells, a row's later prompt columns
once the answers they use are back) and the rows still pending, which the script sends
again (``resent``) until none is left. The server keeps no state between requests: what
arrived after the wait is in the cache, and a prompt still in flight is joined, not paid
twice.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, replace
from typing import Any

from ..cells import GOOGLE_CELL_LIMIT
from ..errors import BadRequest
from ..estimate import Estimate, cost
from ..plan import Rerun
from ..runner import Prepared, Preview
from ..runner import preview as dry_run
from ..surfaces.caught import CaughtCells
from ..table import cell_name
from .backend import Backend
from .checks import number_field
from .sheet import SentSheet, prepared, sheet_request

MAX_WAIT_S = 300.0
PREVIEW_FIRST_MAX = 20
MAX_PREVIEW_ROWS = 100_000
"""Rows of a sheet a preview may send (the request's size limit applies as well); a larger
sheet sends its first rows and the number of its last row, and the counts are scaled."""


async def run_rows(backend: Backend, body: Any) -> dict[str, Any]:
    """Answers for a window of a sheet's rows, as cells to write, and the rows still
    pending after ``wait_seconds``."""
    sent = sheet_request(backend.settings, body, window=True,
                         optional=frozenset({"wait_seconds", "resent"}))
    wait = body.get("wait_seconds")
    wait = None if wait is None else number_field(wait, "wait_seconds", 1, MAX_WAIT_S)
    if body.get("resent") not in (None, True, False):
        raise BadRequest("resent must be true or false.")
    if body.get("resent"):
        sent = _resent(sent)
    ready = await asyncio.to_thread(prepared, sent)  # templates render off the event loop
    caught = CaughtCells(sent.data, GOOGLE_CELL_LIMIT)
    tally = await backend.answer(ready, caught, wait)
    return {"model": backend.model, "cells": [list(cell) for cell in caught.cells],
            **tally.counts(ready.plan), "kept": ready.plan.kept,
            "pending": tally.pending(ready.plan),
            # the sidebar's cost so far: this window's tokens, priced as the preview prices them
            "prompt_tokens": tally.prompt_tokens, "completion_tokens": tally.completion_tokens,
            "cost_usd": cost(ready.price_label, tally.prompt_tokens, tally.completion_tokens)}


def _resent(sent: SentSheet) -> SentSheet:
    """Rows this run sent before, whose answers came in part: an ``#ERROR`` cell there is
    this run's answer, kept rather than asked again within the same run."""
    return replace(sent, settings=replace(sent.settings, rerun=Rerun.EMPTY))


async def preview(backend: Backend, body: Any) -> dict[str, Any]:
    """What a run of the sheet would send and cost, as ``promptbatch preview`` says it: the
    cache's answers and its calibration, the system prompt, chained prompt columns."""
    sent = sheet_request(backend.settings, body, MAX_PREVIEW_ROWS,
                         optional=frozenset({"first", "last_row"}))
    first = int(number_field(body.get("first", 3), "first", 0, PREVIEW_FIRST_MAX))
    ready = await asyncio.to_thread(prepared, sent)
    shown = dry_run(ready, backend.store, first)
    last = body.get("last_row")
    scale = _scale(ready, None if last is None else int(number_field(
        last, "last_row", 0, 10_000_000)))
    return _preview_reply(backend, shown, scale)


def _scale(ready: Prepared, last_row: int | None) -> float:
    """Rows of the sheet below its header over those sent: 1 when the whole sheet came."""
    grid, header = ready.data.grid, ready.plan.table.header_row
    if last_row is None or last_row < len(grid) or len(grid) - 1 <= header:
        return 1.0
    return (last_row - header) / (len(grid) - 1 - header)


def _preview_reply(backend: Backend, shown: Preview, scale: float) -> dict[str, Any]:
    plan = shown.prepared.plan
    table = plan.table

    def scaled(count: int) -> int:
        return round(count * scale)

    return {
        "model": backend.model,
        "server": backend.spec.server,
        "sheet": table.sheet,
        "sampled": scale != 1.0,
        "steps": [{"name": step.name, "origin": step.template.origin,
                   "uses": [plan.steps[n].name for n in step.needs],
                   "outputs": [{"header": o.header, "exists": o.exists,
                                "cell": cell_name(table.sheet, table.header_row, o.col)}
                               for o in step.outputs]} for step in plan.steps],
        "rows": scaled(shown.rows),
        "kept": scaled(plan.kept),
        "cached": scaled(shown.cached),
        "to_send": scaled(shown.to_send),
        "unique_prompts": scaled(shown.unique_prompts),
        "waiting": scaled(shown.waiting),
        "refused": scaled(len(plan.refused)),
        "refusals": [[row, plan.steps[step].name, reason]
                     for row, step, reason in plan.refused[:5]],
        "first_prompts": [[job.row, job.prompt, job.system] for job in shown.first_prompts],
        "max_tokens": shown.prepared.settings.max_tokens,
        "estimate": asdict(_scaled(shown.estimate, scale)),
    }


def _scaled(guess: Estimate, scale: float) -> Estimate:
    def times(value: float | None) -> float | None:
        return None if value is None else value * scale

    return replace(guess, prompt_tokens=round(guess.prompt_tokens * scale),
                   completion_tokens=round(guess.completion_tokens * scale),
                   completion_tokens_max=round(guess.completion_tokens_max * scale),
                   seconds=guess.seconds * scale, cost_usd=times(guess.cost_usd),
                   cost_max_usd=times(guess.cost_max_usd),
                   batch_cost_usd=times(guess.batch_cost_usd))
