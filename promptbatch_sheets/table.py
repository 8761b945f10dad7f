"""Find the template, the header row, the data rows and the output column in a 2-D grid.

Pure functions over cell values (row-major lists, 0-based), so every surface shares one reading
of a sheet and hypothesis can test it without a file.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import TableError
from .template import display, variable_name

Grid = Sequence[Sequence[Any]]

LABEL_SCAN_ROWS = 10
"""How far down a ``template`` label cell is looked for."""


@dataclass(frozen=True)
class TemplateText:
    """A template's text and where it came from, e.g. ``'Products'!B1`` or a file name."""

    text: str
    origin: str


@dataclass(frozen=True)
class Bounds:
    """A rectangle of the grid, 0-based and inclusive: an Excel Table's extent."""

    top: int
    left: int
    bottom: int
    right: int


@dataclass(frozen=True)
class Output:
    """One column a prompt's answers go to."""

    header: str
    col: int
    exists: bool
    base: str | None = None
    """With variations, the header without its number (``response`` for ``response 2``):
    the name a later template uses for this variation's answer."""

    @property
    def name(self) -> str:
        """The header a template reads this answer by."""
        return self.base or self.header


@dataclass(frozen=True)
class TablePrompt:
    """One template and the columns its answers fill: one column, or one per JSON field."""

    name: str
    template: TemplateText
    outputs: tuple[Output, ...]
    status: Output | None = None
    """The column saying how each answer came (``metadata = status``), if asked for."""
    variation: int | None = None
    """Which of the row's answers this is (1..N) when ``variations`` asks for N."""


@dataclass(frozen=True)
class Table:
    """Where the parts of one batch sit in a sheet."""

    sheet: str
    header_row: int
    columns: dict[int, str]
    """Input columns: grid column index -> header text (answers columns are not among them)."""
    rows: list[int]
    """Grid rows holding data, in order; blank rows are skipped and keep their place."""
    last_row: int
    """The last grid row the table spans (blank or not)."""
    prompts: tuple[TablePrompt, ...]
    """The templates of the sheet, in the order they were found."""

    @property
    def template(self) -> TemplateText:
        return self.prompts[0].template

    @property
    def output_col(self) -> int:
        return self.prompts[0].outputs[0].col

    @property
    def output_header(self) -> str:
        return self.prompts[0].outputs[0].header

    @property
    def output_exists(self) -> bool:
        return self.prompts[0].outputs[0].exists

    @property
    def outputs(self) -> list[Output]:
        """Every column a run writes: answers, and status columns when asked for."""
        return [o for p in self.prompts for o in (*p.outputs, *([p.status] if p.status else []))]

    def record(self, grid: Grid, row: int) -> dict[str, Any]:
        """One data row as header -> value."""
        cells = grid[row]
        return {h: (cells[c] if c < len(cells) else None) for c, h in self.columns.items()}

    def value(self, grid: Grid, row: int, col: int) -> Any:
        cells = grid[row]
        return cells[col] if col < len(cells) else None

    def output_value(self, grid: Grid, row: int) -> Any:
        return self.value(grid, row, self.output_col)


def column_letter(col: int) -> str:
    """Excel's name of a 1-based column (1 -> A, 28 -> AB); computed here, not imported from
    openpyxl, so a CSV run does not load openpyxl."""
    letters = ""
    while col > 0:
        col, rest = divmod(col - 1, 26)
        letters = chr(ord("A") + rest) + letters
    return letters


def cell_name(sheet: str, row: int, col: int) -> str:
    """An A1 reference a user can click to: ``'Sheet 1'!B3``."""
    return f"{quote_sheet(sheet)}!{column_letter(col + 1)}{row + 1}"


def quote_sheet(sheet: str) -> str:
    return "'" + sheet.replace("'", "''") + "'"


def _text(value: Any) -> str:
    return display(value).strip()


def _is_blank(cells: Sequence[Any]) -> bool:
    return all(_text(v) == "" for v in cells)


@dataclass(frozen=True)
class Label:
    """A ``template`` label cell in the first rows and the templates to its right."""

    row: int
    single: TemplateText | None
    """The one template right of the label, for the answers column (``output_column``)."""
    above: dict[int, TemplateText]
    """Templates standing over their own answers column (several, or a ``templates`` label)."""


