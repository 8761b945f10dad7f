"""Which prompts of a table to send, and the text each one gets (pure, no I/O).

A sheet holds one template or several, one per answers column; a template may use other
columns' answers (``{{ summary }}``), so the steps run in dependency order, and a row's later
prompt is rendered as soon as the answers it uses are known. Rendering every prompt that can
be rendered before the first call means a template mistake costs nothing, and it lets the
engine send identical prompts once.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from graphlib import CycleError, TopologicalSorter
from typing import Any

from .cells import CellValue, answer_text
from .errors import TableError, TemplateError
from .schema import Schema
from .table import Grid, Output, Table, cell_name
from .template import Template, display, variable_name

ERROR_PREFIX = "#ERROR:"


class Rerun(StrEnum):
    """Which rows a run sends, judged by what their output cell already holds."""

    MISSING = "missing"
    """Empty and failed rows (the default: a rerun repairs, it does not redo)."""
    EMPTY = "empty"
    FAILED = "failed"
    ALL = "all"

    def wants(self, current: str) -> bool:
        failed = current.startswith(ERROR_PREFIX)
        empty = current.strip() == ""
        return {
            Rerun.MISSING: empty or failed,
            Rerun.EMPTY: empty,
            Rerun.FAILED: failed,
            Rerun.ALL: True,
        }[self]


@dataclass(frozen=True, slots=True)
class RowJob:
    """One prompt to answer: its grid row, its rendered text, and the step it belongs to."""

    row: int
    prompt: str
    step: int = 0
    system: str | None = None
    """The row's own system prompt, from the template's ``<system>`` block."""
    seed: int | None = None
    """The variation of the row's answer this prompt asks for (``variations``)."""


@dataclass(frozen=True)
class Step:
    """One template of the sheet, the columns its answers fill, and the steps it reads."""

    index: int
    name: str
    template: Template
    outputs: tuple[Output, ...]
    needs: tuple[int, ...]
    """Steps whose answers the template uses, e.g. ``{{ summary }}``."""
    schema: Schema | None = None
    """The JSON the answer must be, one field per output column; None for free text."""
    status: Output | None = None
    """The column saying how each answer came, when ``metadata`` asks for it."""
    variation: int | None = None
    """Which of the row's N answers this step gives (``variations``), sent as the seed."""

    @property
    def cols(self) -> list[int]:
        return [o.col for o in self.outputs]

    def cells(self, answer: str) -> list[CellValue]:
        """The values an answer puts in this step's columns (it was checked on arrival)."""
        if self.schema is None:
            return [answer_text(answer)]
        return self.schema.cells(self.schema.check(answer))


Answers = dict[int, list[Any]]
"""Step -> the values of its answers columns, for one row."""


@dataclass(frozen=True)
class Plan:
    table: Table
    steps: list[Step]
    """In the order the sheet gives them."""
    jobs: list[RowJob]
    """The prompts that can be sent now; the others wait for the answers they use."""
    kept: int
    """Answers already in the sheet that the rerun mode keeps."""
    refused: list[tuple[int, int, str]]
    """(row, step, reason for its cell) of prompts not worth a call: a variable holds #N/A."""
    waiting: dict[int, list[int]]
    """Row -> steps, in running order, that run once the answers they use come back."""
    known: dict[int, Answers]
    """Row -> the answers of its steps already in the sheet (kept by the rerun mode)."""

    @property
    def template(self) -> Template:
        return self.steps[0].template

    @property
    def prompts(self) -> int:
        """Prompts this run settles: ready now, waiting for answers, and refused."""
        return len(self.jobs) + sum(map(len, self.waiting.values())) + len(self.refused)

    def job(self, grid: Grid, row: int, step: int, answers: Answers) -> RowJob:
        """The prompt of ``step`` for ``row`` (and its system prompt, from a ``<system>``
        block), given the answers of the steps it uses."""
        record = self.table.record(grid, row)
        for index, values in answers.items():
            for output, value in zip(self.steps[index].outputs, values, strict=True):
                record[output.name] = value
        cell = cell_name(self.table.sheet, row, self.steps[step].cols[0])
        where = f"row {row + 1} ({cell})"
        template = self.steps[step].template
        return RowJob(row, template.render(record, where), step,
                      template.render_system(record, where), self.steps[step].variation)


def make_plan(table: Table, grid: Grid, rerun: Rerun = Rerun.MISSING,
              uncalculated: Collection[tuple[int, int]] = frozenset(),
              schemas: Mapping[str, Schema] | None = None) -> Plan:
    """Parse and check every template against the headers, order the steps by the answers
    they use, then render each selected row's prompts that need no fresh answer.

    ``uncalculated`` are cells holding a formula saved without its value (see SheetData);
    ``schemas`` are the structured answers' schemas by prompt name.
    """
    steps = _steps(table, schemas or {})
    order = running_order(steps, table)
    used = sorted({c for s in steps for c, h in table.columns.items()
                   if variable_name(h) in s.template.variables or s.template.uses_row})
    _check_calculated(table, used, uncalculated)
    plan = Plan(table, steps, [], 0, [], {}, {})
    kept = 0
    for row in table.rows:
        broken = next((c for c in used if _is_error_value(table.value(grid, row, c))), None)
        known: Answers = {}
        lost: set[int] = set()
        for index in order:
            step = steps[index]
            current = [table.value(grid, row, c) for c in step.cols]
            if not rerun.wants(_state(current)):
                kept += 1
                known[index] = current
                if _state(current).startswith(ERROR_PREFIX):
                    lost.add(index)  # a failure kept (--rerun empty) is no answer to build on
                continue
            reason = _refusal(table, grid, row, broken, step, lost)
            if reason is not None:
                lost.add(index)
                plan.refused.append((row, index, reason))
            elif all(n in known for n in step.needs):
                plan.jobs.append(plan.job(grid, row, index, known))
            else:
                plan.waiting.setdefault(row, []).append(index)
        if known and row in plan.waiting:
            plan.known[row] = known
    return replace(plan, kept=kept)


