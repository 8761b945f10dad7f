"""The command line's options, each declared once (flag, type, help) and shared by every
command that takes it; hints print the user's own command line back from them."""

from __future__ import annotations

import functools
import inspect
import shlex
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar, get_args, get_type_hints

import typer

from .errors import PromptBatchError
from .plan import Rerun
from .settings import NAMES, Via
from .table import TemplateText

F = TypeVar("F", bound=Callable[..., Any])

Book = Annotated[str, typer.Argument(help="A .xlsx, .xlsm or .csv file, or a Google Sheet: "
                                     "gsheet:ID[/SHEET] or its URL.", metavar="BOOK",
                                     show_default=False)]


@dataclass(frozen=True)
class Options:
    """Every option of the sheet commands (run, preview, collect, status). A command names
    the ones it takes with ``@takes``; the others keep these defaults."""

    sheet: Annotated[str | None, typer.Option(
        "--sheet", help="Sheet to run (default: active).")] = None
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="provider:model, e.g. openai:gpt-4o-mini, "
        "anthropic:claude-haiku-4-5, ollama:llama3.2, openai-compatible:NAME, local "
        "(default).")] = None
    output: Annotated[str | None, typer.Option(
        "--output", "-o", help="Where to write (default: NAME.promptbatch.xlsx beside the "
        "input).")] = None
    concurrency: Annotated[int | None, typer.Option(
        "--concurrency", help="The most requests in flight (default: the window adapts, up "
        "to 256).")] = None
    rerun: Annotated[Rerun | None, typer.Option(
        "--rerun", help="Rows to send: missing (empty or #ERROR, default), empty, failed, "
        "all.")] = None
    template: Annotated[str | None, typer.Option(
        "--template", help="The prompt template itself.")] = None
    template_file: Annotated[Path | None, typer.Option(
        "--template-file", help="Read the template from a file.")] = None
    template_cell: Annotated[str | None, typer.Option(
        "--template-cell", help="Cell holding it: 'Sheet 1'!B1.")] = None
    output_column: Annotated[str | None, typer.Option(
        "--output-column", help="Header of the answers column.")] = None
    base_url: Annotated[str | None, typer.Option(
        "--base-url", help="The model server's address (any provider): your key goes only to "
        "its provider's own address or to one you give.")] = None
    temperature: Annotated[float | None, typer.Option(
        "--temperature", help="Sampling temperature, 0 to 2.")] = None
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="Longest answer, in tokens; a longer one is cut.")] = None
    system: Annotated[str | None, typer.Option(
        "--system", help="System prompt sent with every row.")] = None
    rpm: Annotated[float | None, typer.Option(
        "--rpm", help="Cap on requests per minute.")] = None
    tpm: Annotated[float | None, typer.Option(
        "--tpm", help="Cap on tokens per minute.")] = None
    credentials: Annotated[str | None, typer.Option(
        "--credentials", help="Google service-account key (JSON) for a Google Sheet.")] = None
    skip_hidden: Annotated[bool, typer.Option(
        "--skip-hidden", help="Leave out rows hidden in the sheet (also rows a filter "
        "hides).")] = False
    fields: Annotated[str | None, typer.Option(
        "--fields", help="Answer as JSON, one column per field: 'sentiment "
        "(positive|negative), score (number), reason'.")] = None
    schema: Annotated[str | None, typer.Option(
        "--schema", help="Answer as JSON following this JSON schema (the JSON itself or a "
        ".json file); one column per property.")] = None
    metadata: Annotated[str | None, typer.Option(
        "--metadata", help="Extra columns beside the answers: status (ok, cut at "
        "--max-tokens, error).")] = None
    variations: Annotated[int | None, typer.Option(
        "--variations", help="Answers per row (default 1), in columns NAME 1 ... NAME N; "
        "each is its own request (seed N where the API takes one) and cache entry.")] = None
    export_dir: Annotated[str | None, typer.Option(
        "--export-dir", help="Also write each answer as a Markdown file into this folder.")
        ] = None
    export_name: Annotated[str | None, typer.Option(
        "--export-name", help="Column whose value names each exported file (default: the "
        "row number).")] = None
    budget: Annotated[float | None, typer.Option(
        "--budget", help="Stop sending before the cost in USD could pass this; unsent rows "
        "stay empty.")] = None
    no_cache: Annotated[bool, typer.Option(
        "--no-cache", help="Ask the model again even for answers already stored (they are "
        "replaced).")] = False
    via: Annotated[Via | None, typer.Option(
        "--via", help="realtime, or batch: the provider's Batch API at half price, answers "
        "within a day (promptbatch collect writes them).")] = None
    no_csv_escape: Annotated[bool, typer.Option(
        "--no-csv-escape", help="Write answers to a CSV file as they are, even those a "
        "spreadsheet would open as formulas (= + - @ ...); for pipelines that read the file "
        "themselves.")] = False

    def settings(self) -> dict[str, Any]:
        """The command-line layer of the settings; None is "not given", so the sheet's or
        the environment's value applies."""
        given = {f.name: getattr(self, f.name) for f in fields(self) if f.name in NAMES}
        given["skip_hidden"] = self.skip_hidden or None
        given["use_cache"] = False if self.no_cache else None
        given["csv_escape"] = False if self.no_csv_escape else None
        return given

    def template_text(self) -> TemplateText | None:
        """--template, else the text of --template-file."""
        if self.template is not None:
            return TemplateText(self.template, "--template")
        if self.template_file is not None:
            try:
                return TemplateText(self.template_file.read_text(encoding="utf-8"),
                                    str(self.template_file))
            except (OSError, UnicodeDecodeError) as exc:
                raise PromptBatchError(f"Cannot read --template-file {self.template_file}: "
                                       f"{exc}") from None
        return None


