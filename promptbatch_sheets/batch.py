"""One batch from a surface: read the sheet, plan the prompts, run them, write the answers.

This is the public entry point every surface shares (CLI, Excel, Google Sheets); it owns the
order of things and the flushing of answers back into the sheet in blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from . import userconfig
from .budget import Budget
from .engine import RowResult, Summary, error_text, run_jobs
from .errors import ConfigError
from .estimate import Estimate, cost, estimate
from .plan import Plan, make_plan
from .providers import ModelSpec, Params, Provider, RetryPolicy, open_provider
from .settings import Settings, resolve
from .sheet import Cell, SheetData, Surface
from .store import Store, key_function
from .table import TemplateText, locate, quote_sheet

FLUSH_SECONDS = 2.0
"""Answers reach the sheet at least this often while a run goes on."""
LOCAL = "local"


@dataclass(frozen=True)
class Prepared:
    """Everything decided before the first call: a preview shows it, a run executes it."""

    data: SheetData
    plan: Plan
    settings: Settings
    spec: ModelSpec
    params: Params
    model_defaulted: bool

    @property
    def price_label(self) -> str:
        return f"{self.spec.provider}:{self.spec.model}"


@dataclass
class Preview:
    prepared: Prepared
    rows: int
    to_send: int
    cached: int
    unique_prompts: int
    estimate: Estimate
    first_prompts: list[tuple[int, str]] = field(default_factory=list)


def prepare(surface: Surface, flags: dict[str, Any] | None = None,
            template: TemplateText | None = None, template_cell: str | None = None) -> Prepared:
    """Read the sheet and decide everything; raises PromptBatchError with a fix, never calls."""
    data = surface.read()
    settings = resolve(flags or {}, data.settings)
    if template_cell:
        template = TemplateText(surface.cell_text(template_cell), template_cell)
    conf_template = data.settings.get("template")
    fallback = TemplateText(conf_template, f"{quote_sheet('promptbatch.conf')} (key template)"
                            ) if conf_template else None
    table = locate(data.grid, data.name, explicit=template or data.template, fallback=fallback,
                   bounds=data.bounds, output_header=settings.output_column,
                   skip_rows=data.hidden_rows if settings.skip_hidden else frozenset(),
                   merged=data.merged)
    plan = make_plan(table, data.grid, settings.rerun, data.uncalculated)
    spec = ModelSpec.parse(settings.model or LOCAL, settings.base_url)
    params = Params(settings.temperature, settings.max_tokens, settings.system)
    return Prepared(data, plan, settings, spec, params, model_defaulted=not settings.model)


def pending(prepared: Prepared, store: Store) -> tuple[list[str], int]:
    """The distinct prompts the cache cannot answer, and how many rows it does answer."""
    key_of = key_function(prepared.spec.label, prepared.params)
    keys = [key_of(j.prompt) for j in prepared.plan.jobs]
    hits = store.get_many(keys) if prepared.settings.use_cache else {}
    fresh = {k: j.prompt for k, j in zip(keys, prepared.plan.jobs, strict=True) if k not in hits}
    return list(fresh.values()), sum(1 for k in keys if k in hits)


def forecast(prepared: Prepared, store: Store, prompts: list[str]) -> Estimate:
    """The estimate for ``prompts``, calibrated by this model's past answers in the cache."""
    settings = prepared.settings
    return estimate(prepared.price_label, prompts, settings.max_tokens, settings.concurrency,
                    system=settings.system, history=store.history(prepared.spec.label))


def preview(prepared: Prepared, store: Store, first: int = 3) -> Preview:
    """What a run would send and cost; looks in the cache, calls no model."""
    jobs = prepared.plan.jobs
    fresh, cached_rows = pending(prepared, store)
    return Preview(
        prepared=prepared,
        rows=len(prepared.plan.table.rows),
        to_send=len(jobs) - cached_rows,
        cached=cached_rows,
        unique_prompts=len(fresh),
        estimate=forecast(prepared, store, fresh),
        first_prompts=[(j.row, j.prompt) for j in jobs[:first]],
    )


