"""Provider Batch API jobs from the Sheets menu: submit a sheet's prompts now, collect later.

The script sends the whole sheet (its values, the promptbatch.conf rows, the named template);
the server plans it as ``promptbatch run --via batch`` does and hands it to ``batchapi``,
whose journal lives in the server's store, so a collect works after a restart of either side.
The sheet writes ``batchapi`` makes are caught by a surface that only keeps the cells, and go
back to the script, which writes them: the server never touches the spreadsheet.

Batch API clients block and ``runner.run`` starts an event loop of its own, so both run in a
worker thread, on a store connection of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path
from typing import Any

from .. import batchapi
from ..batchapi import Collected
from ..cells import fit_cell
from ..errors import ConfigError, WorkbookError
from ..providers import ModelSpec, require_batch_api
from ..report import progress
from ..settings import Settings
from ..store import Store
from ..store.journal import Job
from ..surfaces.base import Cell, SheetData
from ..table import Grid
from .sheet import SentSheet, prepared, sheet_request

MAX_SHEET_ROWS = 100_000
"""Rows of a sheet sent whole for a Batch API job; the request's size limit applies as well."""
CELL_LIMIT = 50_000


class CaughtCells:
    """A surface that keeps what is written to it, for the script to write into the sheet."""

    plain_text = False

    def __init__(self, data: SheetData) -> None:
        self.data = data
        self.cells: list[Cell] = []

    def read(self) -> SheetData:
        return self.data

    def cell_text(self, ref: str) -> str:
        raise WorkbookError("The Sheets menu sends its template; a cell reference is not read.")

    def ready(self) -> None:
        """The script writes the cells; nothing here can fail before a paid answer."""

    def previous(self) -> Grid | None:
        """None: the script writes into the sheet, which already holds the earlier answers."""
        return None

    def write(self, cells: Sequence[Cell]) -> None:
        self.cells += cells

    def close(self) -> None:
        """Nothing to flush: the cells go back in the reply."""


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
    caught = CaughtCells(sent.data)
    with closing(Store(path)) as store:
        new, collected = action(sent, caught, store)
    summary = collected.summary
    return {
        "sent": sum(job.requests for job in new),
        "new_jobs": [job.id for job in new],
        "estimate_usd": _total([job.estimate_usd for job in new]),
        "jobs": [_job(job) for job in collected.jobs],
        "cells": [[row, col, fit_cell(v, CELL_LIMIT) if isinstance(v, str) else v]
                  for row, col, v in caught.cells],
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
