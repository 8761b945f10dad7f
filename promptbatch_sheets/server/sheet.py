"""The sheet a script sends, read by the command line's own rules.

Apps Script sends the sheet's rows (its first rows to find the layout, the rows down to the
header row with a window of numbered rows for a run, or the whole sheet for a preview or a
Batch API job), the key/value rows of its ``promptbatch.conf`` sheet, the text of the named
range ``prompt_template``, the merged ranges with their values and the rows hidden among
those sent. The server reads them with ``runner.read_sheet`` and ``plan.make_plan``, so the
menu has no sheet rules of its own and a sheet means the same from the CLI and the menu.

The conf sheet shapes the prompts and answers; it never chooses the model, its server or the
server's limits: those belong to whoever runs ``promptbatch serve`` and pays for the calls.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import runner
from ..errors import BadRequest
from ..plan import Step, make_plan, running_order
from ..runner import Prepared
from ..schema import Schema
from ..settings import Settings, overlay
from ..surfaces.base import CONF_SHEET, SheetData, conf_settings, fill_merged
from ..table import Bounds, Table, TemplateText
from .checks import MAX_ROWS, Scalar, body_fields, cell_list, row_grid, text_field

SHEET_KEYS = frozenset({"output_column", "fields", "schema", "temperature", "max_tokens",
                        "system", "skip_hidden", "variations"})
"""Settings of the conf sheet the server follows; model, base_url, concurrency, budget and
the rest are the server's own, whatever a sheet says."""
SAMPLING = ("temperature", "max_tokens", "system")
SHEET_FIELDS = {"sheet", "grid"}
SHEET_OPTIONAL = {"conf", "template", "origin", "output_column", "hidden", "merged"}
WINDOW_FIELDS = {"row_numbers", "rows"}
MAX_ROW = 10_000_000
"""Rows a Google spreadsheet can hold at most (ten million cells)."""


@dataclass(frozen=True)
class SentSheet:
    """A sheet as a request carries it, and the settings it runs with on this server."""

    data: SheetData
    settings: Settings


def sent_sheet(settings: Settings, body: dict[str, Any], max_rows: int = MAX_ROWS) -> SentSheet:
    """The sheet of a request whose fields ``body_fields`` has checked. With ``row_numbers``
    and ``rows``, ``grid`` holds the rows down to the header row, and each of ``rows`` lands
    on its row number: rows not sent are blank, so only those are planned."""
    name = text_field(body["sheet"], "sheet")
    grid: list[Sequence[Scalar]] = list(row_grid(body["grid"], "grid", max_rows))
    present = [range(len(grid))]
    if "rows" in body:
        numbers = row_numbers(body["row_numbers"], "row_numbers")
        rows = row_grid(body["rows"], "rows", max_rows)
        if len(numbers) != len(rows):
            raise BadRequest(f"row_numbers has {len(numbers):,} entries and rows {len(rows):,}; "
                             "give one number per row.")
        if numbers and min(numbers) < len(grid):
            raise BadRequest("row_numbers must come after the rows of grid (the rows down to "
                             "the header row).")
        grid += [()] * (max(numbers, default=len(grid) - 1) + 1 - len(grid))
        for number, row in zip(numbers, rows, strict=True):
            grid[number] = row
        present += [range(n, n + 1) for n in numbers]
    merged = _merged(grid, body.get("merged") or [], present)
    conf = conf_settings(row_grid(body.get("conf") or [], "conf")).settings
    refuse_schema_files(conf)
    chosen = {k: v for k, v in conf.items() if k in SHEET_KEYS}
    if body.get("output_column"):
        chosen["output_column"] = text_field(body["output_column"], "output_column")
    named = None
    if body.get("template") is not None:
        named = TemplateText(text_field(body["template"], "template"),
                             text_field(body.get("origin", "prompt_template"), "origin"))
    data = SheetData(name, grid, template=named, settings=conf, merged=merged,
                     hidden_rows=frozenset(row_numbers(body.get("hidden") or [], "hidden")))
    return SentSheet(data, overlay(settings, chosen, f"the {CONF_SHEET} sheet"))


def row_numbers(value: Any, name: str) -> list[int]:
    if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) and 0 <= v < MAX_ROW for v in value):
        raise BadRequest(f"{name} must be a list of row numbers (0 for the sheet's first row).")
    return value


def _merged(grid: list[Sequence[Scalar]], value: Any,
            present: list[range]) -> tuple[Bounds, ...]:
    """Merged ranges, sent as ``[top, left, bottom, right, value]`` (0-based, inclusive):
    each row sent that a range covers gets its value, as a file's merged cells do; rows not
    sent stay blank."""
    if not isinstance(value, list):
        raise BadRequest("merged must be a list of [top, left, bottom, right, value].")
    areas: list[Bounds] = []
    parts: list[Bounds] = []
    for item in value:
        corners = item[:4] if isinstance(item, list) and len(item) == 5 else None
        if corners is None or len(row_numbers(corners, "each range of merged")) != 4 \
                or corners[0] > corners[2] or corners[1] > corners[3]:
            raise BadRequest("merged must be a list of [top, left, bottom, right, value], "
                             "top-left before bottom-right.")
        area = Bounds(*corners)
        areas.append(area)
        filler = cell_list(item[4:], "the value of a merged range")[0]
        for rows in present:
            top, bottom = max(area.top, rows.start), min(area.bottom, rows.stop - 1)
            if top <= bottom and top < len(grid):
                first = list(grid[top])
                first += [None] * (area.left + 1 - len(first))
                first[area.left] = filler
                grid[top] = first
                parts.append(replace(area, top=top, bottom=bottom))
    fill_merged(grid, parts)
    return tuple(areas)


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
    """The sheet planned as ``promptbatch run`` plans it, with the server's model."""
    return runner.plan_sheet(sent.data, sent.settings)


def layout(sent: SentSheet) -> dict[str, Any]:
    """Where the table is, and every prompt column in running order: its template, its
    answers columns, the prompt columns whose answers it uses and the fields its answers
    must have; ``skip_hidden``: the script sends which of its rows are hidden."""
    table, schemas = runner.read_sheet(sent.data, sent.settings)
    steps = make_plan(replace(table, rows=[]), sent.data.grid, schemas=schemas).steps
    options = {k: getattr(sent.settings, k) for k in SAMPLING
               if getattr(sent.settings, k) is not None}
    return {
        "header_row": table.header_row,
        "columns": [[c, h] for c, h in table.columns.items()],
        "options": options,
        "skip_hidden": sent.settings.skip_hidden,
        "steps": [_step(table, steps, steps[i]) for i in running_order(steps, table)],
    }


def _step(table: Table, steps: list[Step], step: Step) -> dict[str, Any]:
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
        "uses": [steps[n].name for n in step.needs],
        "fields": None if schema is None else [f.name for f in schema.fields],
        "schema": None if schema is None else schema.text(),
    }


def sheet_request(settings: Settings, body: Any, max_rows: int = MAX_ROWS,
                  window: bool = False, optional: frozenset[str] = frozenset()) -> SentSheet:
    """Check a body that carries a sheet (and, with ``window``, numbered rows), and read
    it; ``optional`` are the route's own fields."""
    required = SHEET_FIELDS | (WINDOW_FIELDS if window else set())
    return sent_sheet(settings, body_fields(body, required, SHEET_OPTIONAL | optional),
                      max_rows)
