"""One run from a surface: read the sheet, plan the prompts, run them, write the answers.

This is the public entry point every surface shares (CLI, Excel, Google Sheets); it owns the
order of things and the flushing of answers back into the sheet in blocks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from . import userconfig
from .budget import Budget
from .cells import escape_formula
from .chain import Chain
from .engine import Engine, RowResult, Summary, error_text
from .errors import ConfigError, Interrupted, SetupError
from .estimate import Estimate, calibrate, cost, estimate
from .export import Export, refuse_from_sheet
from .inflight import InFlight
from .plan import Plan, RowJob, make_plan
from .providers import ModelSpec, Params, Provider, RetryPolicy, open_provider, require_model
from .request import Requests
from .schema import Schema, load_schema
from .settings import Settings, is_set, resolve, setting_name
from .store import Store
from .surfaces.base import CONF_SHEET, Cell, SheetData, Surface
from .table import Grid, Table, TemplateText, locate, quote_sheet
from .template import Template, display
from .trust import check_server

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
    sheet_choices: dict[str, str] = field(default_factory=dict)
    """The cells where the workbook chose the model or base_url of this run, by setting: a
    server chosen there gets no key of the user's (trust.py), and preview names the cell."""

    @property
    def price_label(self) -> str:
        return f"{self.spec.provider}:{self.spec.model}"

    @property
    def schemas(self) -> dict[int, Schema]:
        """The structured steps' schemas, by step."""
        return {s.index: s.schema for s in self.plan.steps if s.schema is not None}

    def as_sent(self, job: RowJob) -> str:
        """The text a request carries for ``job``, as far as its size goes: its system
        prompt, and a structured step's schema (in the prompt, or as response_format or a
        tool), which the engine counts the same way when it records what a request sent."""
        schema = self.plan.steps[job.step].schema
        text = (self.request_params(job).system or "") + job.prompt
        return text if schema is None else text + schema.instructions()

    def key(self, job: RowJob) -> str:
        """The answer key of ``job``: what it is sent with, and its prompt."""
        return self._requests.key(job)

    def request_params(self, job: RowJob) -> Params:
        """What ``job`` is sent with (and so part of its cache key)."""
        return self._requests.params(job)

    @cached_property
    def _requests(self) -> Requests:
        return Requests(self.spec.label, self.params, self.schemas)

    @property
    def has_system(self) -> bool:
        """Whether requests carry a system prompt: the setting, or a ``<system>`` block."""
        return self.params.system is not None or any(
            s.template.system is not None for s in self.plan.steps)


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
    first_prompts: list[RowJob] = field(default_factory=list)
    """The first prompts to send, one per row and prompt column (variations are alike)."""
    system_origin: str | None = None
    """Where their system prompt comes from, if they have one."""


def prepare(surface: Surface, flags: dict[str, Any] | None = None,
            template: TemplateText | None = None, template_cell: str | None = None,
            base_dir: Path | None = None) -> Prepared:
    """Read the sheet and decide everything; raises PromptBatchError with a fix, never calls.

    ``base_dir`` is where a schema file named by a relative path is looked for.
    """
    flags = flags or {}
    data = surface.read()
    refuse_from_sheet(data.settings, data.setting_cells, CONF_SHEET)
    settings = resolve(flags, data.settings)
    if settings.skip_hidden:
        data = replace(data, hidden_rows=surface.hidden_rows(data))
    require_model(model_spec(settings))
    if template_cell:
        template = TemplateText(surface.cell_text(template_cell), template_cell)
    prepared = plan_sheet(data, settings, template, base_dir)
    choices = sheet_choices(flags, data)
    check_server(prepared.spec, resolve(flags, {}), choices, is_set(flags.get("base_url")))
    return replace(prepared, sheet_choices=choices)


def sheet_choices(flags: dict[str, Any], data: SheetData) -> dict[str, str]:
    """The cells where the workbook chose the model or the server of this run (a flag
    overrides a cell)."""
    chosen: dict[str, str] = {}
    for key, value in data.settings.items():
        name = setting_name(key)
        if name in ("model", "base_url") and is_set(value) and not is_set(flags.get(name)):
            chosen[name] = data.setting_cells.get(key, f"The {quote_sheet(CONF_SHEET)} sheet")
    return chosen