def find_template_label(grid: Grid, sheet: str) -> Label | None:
    """The ``template`` (or ``templates``) label in the first rows and what its row holds.

    One template right of a ``template`` label is the sheet's template (the simple layout).
    Several, or a ``templates`` label, make a row of templates: each one is the template of
    the column whose header is below it, so a sheet can hold several chained prompts.
    """
    for r, cells in enumerate(grid[:LABEL_SCAN_ROWS]):
        for c, value in enumerate(cells):
            word = _text(value).rstrip(":").strip().lower()
            if word not in ("template", "templates"):
                continue
            found = {k: TemplateText(str(v), cell_name(sheet, r, k))
                     for k, v in enumerate(cells) if k > c and _text(v)}
            if not found:
                raise TableError(
                    f"{cell_name(sheet, r, c)} reads {word!r} but the cell to its "
                    f"right, {cell_name(sheet, r, c + 1)}, is empty. Put the prompt template "
                    "there.")
            if word == "template" and list(found) == [c + 1]:
                return Label(r, found[c + 1], {})
            return Label(r, None, found)
    return None


def locate(
    grid: Grid,
    sheet: str,
    *,
    explicit: TemplateText | None = None,
    fallback: TemplateText | None = None,
    named: Mapping[str, TemplateText] | None = None,
    fields: Mapping[str, Sequence[str]] | None = None,
    bounds: Bounds | None = None,
    output_header: str = "response",
    skip_rows: Collection[int] = frozenset(),
    merged: Sequence[Bounds] = (),
    status: bool = False,
    variations: int = 1,
) -> Table:
    """Read a sheet by the conventions in DESIGN.md.

    The sheet's template: ``explicit`` (command line, defined name) wins over a ``template``
    label cell, which wins over ``fallback`` (the promptbatch.conf sheet); its answers go to
    ``output_header``. More templates, one per answers column, come from a row of templates
    and from ``named`` (answers header -> template, the conf sheet's ``template.NAME``).
    ``fields`` turns a prompt's one answers column into one column per JSON field (prompt
    name, lower case -> headers). ``bounds`` is an Excel Table's extent (a label is looked for
    above it: a header reading ``Template`` is a column); ``skip_rows`` are
    data rows to leave out (hidden rows); ``merged`` are merged ranges, which answers columns
    must not cross. ``status`` adds a column ``NAME status`` after each prompt's answers.
    ``variations`` above 1 gives each prompt that many sets of answers columns, numbered:
    ``response 1``, ``response 2``, ... (each field column too), one prompt per set.
    """
    label = find_template_label(grid[:bounds.top] if bounds else grid, sheet)
    header_row, last_row, left, right = _extent(grid, sheet, bounds, label.row + 1 if label
                                                else 0, merged)
    header_cells = grid[header_row] if header_row < len(grid) else ()
    templates = _templates(explicit or (label.single if label else None) or fallback,
                           output_header, label, named or {}, header_cells, sheet, header_row)
    wanted = [(name, v, list((fields or {}).get(name.lower()) or [name]))
              for name in templates
              for v in (range(1, variations + 1) if variations > 1 else [None])]
    copies = _merged_copies(merged, header_row)
    headers = {c: _text(header_cells[c]) if c < len(header_cells) and c not in copies else ""
               for c in range(left, right + 1)}
    answers = [[numbered(h, v) for h in hs] + ([status_header(numbered(name, v))] * status)
               for name, v, hs in wanted]
    placed, new = _place_outputs([h for hs in answers for h in hs], headers, header_cells,
                                 right, sheet, header_row)
    # with variations, a column headed like a prompt's answers column (from a run without
    # them) is that prompt's, not an input: it is left as it is
    unnumbered = {h.lower() for name, v, hs in wanted if v is not None
                  for h in hs + ([status_header(name)] if status else [])}
    columns = {c: h for c, h in headers.items()
               if h and c not in placed.values() and h.lower() not in unnumbered}
    if not columns:
        raise TableError(f"The header row of sheet {quote_sheet(sheet)} (row {header_row + 1}) "
                         "names no input column.")
    _check_unique(columns, sheet, header_row)
    unnamed = [c for c, h in headers.items() if not h and c not in placed.values()]
    _check_unnamed(grid, unnamed + sorted(new), sheet, header_row, last_row, copies)
    input_cols = list(columns)
    rows = [r for r in range(header_row + 1, last_row + 1) if r not in skip_rows
            and not _is_blank([grid[r][c] for c in input_cols if c < len(grid[r])])]
    for col in placed.values():
        _check_unmerged(merged, col, header_row, last_row, sheet)
    def output(header: str, variation: int | None) -> Output:
        col = placed[numbered(header, variation).strip().lower()]
        return Output(numbered(header, variation) if col in new else _text(header_cells[col]),
                      col, col not in new, None if variation is None else header)

    prompts = tuple(TablePrompt(name, templates[name], tuple(output(h, v) for h in hs),
                                output(status_header(numbered(name, v)), None) if status
                                else None, v)
                    for name, v, hs in wanted)
    return Table(sheet=sheet, header_row=header_row, columns=columns, rows=rows,
                 last_row=last_row, prompts=prompts)


