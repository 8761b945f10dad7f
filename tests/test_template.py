"""Templates come from spreadsheets: strict, sandboxed, and clear when wrong."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptbatch_sheets.errors import PromptBatchError, TemplateError
from promptbatch_sheets.template import Template, display, variable_name


def test_headers_become_variables_and_row_lookup() -> None:
    t = Template.parse('{{ product_name }} / {{ row["Product Name"] }} / {{ unit_price }}')
    text = t.render({"Product Name": "Mug", "Unit Price ($)": 3.0})
    assert text == "Mug / Mug / 3"
    assert t.variables == {"product_name", "unit_price"}


def test_values_render_as_a_person_reads_them() -> None:
    assert display(12.0) == "12"
    assert display(12.5) == "12.5"
    assert display(dt.datetime(2024, 3, 1)) == "2024-03-01"
    assert display(dt.datetime(2024, 3, 1, 14, 30)) == "2024-03-01 14:30"
    assert display(None) == ""
    assert display(True) == "TRUE"


def test_syntax_error_names_the_cell_and_line() -> None:
    with pytest.raises(TemplateError, match=r"'Sheet1'!B1, line 2"):
        Template.parse("Hello\n{{ name ", "'Sheet1'!B1")


def test_missing_variable_lists_the_columns_that_exist() -> None:
    t = Template.parse("{{ produkt }}", "'Products'!B1")
    with pytest.raises(TemplateError) as err:
        t.check_columns(["Product Name", "Price"])
    message = str(err.value)
    assert "{{ produkt }}" in message and "'Product Name'" in message and "{{ price }}" in message


@pytest.mark.parametrize("source", [
    "{{ ''.__class__.__mro__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ().__class__.__base__.__subclasses__() }}",
])
def test_sandbox_escapes_are_refused(source: str) -> None:
    with pytest.raises(TemplateError):
        Template.parse(source).render({"a": 1})


def test_runaway_output_is_bounded() -> None:
    t = Template.parse("{% for i in range(100000) %}{% for j in range(100000) %}x"
                       "{% endfor %}{% endfor %}")
    with pytest.raises(TemplateError, match="loop running away"):
        t.render({})


def test_empty_render_is_an_error() -> None:
    with pytest.raises(TemplateError, match="renders nothing"):
        Template.parse("{{ a }}").render({"a": None})


def test_variable_names() -> None:
    assert variable_name("Product Name") == "product_name"
    assert variable_name("  Unit-Price (€) ") == "unit_price"
    assert variable_name("2024 sales") == "_2024_sales"


@given(st.text(max_size=60), st.dictionaries(st.text(max_size=10), st.one_of(
    st.none(), st.text(max_size=20), st.integers(), st.floats(allow_nan=True), st.booleans(),
    st.datetimes()), max_size=5))
def test_any_template_and_row_raise_only_our_errors(source: str, row: dict[str, object]) -> None:
    try:
        t = Template.parse(source)
        t.check_columns(list(row))
        t.render(row)
    except PromptBatchError:
        pass


def test_boolean_cells_print_as_shown_and_test_as_booleans() -> None:
    template = Template.parse("{% if urgent %}now{% else %}later{% endif %} ({{ urgent }})")
    assert template.render({"Urgent": False}) == "later (FALSE)"
    assert template.render({"Urgent": True}) == "now (TRUE)"