def _steps(table: Table, schemas: Mapping[str, Schema]) -> list[Step]:
    """Parse each template and find the other steps' answers it uses."""
    parsed: dict[str, Template] = {}
    for p in table.prompts:  # variations of a prompt share its template
        if p.name not in parsed:
            parsed[p.name] = Template.parse(p.template.text, p.template.origin)
    inputs = list(table.columns.values())
    steps = []
    for index, prompt in enumerate(table.prompts):
        template = parsed[prompt.name]
        _check_not_reading_own_answers(table, index, template)
        # a variation's template reads the answers of the same variation of other columns
        peers = {i: p for i, p in enumerate(table.prompts)
                 if i != index and p.variation == prompt.variation}
        owner = {variable_name(o.name): i for i, p in peers.items() for o in p.outputs}
        template.check_columns(inputs + [o.name for p in peers.values() for o in p.outputs])
        needs = tuple(sorted({owner[v] for v in template.variables
                              if v in owner and v not in {variable_name(h) for h in inputs}}))
        steps.append(Step(index, prompt.name, template, prompt.outputs, needs,
                          schemas.get(prompt.name), prompt.status, prompt.variation))
    return steps


def running_order(steps: list[Step], table: Table) -> list[int]:
    """Steps after the steps whose answers they use; a cycle could never start."""
    try:
        return list(TopologicalSorter({s.index: s.needs for s in steps}).static_order())
    except CycleError as exc:
        cycle = [steps[i] for i in exc.args[1]]
        path = " -> ".join(f"{s.name!r} ({s.template.origin})" for s in cycle)
        raise TemplateError(
            f"The templates of sheet {table.sheet!r} use each other's answers in a circle: "
            f"{path}. A template can only use answers that do not depend on its own; remove "
            "one of those variables.") from None


def _state(values: list[Any]) -> str:
    """How the rerun mode sees a step's cells: failed if the first holds #ERROR, empty if all
    are empty, else answered."""
    first = display(values[0]) if values else ""
    if first.startswith(ERROR_PREFIX):
        return first
    return "" if all(display(v).strip() == "" for v in values) else first or "answered"


def _refusal(table: Table, grid: Grid, row: int, broken: int | None, step: Step,
             lost: set[int]) -> str | None:
    """Why a prompt is not worth sending: an input holds a spreadsheet error, or an answer
    it uses cannot be had."""
    if broken is not None:
        return (f"{cell_name(table.sheet, row, broken)} holds {grid[row][broken]}; fix that "
                "cell and run again")
    return next((needs_failed(table, row, s) for s in step.needs if s in lost), None)


def needs_failed(table: Table, row: int, step: int) -> str:
    """The reason in a cell whose template uses an answer that failed."""
    cell = cell_name(table.sheet, row, table.prompts[step].outputs[0].col)
    return f"uses the answer in {cell}, which failed; a rerun retries both"


def _check_not_reading_own_answers(table: Table, index: int, template: Template) -> None:
    """``{{ response }}`` would read the column the answers overwrite: refuse, say which."""
    inputs = {variable_name(h) for h in table.columns.values()}
    for output in table.prompts[index].outputs:
        name = variable_name(output.name)
        if name and name in template.variables and name not in inputs:
            raise TemplateError(
                f"The template in {template.origin} uses {{{{ {name} }}}}, but "
                f"{cell_name(table.sheet, table.header_row, output.col)} "
                f"({output.header!r}) is the answers column, which the run writes. "
                "Choose another answers column with --output-column NAME, or rename that "
                "header.")


def _check_calculated(table: Table, used: list[int],
                      uncalculated: Collection[tuple[int, int]]) -> None:
    """A formula with no saved value reads as empty: the prompt would silently lack it."""
    cols = set(used)
    found = sorted((r, c) for r, c in uncalculated
                   if c in cols and table.header_row < r <= table.last_row)
    if found:
        row, col = found[0]
        more = f" (and {len(found) - 1} more cells)" if len(found) > 1 else ""
        raise TableError(
            f"{cell_name(table.sheet, row, col)}{more} holds a formula whose value was never "
            "calculated: the program that saved the file does not calculate formulas. Open "
            "and save the file in Excel or LibreOffice so the values are calculated, then "
            "run again.")


EXCEL_ERRORS = frozenset({"#N/A", "#REF!", "#VALUE!", "#DIV/0!", "#NAME?", "#NULL!", "#NUM!",
                          "#SPILL!", "#CALC!", "#GETTING_DATA"})


def _is_error_value(value: object) -> bool:
    """A spreadsheet error in a variable would only make the model guess: do not send it."""
    return isinstance(value, str) and value.strip().upper() in EXCEL_ERRORS