def plan_sheet(data: SheetData, settings: Settings, template: TemplateText | None = None,
               base_dir: Path | None = None,
               schemas: Mapping[str, Schema] | None = None) -> Prepared:
    """Everything ``prepare`` decides, from a sheet already read and settings already
    merged: the HTTP server gets both from a request, not from a surface. ``schemas``
    (structured answers by prompt name) replace the settings' ``fields``/``schema``: a
    formula's fields argument names its own mistakes."""
    table, found = read_sheet(data, settings, template, base_dir, schemas)
    plan = make_plan(table, data.grid, settings.rerun, data.uncalculated, found)
    _check_one_system(plan, settings, data)
    spec = model_spec(settings)
    params = Params(settings.temperature, settings.max_tokens, settings.system)
    return Prepared(data, plan, settings, spec, params, model_defaulted=not settings.model)


def _system_block(plan: Plan) -> Template | None:
    return next((s.template for s in plan.steps if s.template.system is not None), None)


def _system_setting(settings: Settings, data: SheetData) -> str:
    """Where the ``system`` setting comes from: the conf sheet's cell, or the user's layers."""
    key = next((k for k in data.settings if setting_name(k) == "system"), None)
    if key is not None and data.settings[key] == settings.system:
        return data.setting_cells.get(key, f"the {quote_sheet(CONF_SHEET)} sheet")
    return "the system setting (--system, PROMPTBATCH_SYSTEM or your config file)"


def system_origin(prepared: Prepared) -> str | None:
    """Where the run's system prompt comes from, for preview; None without one."""
    block = _system_block(prepared.plan)
    if block is not None:
        return f"the <system> block of {block.origin}"
    if prepared.settings.system is None:
        return None
    return _system_setting(prepared.settings, prepared.data)


def _check_one_system(plan: Plan, settings: Settings, data: SheetData) -> None:
    """A ``<system>`` block and the ``system`` setting would each be the system prompt:
    refuse, naming both, rather than silently drop one."""
    block = _system_block(plan)
    if block is not None and settings.system is not None:
        raise ConfigError(
            f"The template in {block.origin} starts with a <system> block, and "
            f"{_system_setting(settings, data)} sets a system prompt too. Keep one: remove "
            "the system setting there, or the <system> block from the template.")


def model_spec(settings: Settings) -> ModelSpec:
    """The model the settings name, the embedded one when they name none."""
    return ModelSpec.parse(settings.model or LOCAL, settings.base_url)


def read_sheet(data: SheetData, settings: Settings, template: TemplateText | None = None,
               base_dir: Path | None = None, schemas: Mapping[str, Schema] | None = None,
               ) -> tuple[Table, dict[str, Schema]]:
    """The sheet's table, every template in it, and the structured answers' schemas by
    prompt name; ``template`` (command line) wins over the sheet's own."""
    conf = {key: TemplateText(text, f"{quote_sheet(CONF_SHEET)} (key {key})")
            for key, text in data.settings.items() if key.partition(".")[0] == "template"}
    named = {key.partition(".")[2]: text for key, text in conf.items() if "." in key}
    if schemas is None:
        schemas = _schemas(settings, data.settings, base_dir)
    else:
        schemas = {name.strip().lower(): schema for name, schema in schemas.items()}
    table = locate(data.grid, data.name, explicit=template or data.template,
                   fallback=conf.get("template"), named=named,
                   fields={name: [f.name for f in s.fields] for name, s in schemas.items()},
                   bounds=data.bounds, output_header=settings.output_column,
                   skip_rows=data.hidden_rows if settings.skip_hidden else frozenset(),
                   merged=data.merged, status="status" in settings.metadata.split(","),
                   variations=settings.variations)
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
    from_sheet = is_set(settings.schema) and settings.schema == conf.get("schema")
    main = load_schema(fields=settings.fields, schema=settings.schema, base_dir=base_dir,
                       origin="the fields/schema setting", confined=from_sheet)
    if main is not None:
        found[settings.output_column.strip().lower()] = main
    names = {key.partition(".")[2] for key in conf
             if key.partition(".")[0] in ("fields", "schema") and "." in key}
    for name in sorted(names):
        where = f"{quote_sheet(CONF_SHEET)} (key fields.{name} or schema.{name})"
        schema = load_schema(fields=conf.get(f"fields.{name}"),
                             schema=conf.get(f"schema.{name}"), base_dir=base_dir, origin=where,
                             confined=True)
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
                    system=prepared.has_system, history=store.history(label),
                    speed=store.speed(label))


