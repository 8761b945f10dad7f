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
from functools import cached_property
from pathlib import Path
from typing import Any

from . import userconfig
from .budget import Budget
from .chain import Chain
from .engine import RowResult, Summary, error_text, run_jobs, structured
from .errors import ConfigError
from .estimate import Estimate, calibrate, cost, estimate
from .plan import Plan, RowJob, make_plan
from .providers import ModelSpec, Params, Provider, RetryPolicy, open_provider
from .schema import Schema, load_schema
from .settings import Settings, resolve
from .sheet import CONF_SHEET, Cell, SheetData, Surface
from .store import Store, key_function
from .table import Table, TemplateText, locate, quote_sheet

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

    @property
    def schemas(self) -> dict[int, Schema]:
        """The structured steps' schemas, by step."""
        return {s.index: s.schema for s in self.plan.steps if s.schema is not None}

    def as_sent(self, job: RowJob) -> str:
        """The text a request carries for ``job``, as far as its size goes: a structured
        step's schema is sent too (in the prompt, or as response_format or a tool), which
        the engine counts the same way when it records what a request sent."""
        schema = self.plan.steps[job.step].schema
        return job.prompt if schema is None else job.prompt + schema.instructions()

    def key(self, job: RowJob) -> str:
        """The answer key of ``job``: its step's parameters and its prompt."""
        return self._key_functions[job.step](job.prompt)

    @cached_property
    def _key_functions(self) -> list[Callable[[str], str]]:
        return [key_function(self.spec.label, self.params_for(s.index))
                for s in self.plan.steps]

    def params_for(self, step: int) -> Params:
        """What a prompt of ``step`` is sent with (and so part of its cache key)."""
        schema = self.plan.steps[step].schema
        return self.params if schema is None else structured(self.params, schema)


@dataclass
class Preview:
    prepared: Prepared
    rows: int
    to_send: int
    cached: int
    unique_prompts: int
    """Distinct prompts among those that can be rendered now."""
    waiting: int
    """Prompts rendered during the run, once the answers they use are back."""
    estimate: Estimate
    first_prompts: list[tuple[int, str]] = field(default_factory=list)


def prepare(surface: Surface, flags: dict[str, Any] | None = None,
            template: TemplateText | None = None, template_cell: str | None = None,
            base_dir: Path | None = None) -> Prepared:
    """Read the sheet and decide everything; raises PromptBatchError with a fix, never calls.

    ``base_dir`` is where a schema file named by a relative path is looked for.
    """
    data = surface.read()
    settings = resolve(flags or {}, data.settings)
    if template_cell:
        template = TemplateText(surface.cell_text(template_cell), template_cell)
    return plan_sheet(data, settings, template, base_dir)


def plan_sheet(data: SheetData, settings: Settings, template: TemplateText | None = None,
               base_dir: Path | None = None) -> Prepared:
    """Everything ``prepare`` decides, from a sheet already read and settings already
    merged: the HTTP server gets both from a request, not from a surface."""
    table, schemas = read_sheet(data, settings, template, base_dir)
    plan = make_plan(table, data.grid, settings.rerun, data.uncalculated, schemas)
    spec = ModelSpec.parse(settings.model or LOCAL, settings.base_url)
    params = Params(settings.temperature, settings.max_tokens, settings.system)
    return Prepared(data, plan, settings, spec, params, model_defaulted=not settings.model)


def read_sheet(data: SheetData, settings: Settings, template: TemplateText | None = None,
               base_dir: Path | None = None) -> tuple[Table, dict[str, Schema]]:
    """The sheet's table, every template in it, and the structured answers' schemas by
    prompt name; ``template`` (command line) wins over the sheet's own."""
    conf = {key: TemplateText(text, f"{quote_sheet(CONF_SHEET)} (key {key})")
            for key, text in data.settings.items() if key.partition(".")[0] == "template"}
    named = {key.partition(".")[2]: text for key, text in conf.items() if "." in key}
    schemas = _schemas(settings, data.settings, base_dir)
    table = locate(data.grid, data.name, explicit=template or data.template,
                   fallback=conf.get("template"), named=named,
                   fields={name: [f.name for f in s.fields] for name, s in schemas.items()},
                   bounds=data.bounds, output_header=settings.output_column,
                   skip_rows=data.hidden_rows if settings.skip_hidden else frozenset(),
                   merged=data.merged)
    names = {p.name.lower(): p.name for p in table.prompts}
    unknown = next((n for n in schemas if n not in names), None)
    if unknown is not None:
        raise ConfigError(
            f"The {quote_sheet(CONF_SHEET)} sheet describes the answers of {unknown!r} "
            f"(fields.{unknown} or schema.{unknown}), but no template fills a column of that "
            f"name. Prompt columns: {', '.join(map(repr, names.values()))}.")
    return table, {names[n]: s for n, s in schemas.items()}


def _schemas(settings: Settings, conf: dict[str, str],
             base_dir: Path | None) -> dict[str, Schema]:
    """Structured answers by prompt name (lower case): ``fields``/``schema`` for the answers
    column, ``fields.NAME``/``schema.NAME`` in the conf sheet for the column NAME."""
    found = {}
    main = load_schema(fields=settings.fields, schema=settings.schema, base_dir=base_dir,
                       origin="the fields/schema setting")
    if main is not None:
        found[settings.output_column.strip().lower()] = main
    names = {key.partition(".")[2] for key in conf
             if key.partition(".")[0] in ("fields", "schema") and "." in key}
    for name in sorted(names):
        where = f"{quote_sheet(CONF_SHEET)} (key fields.{name} or schema.{name})"
        schema = load_schema(fields=conf.get(f"fields.{name}"),
                             schema=conf.get(f"schema.{name}"), base_dir=base_dir, origin=where)
        if schema is not None:
            found[name] = schema
    return found


