"""The ``promptbatch`` command: a thin layer of commands over ``batch``; no logic lives here."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from . import batch, report, userconfig
from .addin import addin_app
from .errors import PromptBatchError
from .plan import Rerun
from .settings import Via
from .store import Store
from .surfaces import GOOGLE_SHEETS, open_surface
from .table import TemplateText

if TYPE_CHECKING:  # the Batch API modules load only for the commands that use them
    from .batchjobs import Collected

app = typer.Typer(help="Run one prompt template over every row of a spreadsheet.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
keys_app = typer.Typer(help="Store API keys in your user config file (mode 0600).")
app.add_typer(keys_app, name="keys")
app.add_typer(addin_app, name="addin")
console = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])

Book = Annotated[str, typer.Argument(help="A .xlsx, .xlsm or .csv file, or a Google Sheet: "
                                       "gsheet:ID[/SHEET] or its URL.")]
SheetOpt = Annotated[str | None, typer.Option("--sheet", help="Sheet to run (default: active).")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", "-m", help="provider:model, e.g. openai:gpt-4o-mini, anthropic:claude-haiku-4-5, "
    "ollama:llama3.2, openai-compatible:NAME, local (default).")]
BaseUrlOpt = Annotated[str | None, typer.Option(help="Server address for openai-compatible.")]
TemplateOpt = Annotated[str | None, typer.Option(help="The prompt template itself.")]
TemplateFileOpt = Annotated[Path | None, typer.Option(help="Read the template from a file.")]
TemplateCellOpt = Annotated[str | None, typer.Option(help="Cell holding it: 'Sheet 1'!B1.")]
OutputColOpt = Annotated[str | None, typer.Option(help="Header of the answers column.")]
ConcurrencyOpt = Annotated[int | None, typer.Option(
    help="The most requests in flight (default: the window adapts, up to 256).")]
RerunOpt = Annotated[Rerun | None, typer.Option(
    help="Rows to send: missing (empty or #ERROR, default), empty, failed, all.")]
TemperatureOpt = Annotated[float | None, typer.Option(help="Sampling temperature.")]
MaxTokensOpt = Annotated[int | None, typer.Option(help="Longest answer, in tokens.")]
SystemOpt = Annotated[str | None, typer.Option(help="System prompt sent with every row.")]
RpmOpt = Annotated[float | None, typer.Option(help="Cap on requests per minute.")]
TpmOpt = Annotated[float | None, typer.Option(help="Cap on tokens per minute.")]
SkipHiddenOpt = Annotated[bool, typer.Option(
    "--skip-hidden", help="Leave out rows hidden in the sheet (also rows a filter hides).")]
FieldsOpt = Annotated[str | None, typer.Option(help="Answer as JSON, one column per field: "
                     "'sentiment (positive|negative), score (number), reason'.")]
SchemaOpt = Annotated[str | None, typer.Option(help="Answer as JSON following this JSON "
                      "schema (the JSON itself or a .json file); one column per property.")]
CredentialsOpt = Annotated[str | None, typer.Option(help="Google service-account key (JSON) "
                           "for a Google Sheet.")]
OutputOpt = Annotated[str | None, typer.Option("--output", "-o", help="Where to write "
                      "(default: NAME.promptbatch.xlsx beside the input).")]


ViaOpt = Annotated[Via | None, typer.Option(help="realtime, or batch: the provider's Batch API at "
                   "half price, answers within a day (promptbatch collect writes them).")]


def user_errors(command: F) -> F:
    """A user's mistake prints one clear message and exits 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PromptBatchError as exc:
            console.print(f"[bold red]Error:[/] {exc}", soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


def _template(text: str | None, file: Path | None) -> TemplateText | None:
    if text is not None:
        return TemplateText(text, "--template")
    if file is not None:
        try:
            return TemplateText(file.read_text(encoding="utf-8"), str(file))
        except (OSError, UnicodeDecodeError) as exc:
            raise PromptBatchError(f"Cannot read --template-file {file}: {exc}") from None
    return None


def _prepare(book: str, sheet: str | None, output: str | None, flags: dict[str, Any],
             template: str | None, template_file: Path | None,
             template_cell: str | None, credentials: str | None) -> tuple[Any, batch.Prepared]:
    surface = open_surface(book, sheet, output, credentials)
    folder = None if book.startswith(GOOGLE_SHEETS) else Path(book).parent
    prepared = batch.prepare(surface, flags, _template(template, template_file), template_cell,
                             base_dir=folder)
    if prepared.model_defaulted:
        console.print("No model given: using the embedded local model "
                      f"([bold]{prepared.spec.label}[/], free, offline). Choose another with "
                      "--model, e.g. --model openai:gpt-4o-mini.")
    return surface, prepared


@app.command()
@user_errors
def run(
    book: Book, sheet: SheetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
    concurrency: ConcurrencyOpt = None, rerun: RerunOpt = None,
    template: TemplateOpt = None, template_file: TemplateFileOpt = None,
    template_cell: TemplateCellOpt = None, output_column: OutputColOpt = None,
    base_url: BaseUrlOpt = None, temperature: TemperatureOpt = None,
    max_tokens: MaxTokensOpt = None, system: SystemOpt = None,
    rpm: RpmOpt = None, tpm: TpmOpt = None, credentials: CredentialsOpt = None,
    skip_hidden: SkipHiddenOpt = False, fields: FieldsOpt = None, schema: SchemaOpt = None,
    budget: Annotated[float | None, typer.Option(help="Stop sending before the cost in USD "
                      "could pass this; unsent rows stay empty.")] = None,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Ask the model again even "
                        "for answers already stored (they are replaced).")] = False,
    via: ViaOpt = None,
) -> None:
    """Answer every row that needs it and write the answers next to the table."""
    flags = dict(model=model, concurrency=concurrency, rerun=rerun, output_column=output_column,
                 base_url=base_url, temperature=temperature, max_tokens=max_tokens,
                 system=system, rpm=rpm, tpm=tpm, budget=budget, fields=fields, schema=schema,
                 use_cache=False if no_cache else None, skip_hidden=skip_hidden or None,
                 via=via)
    surface, prepared = _prepare(book, sheet, output, flags, template, template_file,
                                 template_cell, credentials)
    if not prepared.plan.prompts:
        console.print(f"All {prepared.plan.kept} rows already have answers; nothing to send. "
                      "Use --rerun all to ask again.")
        return
    if prepared.settings.via is Via.BATCH:
        _via_batch(book, surface, prepared)
        return
    store = Store()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        transient=False, disable=not console.is_terminal)
    plan = prepared.plan
    with progress:
        task = progress.add_task(plan.table.sheet, total=plan.prompts - len(plan.refused))
        summary = batch.run(prepared, surface, store, on_result=None if progress.disable
                            else lambda _r: progress.advance(task))  # none for a hidden bar
    store.close()
    report.print_summary(console, prepared, summary, getattr(surface, "output", None))
    if summary.failed or summary.unsent:
        raise typer.Exit(1)


