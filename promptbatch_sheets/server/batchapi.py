"""Provider Batch API jobs from the Sheets menu: submit a sheet's prompts now, collect later.

The script sends the whole sheet (its values, the promptbatch.conf rows, the named template);
the server plans it as ``promptbatch run --via batch`` does and hands it to ``batchapi``,
whose journal lives in the server's store, so a collect works after a restart of either side.
The sheet writes ``batchapi`` makes are caught (``surfaces.caught``) and go back to the
script, which writes them: the server never touches the spreadsheet.

Batch API clients block and ``runner.run`` starts an event loop of its own, so both run in a
worker thread, on a store connection of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from .. import batchapi
from ..batchapi import Collected
from ..cells import GOOGLE_CELL_LIMIT
from ..errors import ConfigError
from ..providers import ModelSpec, require_batch_api
from ..report import progress
from ..settings import Settings
from ..store import Store
from ..store.journal import Job
from ..surfaces.caught import CaughtCells
from .sheet import SentSheet, prepared, sheet_request

MAX_SHEET_ROWS = 100_000
"""Rows of a sheet sent whole for a Batch API job; the request's size limit applies as well."""


def check_model(spec: ModelSpec) -> None:
    """Refuse before reading the sheet when this server's model has no Batch API."""
    try:
        require_batch_api(spec)
    except ConfigError:
        raise ConfigError(
            f"This server runs {spec.provider}:{spec.model}, which has no Batch API. Batches "
            "from the Sheets menu need a server started with --model openai:MODEL or "
            "--model anthropic:MODEL; use Run batch to answer in realtime.") from None


async def submit(settings: Settings, spec: ModelSpec, store: Path, body: Any) -> dict[str, Any]:
    """Collect what is done, send what the cache and running jobs lack, write the rest."""
    check_model(spec)
    sent = sheet_request(settings, body, MAX_SHEET_ROWS)
    return await asyncio.to_thread(_in_store, store, sent, _submit)


async def collect(settings: Settings, spec: ModelSpec, store: Path, body: Any) -> dict[str, Any]:
    """Poll the sheet's jobs, store finished answers, and return the cells to write."""
    check_model(spec)
    sent = sheet_request(settings, body, MAX_SHEET_ROWS)
    return await asyncio.to_thread(_in_store, store, sent, _collect)


Action = Callable[[SentSheet, CaughtCells, Store], tuple[list[Job], Collected]]


def _in_store(path: Path, sent: SentSheet, action: Action) -> dict[str, Any]:
    caught = CaughtCells(sent.data, GOOGLE_CELL_LIMIT)
    with closing(Store(path)) as store:
        new, collected = action(sent, caught, store)
    summary = collected.summary
    return {
        "sent": sum(job.requests for job in new),
        "new_jobs": [job.id for job in new],
        "estimate_usd": _total([job.estimate_usd for job in new]),
        "jobs": [_job(job) for job in collected.jobs],
        "cells": [list(cell) for cell in caught.cells],
        "answered": summary.cached,
        "failed": summary.failed,
        "waiting": collected.waiting,
        "unsent": collected.unsent,
        "kept": summary.kept,
    }


def _submit(sent: SentSheet, caught: CaughtCells, store: Store) -> tuple[list[Job], Collected]:
    return batchapi.submit_and_collect(prepared(sent), caught, store)


def _collect(sent: SentSheet, caught: CaughtCells, store: Store) -> tuple[list[Job], Collected]:
    return [], batchapi.collect(prepared(sent), caught, store)


def _total(costs: list[float | None]) -> float | None:
    return None if any(c is None for c in costs) else sum(c or 0.0 for c in costs)


def _job(job: Job) -> dict[str, Any]:
    return {"id": job.id, "status": job.status, "requests": job.requests,
            "progress": progress(job), "collected": not job.open}