def later_prompts(prepared: Prepared, store: Store) -> list[RowJob]:
    """The prompts that wait for other answers, rendered with stand-ins of a typical answer's
    length: their text is unknown until the run, their size is what an estimate needs."""
    plan = prepared.plan
    if not plan.waiting:
        return []
    settings = prepared.settings
    calibration = calibrate(prepared.price_label, store.history(prepared.spec.label),
                            prepared.has_system)
    stand_in = "x" * round(calibration.answer(settings.max_tokens) * calibration.chars_per_token)
    jobs = []
    for row, steps in plan.waiting.items():
        answers = {s.index: [stand_in] * len(s.outputs) for s in plan.steps}
        answers.update(plan.known.get(row, {}))
        jobs += [plan.job(prepared.data.grid, row, step, answers) for step in steps]
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
        first_prompts=[j for j in jobs if (j.seed or 1) == 1][:first],
        system_origin=system_origin(prepared),
    )


def api_key_for(spec: ModelSpec) -> str | None:
    key = userconfig.api_key(spec.provider, spec.key_variable)
    if spec.key_required and not key:
        raise SetupError(
            f"{spec.provider}:{spec.model} needs an API key. Set the environment variable "
            f"{spec.key_variable}, or run: promptbatch keys set {spec.provider}"
        )
    return key


def connector(
    spec: ModelSpec, settings: Settings, on_retry: Callable[[str], None] | None = None,
    on_measured: Callable[[dict[str, float]], None] | None = None,
) -> Callable[[], AbstractAsyncContextManager[Provider]]:
    """What the ``Engine`` calls to open the provider, only once a call is needed."""

    def connect() -> AbstractAsyncContextManager[Provider]:
        return open_provider(spec, api_key=api_key_for(spec), concurrency=settings.concurrency,
                             timeout=settings.timeout,
                             policy=RetryPolicy(attempts=settings.retries), on_retry=on_retry,
                             rpm=settings.rpm, tpm=settings.tpm, on_measured=on_measured)

    return connect


OK, CUT, ERROR = "ok", "cut at max_tokens", "error"
"""What a status column says of an answer (``metadata = status``)."""


def status_of(result: RowResult) -> str:
    if not result.ok:
        return ERROR
    return CUT if result.completion is not None and result.completion.cut else OK


class BlockWriter:
    """Collects answers and hands them to the surface in blocks, at most every 2 seconds;
    with ``escape``, answers that would open as formulas are escaped (headers are not)."""

    def __init__(self, surface: Surface, plan: Plan, escape: bool = False) -> None:
        self.surface = surface
        self.plan = plan
        self.escape = escape
        self.pending: list[Cell] = []
        self.last = time.monotonic()
        self.answered = False
        """Whether any result came: until then, a failure writes nothing."""

    def add(self, result: RowResult) -> None:
        self.answered = True
        step = self.plan.steps[result.step]
        values = step.cells(result.text) if result.ok else [result.text] + [""] * (
            len(step.cols) - 1)
        if self.escape:
            values = [escape_formula(v) if isinstance(v, str) else v for v in values]
        self.pending += [(result.row, col, value) for col, value in zip(step.cols, values,
                                                                        strict=True)]
        self.status(result.row, result.step, status_of(result))
        if time.monotonic() - self.last >= FLUSH_SECONDS:
            self.flush()

    def status(self, row: int, step: int, text: str) -> None:
        """The row's status cell of ``step``, where ``metadata`` asks for one."""
        column = self.plan.steps[step].status
        if column is not None:
            self.pending.append((row, column.col, text))

    def flush(self) -> None:
        if self.pending:
            self.surface.write(self.pending)
            self.pending = []
        self.last = time.monotonic()


def carried(plan: Plan, grid: Grid, previous: Grid | None) -> list[Cell]:
    """The answers an earlier run left in the output, where the sheet itself has none: the
    run's first save would drop them. Only rows whose every input reads the same in both
    (a row moved or edited keeps nothing), in answers columns of the same header. Written
    first, so the run's own answers replace them."""
    if previous is None:
        return []
    def at(sheet: Grid, row: int, col: int) -> Any:
        cells = sheet[row] if row < len(sheet) else ()
        return cells[col] if col < len(cells) else None

    table = plan.table
    same = [o.col for step in plan.steps for o in step.outputs
            if display(at(previous, table.header_row, o.col)) == o.header]
    cells: list[Cell] = []
    for row in table.rows:
        if any(display(at(grid, row, c)) != display(at(previous, row, c))
               for c in table.columns):
            continue
        for col in same:
            old = at(previous, row, col)
            if display(old).strip() and not display(at(grid, row, col)).strip() \
                    and isinstance(old, str | int | float | bool):
                cells.append((row, col, old))
    return cells