@app.command()
@user_errors
def preview(
    book: Book, sheet: SheetOpt = None, model: ModelOpt = None,
    template: TemplateOpt = None, template_file: TemplateFileOpt = None,
    template_cell: TemplateCellOpt = None, output_column: OutputColOpt = None,
    base_url: BaseUrlOpt = None, concurrency: ConcurrencyOpt = None, rerun: RerunOpt = None,
    max_tokens: MaxTokensOpt = None, temperature: TemperatureOpt = None,
    system: SystemOpt = None, credentials: CredentialsOpt = None,
    skip_hidden: SkipHiddenOpt = False, fields: FieldsOpt = None, schema: SchemaOpt = None,
    first: Annotated[int, typer.Option(help="How many rendered prompts to show.")] = 3,
) -> None:
    """Dry run: rows to send, the first prompts, variables vs columns, estimated cost. No calls."""
    flags = dict(model=model, concurrency=concurrency, rerun=rerun, output_column=output_column,
                 base_url=base_url, temperature=temperature, max_tokens=max_tokens,
                 system=system, skip_hidden=skip_hidden or None, fields=fields,
                 schema=schema)
    _, prepared = _prepare(book, sheet, None, flags, template, template_file, template_cell,
                           credentials)
    store = Store()
    result = batch.preview(prepared, store, first)
    store.close()
    report.print_preview(Console(highlight=False), result)