def numbered(header: str, variation: int | None) -> str:
    """The header of one variation's answers column: ``response 2``."""
    return header if variation is None else f"{header} {variation}"


def status_header(name: str) -> str:
    """The status column of the prompt whose answers column is ``name``."""
    return f"{name} status"


def _templates(main: TemplateText | None, output_header: str, label: Label | None,
               named: Mapping[str, TemplateText], header_cells: Sequence[Any], sheet: str,
               header_row: int) -> dict[str, TemplateText]:
    """Answers header -> template, for every template of the sheet; a header given two
    templates is refused, since only one of them could fill it."""
    found: dict[str, TemplateText] = {}

    def add(name: str, template: TemplateText) -> None:
        twin = next((t for n, t in found.items() if n.lower() == name.lower()), None)
        if twin is not None:
            raise TableError(
                f"Two templates fill the column {name!r}: {twin.origin} and {template.origin}. "
                "Keep one of them, or give the other its own column.")
        found[name] = template

    if main is not None:
        add(output_header, main)
    for col, template in (label.above if label else {}).items():
        name = _text(header_cells[col]) if col < len(header_cells) else ""
        if not name:
            raise TableError(
                f"The template in {template.origin} stands over "
                f"{cell_name(sheet, header_row, col)}, which is empty. Write the name of its "
                "answers column there, e.g. summary.")
        add(name, template)
    for name, template in named.items():
        add(name, template)
    if not found:
        raise TableError(
            f"No prompt template found for sheet {quote_sheet(sheet)}. Put the word 'template' "
            "in a cell of the first rows and the template in the cell to its right, define a "
            "workbook name prompt_template, or pass --template / --template-file."
        )
    return found


def _extent(grid: Grid, sheet: str, bounds: Bounds | None, start: int,
            merged: Sequence[Bounds]) -> tuple[int, int, int, int]:
    """Header row, last row, first and last column: an Excel Table's (rows past the last one
    the file stores are blank, so they are left out), or else those of the first row at or
    below ``start`` that names something: not blank, and not a title merged across columns."""
    if bounds is not None:
        return bounds.top, min(bounds.bottom, len(grid) - 1), bounds.left, bounds.right
    header_row = next((r for r in range(start, len(grid))
                       if not _is_blank(grid[r]) and not _is_title(grid[r], r, merged)), -1)
    if header_row < 0:
        raise TableError(
            f"Sheet {quote_sheet(sheet)} has no header row" + (
                f" below the template (row {start})" if start else "") + ": the first "
            "non-empty row must name the variables, e.g. Product Name | Price.")
    used = [c for c, v in enumerate(grid[header_row]) if _text(v)]
    return header_row, len(grid) - 1, used[0], used[-1]


def _is_title(cells: Sequence[Any], row: int, merged: Sequence[Bounds]) -> bool:
    """A row whose only text is one range merged across columns (a title over the table):
    its copies in every cell would otherwise read as headers that all say the same."""
    used = [c for c, v in enumerate(cells) if _text(v)]
    return any(m.top <= row <= m.bottom and m.left < m.right and m.left <= used[0]
               and used[-1] <= m.right for m in merged)


def _merged_copies(merged: Sequence[Bounds], row: int) -> dict[int, Bounds]:
    """Columns of ``row`` that show a merged range's value without holding it (all but its
    first): a header merged over two columns names one variable, not two."""
    return {c: m for m in merged if m.top <= row <= m.bottom
            for c in range(m.left + 1, m.right + 1)}