def api_key_for(spec: ModelSpec) -> str | None:
    key = userconfig.api_key(spec.provider, spec.key_variable)
    if spec.key_required and not key:
        raise ConfigError(
            f"{spec.provider}:{spec.model} needs an API key. Set the environment variable "
            f"{spec.key_variable}, or run: promptbatch keys set {spec.provider}"
        )
    return key


def connector(
    spec: ModelSpec, settings: Settings, on_retry: Callable[[str], None] | None = None
) -> Callable[[], AbstractAsyncContextManager[Provider]]:
    """What ``engine.run_jobs`` calls to open the provider, only once a call is needed."""

    def connect() -> AbstractAsyncContextManager[Provider]:
        return open_provider(spec, api_key=api_key_for(spec), concurrency=settings.concurrency,
                             timeout=settings.timeout,
                             policy=RetryPolicy(attempts=settings.retries), on_retry=on_retry,
                             rpm=settings.rpm, tpm=settings.tpm)

    return connect


class BlockWriter:
    """Collects answers and hands them to the surface in blocks, at most every 2 seconds."""

    def __init__(self, surface: Surface, column: int) -> None:
        self.surface = surface
        self.column = column
        self.pending: list[Cell] = []
        self.last = time.monotonic()

    def add(self, result: RowResult) -> None:
        self.pending.append((result.row, self.column, result.text.strip()))
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.surface.write(self.pending)
            self.pending = []
        self.last = time.monotonic()


def run(prepared: Prepared, surface: Surface, store: Store,
        on_result: Callable[[RowResult], None] | None = None,
        on_retry: Callable[[str], None] | None = None) -> Summary:
    """Run a prepared batch; answers reach the surface in blocks, and all of them on exit."""
    table = prepared.plan.table
    settings = prepared.settings
    surface.ready()
    writer = BlockWriter(surface, table.output_col)
    first: list[Cell] = [] if table.output_exists else [
        (table.header_row, table.output_col, table.output_header)]
    first += [(row, table.output_col, error_text(reason)) for row, reason in prepared.plan.refused]
    writer.pending += first  # with the first answers: a file is not saved for a header alone
    retries = 0

    def count_retry(reason: str) -> None:
        nonlocal retries
        retries += 1
        if on_retry is not None:
            on_retry(reason)

    def deliver(result: RowResult) -> None:
        writer.add(result)
        if on_result is not None:
            on_result(result)

    connect = connector(prepared.spec, settings, count_retry)
    budget = make_budget(prepared)
    guess: Estimate | None = None

    def forecast_sent(prompts: list[str]) -> None:
        nonlocal guess  # taken before the new answers join the model's history
        guess = forecast(prepared, store, prompts)

    async def go() -> Summary:
        return await run_jobs(prepared.plan.jobs, prepared.spec.label, connect, prepared.params,
                              store, concurrency=settings.concurrency, on_result=deliver,
                              use_cache=settings.use_cache, budget=budget,
                              on_plan=forecast_sent)

    try:
        summary = asyncio.run(go())
    finally:
        writer.flush()
        surface.close()
    summary.retries = retries
    summary.estimate = guess
    summary.kept = prepared.plan.kept
    summary.failed += len(prepared.plan.refused)
    summary.errors += [reason for _, reason in prepared.plan.refused[:5]]
    return summary


def make_budget(prepared: Prepared) -> Budget | None:
    """The run's spending cap, if one is set; refused when the price is unknown."""
    limit = prepared.settings.budget
    if limit is None:
        return None
    label = prepared.price_label
    if cost(label, 0, 0) is None:
        raise ConfigError(f"--budget needs the price of {label}, which is not in the price "
                          "table. Add it to prices.json, or run without --budget.")

    def price(prompt_tokens: int, completion_tokens: int) -> float:
        return cost(label, prompt_tokens, completion_tokens) or 0.0

    return Budget(limit, price, prepared.settings.max_tokens)


def summary_cost(prepared: Prepared, summary: Summary) -> float | None:
    return cost(prepared.price_label, summary.prompt_tokens, summary.completion_tokens)