def _via_batch(book: str, surface: Any, prepared: batch.Prepared) -> None:
    from . import batchjobs, batchreport

    store = Store()
    try:
        jobs, collected = batchjobs.submit_and_collect(prepared, surface, store)
    finally:
        store.close()
    batchreport.print_submitted(console, jobs)
    _collected(book, surface, prepared, collected)


def _collected(book: str, surface: Any, prepared: batch.Prepared,
               collected: Collected) -> None:
    from . import batchreport

    batchreport.print_collected(console, prepared, collected, getattr(surface, "output", None),
                                book)
    if collected.summary.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
def collect(
    book: Book, sheet: SheetOpt = None, model: ModelOpt = None, output: OutputOpt = None,
    template: TemplateOpt = None, template_file: TemplateFileOpt = None,
    template_cell: TemplateCellOpt = None, output_column: OutputColOpt = None,
    base_url: BaseUrlOpt = None, rerun: RerunOpt = None, max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None, system: SystemOpt = None,
    credentials: CredentialsOpt = None, skip_hidden: SkipHiddenOpt = False,
    fields: FieldsOpt = None, schema: SchemaOpt = None,
) -> None:
    """Fetch finished Batch API results and write them next to the table (same options as
    the run that sent them); rows of running jobs stay empty."""
    flags = dict(model=model, rerun=rerun, output_column=output_column, base_url=base_url,
                 temperature=temperature, max_tokens=max_tokens, system=system,
                 skip_hidden=skip_hidden or None, fields=fields, schema=schema)
    surface, prepared = _prepare(book, sheet, output, flags, template, template_file,
                                 template_cell, credentials)
    from . import batchjobs

    store = Store()
    try:
        collected = batchjobs.collect(prepared, surface, store)
    finally:
        store.close()
    _collected(book, surface, prepared, collected)


@app.command()
@user_errors
def status(
    book: Annotated[str | None, typer.Argument(help="Only the jobs holding this sheet's "
                    "prompts (give the options of the run that sent them).")] = None,
    sheet: SheetOpt = None, model: ModelOpt = None,
    template: TemplateOpt = None, template_file: TemplateFileOpt = None,
    template_cell: TemplateCellOpt = None, output_column: OutputColOpt = None,
    base_url: BaseUrlOpt = None, rerun: RerunOpt = None, max_tokens: MaxTokensOpt = None,
    temperature: TemperatureOpt = None, system: SystemOpt = None,
    credentials: CredentialsOpt = None, skip_hidden: SkipHiddenOpt = False,
    fields: FieldsOpt = None, schema: SchemaOpt = None,
) -> None:
    """List Batch API jobs: status, request counts, estimated cost, age (running ones are
    polled first)."""
    prepared = None
    if book is not None:
        flags = dict(model=model, rerun=rerun, output_column=output_column,
                     base_url=base_url, temperature=temperature, max_tokens=max_tokens,
                     system=system, skip_hidden=skip_hidden or None, fields=fields,
                     schema=schema)
        _, prepared = _prepare(book, sheet, None, flags, template, template_file,
                               template_cell, credentials)
    from . import batchjobs, batchreport

    store = Store()
    try:
        jobs = batchjobs.status(store, prepared)
    finally:
        store.close()
    batchreport.print_jobs(Console(highlight=False), jobs)


@app.command()
@user_errors
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port; 0 picks a free one.")] = 8787,
    model: ModelOpt = None, base_url: BaseUrlOpt = None,
) -> None:
    """Serve the HTTP API the Google Sheets script (addin/gsheets) calls."""
    from . import server  # imported here: only this command needs uvicorn

    server.serve(host, port, dict(model=model, base_url=base_url))


@keys_app.command("set")
@user_errors
def keys_set(provider: Annotated[str, typer.Argument(help="openai, anthropic, ...")]) -> None:
    """Save a key for PROVIDER; it is read from the terminal without echo."""
    key = typer.prompt(f"API key for {provider}", hide_input=True).strip()
    if not key:
        raise PromptBatchError("No key entered; nothing saved.")
    path = userconfig.save_api_key(provider.lower(), key)
    console.print(f"Saved to {path} (readable by you only).")


@keys_app.command("path")
def keys_path() -> None:
    """Print where the user config file lives."""
    print(userconfig.config_path())


if __name__ == "__main__":  # python -m promptbatch_sheets.cli, as the console script does
    app()