def _place_outputs(wanted: list[str], headers: dict[int, str], header_cells: Sequence[Any],
                   right: int, sheet: str, header_row: int) -> tuple[dict[str, int], set[int]]:
    """Answers header (lower case) -> column: the column headed like it, inside the table or
    in the run of answers columns right after it; else a new column after those. Also
    returns the new columns.

    Two existing columns headed alike would leave the answers nowhere certain.
    """
    after = right + 1
    while after < len(header_cells) and _text(header_cells[after]).lower() in {
            w.lower() for w in wanted}:
        after += 1
    span = {**headers, **{c: _text(header_cells[c]) for c in range(right + 1, after)}}
    placed: dict[str, int] = {}
    new: set[int] = set()
    for header in wanted:
        key = header.strip().lower()
        if key in placed:
            raise TableError(f"Two prompts would both write the column {header!r}. Give each "
                             "answer or JSON field its own name.")
        found = [c for c, h in span.items() if h.lower() == key]
        if len(found) > 1:
            first, second = (cell_name(sheet, header_row, c) for c in found[:2])
            raise TableError(
                f"Headers {first} and {second} both read {span[found[0]]!r}, an answers "
                "column. Rename one of them, or choose another answers column with "
                "--output-column NAME.")
        if found:
            placed[key] = found[0]
        else:
            if after < len(header_cells) and _text(header_cells[after]):
                raise TableError(
                    f"The new answers column {header!r} would overwrite "
                    f"{cell_name(sheet, header_row, after)} ({_text(header_cells[after])!r}) "
                    "right of the table. Move that column, or add a column headed "
                    f"{header!r} to the table.")
            placed[key] = after
            new.add(after)
            after += 1
    return placed, new


def _check_unnamed(grid: Grid, cols: list[int], sheet: str, header_row: int,
                   last_row: int, copies: Mapping[int, Bounds]) -> None:
    """A column with data but no header would be left out of every prompt, or, right of the
    table, overwritten by the answers."""
    for c in cols:
        filled = next((r for r in range(header_row + 1, last_row + 1)
                       if c < len(grid[r]) and _text(grid[r][c])), None)
        if filled is not None and c in copies:
            m = copies[c]
            raise TableError(
                f"Column {column_letter(c + 1)} has data ({cell_name(sheet, filled, c)}) under "
                f"the merged header {cell_name(sheet, m.top, m.left)}:"
                f"{column_letter(m.right + 1)}{m.bottom + 1}, which names only column "
                f"{column_letter(m.left + 1)}. Unmerge it (Home > Merge & Center) and give "
                "each column its own header.")
        if filled is not None:
            raise TableError(
                f"Column {column_letter(c + 1)} has data ({cell_name(sheet, filled, c)}) "
                f"but no header: {cell_name(sheet, header_row, c)} is empty. Give it a header "
                "so the template can use it as a variable, or move the data out of the table.")


def _check_unmerged(merged: Sequence[Bounds], col: int, header_row: int, last_row: int,
                    sheet: str) -> None:
    """Excel shows only the first cell of a merged range: answers there would be hidden."""
    for m in merged:
        if m.left <= col <= m.right and m.top <= last_row and m.bottom >= header_row:
            corner = f"{column_letter(m.right + 1)}{m.bottom + 1}"
            area = f"{cell_name(sheet, m.top, m.left)}:{corner}"
            raise TableError(
                f"The answers column {column_letter(col + 1)} crosses the merged cells "
                f"{area}; answers written there "
                "would be hidden. Unmerge them (Home > Merge & Center), or choose another "
                "answers column with --output-column NAME.")


def _check_unique(columns: dict[int, str], sheet: str, header_row: int) -> None:
    seen: dict[str, int] = {}
    for c, h in columns.items():
        name = variable_name(h)
        if not name:
            continue
        if name in seen:
            first = cell_name(sheet, header_row, seen[name])
            raise TableError(
                f"Headers {first} ({columns[seen[name]]!r}) and "
                f"{cell_name(sheet, header_row, c)} ({h!r}) both become the variable "
                f"{{{{ {name} }}}}. Rename one of them."
            )
        seen[name] = c
