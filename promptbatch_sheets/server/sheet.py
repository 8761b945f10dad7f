"""The sheet a script sends, read by the command line's own rules.

Apps Script sends a grid (the first rows to find the layout, or the whole sheet for a Batch
API job), the key/value rows of its ``promptbatch.conf`` sheet and the text of the named range
``prompt_template``. The server reads them with ``runner.read_sheet`` and ``plan.make_plan``,
so the menu has no sheet rules of its own and a sheet means the same from the CLI and the menu.

The conf sheet shapes the prompts and answers; it never chooses the model, its server or the
server's limits: those belong to whoever runs ``promptbatch serve`` and pays for the calls.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .. import runner
from ..errors import BadRequest
from ..plan import Step, make_plan, running_order
from ..runner import Prepared
from ..schema import Schema
from ..settings import Settings, overlay
from ..surfaces.base import CONF_SHEET, SheetData, conf_settings
from ..table import Table, TemplateText
from .checks import MAX_ROWS, body_fields, row_grid, text_field

SHEET_KEYS = frozenset({"output_column", "fields", "schema", "temperature", "max_tokens",
                        "system"})
"""Settings of the conf sheet the server follows; model, base_url, concurrency, budget and
the rest are the server's own, whatever a sheet says."""
SAMPLING = ("temperature", "max_tokens", "system")
SHEET_FIELDS = {"sheet", "grid"}
SHEET_OPTIONAL = {"conf", "template", "origin", "output_column"}


@dataclass(frozen=True)
class SentSheet:
    """A sheet as a request carries it, and the settings it runs with on this server."""

    data: SheetData
    settings: Settings


def sent_sheet(settings: Settings, body: dict[str, Any], max_rows: int = MAX_ROWS) -> SentSheet:
    """The sheet of a request whose fields ``body_fields`` has checked."""
    name = text_field(body["sheet"], "sheet")
    grid = row_grid(body["grid"], "grid", max_rows)
    conf = conf_settings(row_grid(body.get("conf") or [], "conf")).settings
    refuse_schema_files(conf)
    chosen = {k: v for k, v in conf.items() if k in SHEET_KEYS}
    if body.get("output_column"):
        chosen["output_column"] = text_field(body["output_column"], "output_column")
    named = None
    if body.get("template") is not None:
        named = TemplateText(text_field(body["template"], "template"),
                             text_field(body.get("origin", "prompt_template"), "origin"))
    return SentSheet(SheetData(name, grid, template=named, settings=conf),
                     overlay(settings, chosen, f"the {CONF_SHEET} sheet"))


def refuse_schema_files(conf: dict[str, str]) -> None:
    """A schema must come as JSON text: a file name would be read from the server's disk."""
    for key, value in conf.items():
        if key.partition(".")[0] == "schema" and not value.strip().startswith("{"):
            raise BadRequest(f"The {CONF_SHEET} key {key} holds {value[:60]!r}. The Sheets "
                             "menu sends the schema to the server, so it must be the JSON "
                             "schema itself, not the name of a file.")


def schema_text(value: Any, name: str) -> str:
    """A schema a request sends: JSON text only, never a path on the server's disk."""
    text = text_field(value, name)
    if not text.strip().startswith("{"):
        raise BadRequest(f"{name} must be a JSON schema (an object, starting with '{{').")
    return text


def prepared(sent: SentSheet) -> Prepared:
    """The whole sheet planned as ``promptbatch run`` plans it, with the server's model."""
    return runner.plan_sheet(sent.data, sent.settings)


def layout(sent: SentSheet) -> dict[str, Any]:
    """Where the table is, and every prompt column in running order: its template, its
    answers columns, the columns it reads and the fields its answers must have."""
    table, schemas = runner.read_sheet(sent.data, sent.settings)
    steps = make_plan(replace(table, rows=[]), sent.data.grid, schemas=schemas).steps
    order = running_order(steps, table)
    options = {k: getattr(sent.settings, k) for k in SAMPLING
               if getattr(sent.settings, k) is not None}
    return {
        "header_row": table.header_row,
        "columns": [[c, h] for c, h in table.columns.items()],
        "options": options,
        "steps": [_step(table, steps, steps[i], [steps[j] for j in order[:n]])
                  for n, i in enumerate(order)],
    }


def _step(table: Table, steps: list[Step], step: Step, earlier: list[Step]) -> dict[str, Any]:
    """``reads``: the answers columns of the steps before it, which a script sends with the
    inputs; ``uses``: those it depends on, whose failure it shares."""
    text = table.prompts[step.index].template
    schema: Schema | None = step.schema
    return {
        "index": step.index,
        "name": step.name,
        "template": text.text,
        "origin": text.origin,
        "outputs": [{"col": o.col, "header": o.header, "exists": o.exists}
                    for o in step.outputs],
        "needs": list(step.needs),
        "reads": [[o.col, o.header] for s in earlier for o in s.outputs],
        "uses": [steps[n].outputs[0].header for n in step.needs],
        "fields": None if schema is None else [f.name for f in schema.fields],
        "schema": None if schema is None else schema.text(),
    }


def sheet_request(settings: Settings, body: Any, max_rows: int = MAX_ROWS) -> SentSheet:
    """Check a body that carries a sheet, and read it."""
    return sent_sheet(settings, body_fields(body, SHEET_FIELDS, SHEET_OPTIONAL), max_rows)