def writer_for(prepared: Prepared, surface: Surface) -> BlockWriter:
    """A writer holding what a run writes besides its answers: the answers an earlier run
    left in the output, the new answers headers and the cells of refused prompts, written
    with the first answers (a file is not saved for its headers alone)."""
    plan = prepared.plan
    writer = BlockWriter(surface, plan,
                         escape=surface.plain_text and prepared.settings.csv_escape)
    writer.pending += carried(plan, prepared.data.grid, surface.previous())
    writer.pending += [(plan.table.header_row, o.col, o.header)
                       for o in plan.table.outputs if not o.exists]
    for row, step, reason in plan.refused:
        writer.pending.append((row, plan.steps[step].cols[0], error_text(reason)))
        writer.status(row, step, ERROR)
    return writer


async def answer(prepared: Prepared, writer: BlockWriter, store: Store,
                 connect: Callable[[], AbstractAsyncContextManager[Provider]], *,
                 on_result: Callable[[RowResult], None] | None = None,
                 budget: Budget | None = None,
                 on_plan: Callable[[list[RowJob]], None] | None = None,
                 shared: InFlight | None = None,
                 cancelled: Callable[[], bool] | None = None) -> Summary:
    """Answer the plan's prompts, and a row's later prompts as soon as the answers they use
    arrive (``chain.Chain``); every result reaches ``writer``, then ``on_result``. The one
    way from a plan to the engine, for every surface: ``shared`` are a server's prompts in
    flight, which requests share; once ``cancelled()`` says True no request starts."""
    plan = prepared.plan
    settings = prepared.settings

    def deliver(result: RowResult) -> None:
        writer.add(result)
        if on_result is not None:
            on_result(result)

    engine = Engine(prepared.spec.label, connect, prepared.params, store,
                    concurrency=settings.concurrency, on_result=deliver,
                    use_cache=settings.use_cache, budget=budget, on_plan=on_plan,
                    schemas=prepared.schemas, shared=shared, cancelled=cancelled,
                    follow=Chain(plan, prepared.data.grid) if plan.waiting else None)
    return await engine.run(plan.jobs)


def run(prepared: Prepared, surface: Surface, store: Store,
        on_result: Callable[[RowResult], None] | None = None,
        on_retry: Callable[[str], None] | None = None,
        cancelled: Callable[[], bool] | None = None) -> Summary:
    """Run what was prepared; answers reach the surface in blocks, and all of them on exit.
    Once ``cancelled()`` says True no request starts; the prompts not sent count as unsent."""
    plan = prepared.plan
    settings = prepared.settings
    export = (Export.of(plan, prepared.data.grid, settings.export_dir, settings.export_name)
              if settings.export_dir else None)
    surface.ready()
    if export is not None:
        export.ready()
    writer = writer_for(prepared, surface)
    retries = 0

    def count_retry(reason: str) -> None:
        nonlocal retries
        retries += 1
        if on_retry is not None:
            on_retry(reason)

    received = 0

    def delivered(result: RowResult) -> None:
        nonlocal received
        received += result.ok
        if export is not None:
            export.add(result)
        if on_result is not None:
            on_result(result)

    guess: Estimate | None = None

    def forecast_sent(jobs: list[RowJob]) -> None:
        nonlocal guess  # taken before the new answers join the model's history
        guess = forecast(prepared, store, jobs + later_prompts(prepared, store))

    measured: dict[str, float] = {}
    try:
        summary = asyncio.run(answer(
            prepared, writer, store,
            connector(prepared.spec, prepared.settings, count_retry, measured.update),
            on_result=delivered, budget=make_budget(prepared), on_plan=forecast_sent,
            cancelled=cancelled))
    except KeyboardInterrupt:  # the answers flushed below are the ones Interrupted counts
        if not writer.answered:  # stopped before the first answer: leave no file behind
            writer.pending.clear()
        raise Interrupted(received, plan.prompts - len(plan.refused) - received) from None
    except BaseException:
        if not writer.answered:  # failed before the first answer: leave no file behind
            writer.pending.clear()
        raise
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