SHEET_OPTIONS = ("sheet", "model", "template", "template_file", "template_cell",
                 "output_column", "base_url", "rerun", "max_tokens", "temperature", "system",
                 "credentials", "skip_hidden", "fields", "schema", "metadata", "variations")
"""What finds a sheet's prompts: every sheet command takes these, so a hint can hand them
on from one command to another."""
TAKEN: dict[str, tuple[str, ...]] = {}
"""Command name -> the options it takes, filled by ``takes``."""
_HINTS = get_type_hints(Options, include_extras=True)
_DEFAULTS = {f.name: f.default for f in fields(Options)}


def takes(*names: str) -> Callable[[F], F]:
    """Give a command the named options: typer sees each as its own parameter; the command
    gets them all as one ``Options`` in its keyword ``opts``."""

    def decorate(command: F) -> F:
        TAKEN[command.__name__] = names
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values()
               if p.name != "opts"]
        added = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY,
                                   default=_DEFAULTS[name], annotation=_HINTS[name])
                 for name in names]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            opts = Options(**{name: kwargs.pop(name) for name in names})
            return command(*args, opts=opts, **kwargs)

        wrapper.__signature__ = inspect.Signature(own + added)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate


def flag(name: str) -> str:
    """The long flag of option ``name``, e.g. ``--max-tokens``."""
    info = get_args(_HINTS[name])[1]
    decls: list[str] = [info.default, *(info.param_decls or ())]
    return next(d for d in decls if d.startswith("--"))


def command_line(command: str, book: str, opts: Options, **changes: Any) -> str:
    """The command a hint tells the user to type: ``command`` on ``book`` with the options
    they gave that ``command`` takes (``changes`` set first), quoted for a shell."""
    opts = replace(opts, **changes)
    words = ["promptbatch", command, book]
    for name in TAKEN[command]:
        value = getattr(opts, name)
        if value == _DEFAULTS[name]:
            continue
        words.append(flag(name))
        if value is not True:
            words.append(str(value.value if isinstance(value, Enum) else value))
    return shlex.join(words)