def pending(prepared: Prepared, store: Store) -> tuple[list[RowJob], int]:
    """One job per distinct prompt the cache cannot answer, and how many it does answer."""
    keys = [prepared.key(j) for j in prepared.plan.jobs]
    hits = store.get_many(keys) if prepared.settings.use_cache else {}
    fresh = {k: j for k, j in zip(keys, prepared.plan.jobs, strict=True) if k not in hits}
    return list(fresh.values()), sum(1 for k in keys if k in hits)


def forecast(prepared: Prepared, store: Store, jobs: list[RowJob]) -> Estimate:
    """The estimate for ``jobs``, calibrated by this model's past answers in the cache."""
    settings = prepared.settings
    prompts = [prepared.as_sent(job) for job in jobs]
    label = prepared.spec.label
    return estimate(prepared.price_label, prompts, settings.max_tokens, settings.concurrency,
                    system=settings.system, history=store.history(label),
                    speed=store.speed(label))


def later_prompts(prepared: Prepared, store: Store) -> list[RowJob]:
    """The prompts that wait for other answers, rendered with stand-ins of a typical answer's
    length: their text is unknown until the run, their size is what an estimate needs."""
    plan = prepared.plan
    if not plan.waiting:
        return []
    settings = prepared.settings
    calibration = calibrate(prepared.price_label, store.history(prepared.spec.label),
                            settings.system is not None)
    stand_in = "x" * round(calibration.answer(settings.max_tokens) * calibration.chars_per_token)
    jobs = []
    for row, steps in plan.waiting.items():
        answers = {s.index: [stand_in] * len(s.outputs) for s in plan.steps}
        answers.update(plan.known.get(row, {}))
        jobs += [RowJob(row, plan.render(prepared.data.grid, row, step, answers), step)
                 for step in steps]
    return jobs


def preview(prepared: Prepared, store: Store, first: int = 3) -> Preview:
    """What a run would send and cost; looks in the cache, calls no model."""
    jobs = prepared.plan.jobs
    fresh, cached_rows = pending(prepared, store)
    later = later_prompts(prepared, store)
    return Preview(
        prepared=prepared,
        rows=len(prepared.plan.table.rows),
        to_send=len(jobs) - cached_rows + len(later),
        cached=cached_rows,
        unique_prompts=len(fresh),
        waiting=len(later),
        estimate=forecast(prepared, store, fresh + later),
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
    spec: ModelSpec, settings: Settings, on_retry: Callable[[str], None] | None = None,
    on_measured: Callable[[dict[str, float]], None] | None = None,
) -> Callable[[], AbstractAsyncContextManager[Provider]]:
    """What ``engine.run_jobs`` calls to open the provider, only once a call is needed."""

    def connect() -> AbstractAsyncContextManager[Provider]:
        return open_provider(spec, api_key=api_key_for(spec), concurrency=settings.concurrency,
                             timeout=settings.timeout,
                             policy=RetryPolicy(attempts=settings.retries), on_retry=on_retry,
                             rpm=settings.rpm, tpm=settings.tpm, on_measured=on_measured)

    return connect


class BlockWriter:
    """Collects answers and hands them to the surface in blocks, at most every 2 seconds."""

    def __init__(self, surface: Surface, plan: Plan) -> None:
        self.surface = surface
        self.plan = plan
        self.pending: list[Cell] = []
        self.last = time.monotonic()

    def add(self, result: RowResult) -> None:
        step = self.plan.steps[result.step]
        values = step.cells(result.text) if result.ok else [result.text] + [""] * (
            len(step.cols) - 1)
        self.pending += [(result.row, col, value) for col, value in zip(step.cols, values,
                                                                        strict=True)]
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
    plan = prepared.plan
    settings = prepared.settings
    surface.ready()
    writer = BlockWriter(surface, plan)
    writer.pending += [(plan.table.header_row, o.col, o.header)
                       for o in plan.table.outputs if not o.exists]
    writer.pending += [(row, plan.steps[step].cols[0], error_text(reason))
                       for row, step, reason in plan.refused]
    # written with the first answers: a file is not saved for its headers alone
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

    measured: dict[str, float] = {}
    connect = connector(prepared.spec, settings, count_retry, measured.update)
    budget = make_budget(prepared)
    guess: Estimate | None = None

    def forecast_sent(jobs: list[RowJob]) -> None:
        nonlocal guess  # taken before the new answers join the model's history
        guess = forecast(prepared, store, jobs + later_prompts(prepared, store))

    async def go() -> Summary:
        return await run_jobs(prepared.plan.jobs, prepared.spec.label, connect, prepared.params,
                              store, concurrency=settings.concurrency, on_result=deliver,
                              use_cache=settings.use_cache, budget=budget,
                              on_plan=forecast_sent, schemas=prepared.schemas,
                              follow=Chain(plan, prepared.data.grid) if plan.waiting else None)

    try:
        summary = asyncio.run(go())
    finally:
        writer.flush()
        surface.close()
    if measured and summary.requests:  # what the next estimate of this model's time starts from
        store.put_speed(prepared.spec.label, {
            **measured, "requests": summary.requests, "seconds": summary.seconds,
            "prompt_tokens": summary.prompt_tokens,
            "completion_tokens": summary.completion_tokens})
    summary.retries = retries
    summary.estimate = guess
    summary.kept = prepared.plan.kept
    summary.rows += len(plan.refused)
    summary.failed += len(plan.refused)
    summary.errors += [reason for _, _, reason in plan.refused[:5]]
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
