"""Reading a sheet by the conventions: template, header row, data rows, output column."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openpyxl.utils import get_column_letter

from promptbatch_sheets.errors import PromptBatchError, TableError
from promptbatch_sheets.plan import Rerun, make_plan
from promptbatch_sheets.table import Bounds, TemplateText, column_letter, locate

GRID: list[list[Any]] = [
    ["Template", "Describe {{ name }} in {{ words }} words."],
    [None, None],
    ["Name", "Words", None],
    ["Mug", 5],
    [None, None],
    ["Lamp", 7.0],
]


def test_column_letters_are_excels_for_every_column() -> None:
    assert all(column_letter(c) == get_column_letter(c) for c in range(1, 16_385))  # A..XFD


def test_label_cell_header_and_new_output_column() -> None:
    table = locate(GRID, "Products")
    assert table.template.text.startswith("Describe")
    assert table.template.origin == "'Products'!B1"
    assert table.header_row == 2
    assert table.columns == {0: "Name", 1: "Words"}
    assert table.rows == [3, 5]  # the blank row is skipped, alignment kept
    assert (table.output_col, table.output_exists, table.output_header) == (2, False, "response")


def test_existing_output_column_and_rerun_modes() -> None:
    grid = [["Name", "Response"], ["a", ""], ["b", "done"], ["c", "#ERROR: timeout"]]
    table = locate(grid, "S", explicit=TemplateText("Say {{ name }}", "--template"))
    assert (table.output_col, table.output_exists) == (1, True)
    rows = {mode: [j.row for j in make_plan(table, grid, mode).jobs] for mode in Rerun}
    assert rows[Rerun.MISSING] == [1, 3]
    assert rows[Rerun.EMPTY] == [1]
    assert rows[Rerun.FAILED] == [3]
    assert rows[Rerun.ALL] == [1, 2, 3]
    assert make_plan(table, grid, Rerun.MISSING).kept == 1


def test_explicit_template_wins_over_label_and_conf() -> None:
    table = locate(GRID, "P", explicit=TemplateText("X {{ name }}", "--template"),
                   fallback=TemplateText("conf", "conf"))
    assert table.template.text == "X {{ name }}"
    assert table.header_row == 2


def test_excel_table_bounds_are_the_table() -> None:
    grid = [["note", None, None], ["Q", "A", None], ["x", None, None], ["y", None, None],
            ["not in table", None, None]]
    table = locate(grid, "S", explicit=TemplateText("{{ q }}", "t"), bounds=Bounds(1, 0, 3, 1))
    assert table.header_row == 1 and table.rows == [2, 3] and table.output_col == 2


def test_no_template_says_how_to_give_one() -> None:
    with pytest.raises(TableError, match="--template"):
        locate([["Name"], ["a"]], "S")


def test_duplicate_variable_headers_are_refused() -> None:
    with pytest.raises(TableError, match="both become the variable"):
        locate([["Product Name", "product-name"], ["a", "b"]], "S",
               explicit=TemplateText("{{ product_name }}", "t"))


def test_label_without_template_names_the_empty_cell() -> None:
    with pytest.raises(TableError, match=r"'S'!B1"):
        locate([["Template", None], ["Name"], ["a"]], "S")


cells = st.one_of(st.none(), st.text(max_size=8), st.integers(), st.floats(allow_nan=False))


@given(st.lists(st.lists(cells, max_size=6), max_size=8), st.text(max_size=30))
def test_any_grid_raises_only_our_errors(grid: list[list[Any]], template: str) -> None:
    try:
        table = locate(grid, "S", fallback=TemplateText(template, "t"))
        make_plan(table, grid)
    except PromptBatchError:
        pass


def test_row_of_templates_gives_one_prompt_per_answers_column() -> None:
    grid = [["Templates", None, "Sum {{ text }}", "Tweet {{ summary }}"],
            ["Who", "Text", "Summary", None],
            ["a", "t", None, None]]
    with pytest.raises(TableError, match=r"'S'!D1 stands over 'S'!D2, which is empty"):
        locate(grid, "S")
    grid[1][3] = "Tweet"
    table = locate(grid, "S")
    assert [(p.name, p.template.origin, [o.col for o in p.outputs]) for p in table.prompts] == [
        ("Summary", "'S'!C1", [2]), ("Tweet", "'S'!D1", [3])]
    assert table.columns == {0: "Who", 1: "Text"}


def test_two_templates_for_one_column_and_a_column_in_the_way() -> None:
    grid = [["Name", "Notes"], ["x", None]]
    with pytest.raises(TableError, match="fill the column 'Response': --template and conf"):
        locate(grid, "S", explicit=TemplateText("{{ name }}", "--template"),
               named={"Response": TemplateText("{{ name }}", "conf")})
    with pytest.raises(TableError, match=r"would overwrite 'S'!B1 \('Notes'\) right of the"):
        locate(grid, "S", explicit=TemplateText("{{ name }}", "t"), bounds=Bounds(0, 0, 1, 0))
