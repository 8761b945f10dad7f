"""=PROMPTBATCH() called as a plain function, as xlwings' COM server calls it on Windows."""

from __future__ import annotations

import importlib.util
import io
import sys
import types
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openpyxl
import pytest

import promptbatch_sheets.udfs as udfs
from promptbatch_sheets.udfs import PROMPTBATCH
from tests.conftest import cli, fake_model
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer

TEMPLATE = "Describe {{ name }} in {{ colour }}."


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLLMServer]:
    with FakeLLMServer(FakeLLMConfig()) as srv:
        monkeypatch.setenv("PROMPTBATCH_MODEL", "openai-compatible:fake")
        monkeypatch.setenv("PROMPTBATCH_BASE_URL", srv.base_url)
        yield srv


def answer(prompt: str) -> str:
    return "Answer: " + prompt[:60]


def test_table_with_header_row_spills_one_answer_per_row(server: FakeLLMServer) -> None:
    table = [["Name", "Colour"], ["cup", "red"], [None, None], ["pot", 3.0]]
    assert PROMPTBATCH(TEMPLATE, table) == [[answer("Describe cup in red.")], [""],
                                           [answer("Describe pot in 3.")]]
    assert sorted(server.prompts) == ["Describe cup in red.", "Describe pot in 3."]


def test_one_row_with_headers_gives_one_answer(server: FakeLLMServer) -> None:
    assert PROMPTBATCH(TEMPLATE, [["cup", "red"]], ["Name", "Colour"]) == answer(
        "Describe cup in red.")
    rows = PROMPTBATCH(TEMPLATE, [["cup", "red"], ["pot", "blue"]], ["Name", "Colour"])
    assert rows == [[answer("Describe cup in red.")], [answer("Describe pot in blue.")]]


def test_single_variable_takes_a_cell_or_a_column(server: FakeLLMServer) -> None:
    assert PROMPTBATCH("Say {{ word }}", "hi") == answer("Say hi")
    assert PROMPTBATCH("Say {{ word }}", [["hi"], ["yo"]]) == [[answer("Say hi")],
                                                              [answer("Say yo")]]
    assert PROMPTBATCH("Say {{ word }}", [["Word"], ["hi"]]) == [[answer("Say hi")]]


def test_optional_arguments_reach_the_model(server: FakeLLMServer) -> None:
    PROMPTBATCH("Say {{ word }}", "hi", None, None, 0.5, 12.0, "Be brief.")
    body = server.requests[-1]["json"]
    assert body["temperature"] == 0.5 and body["max_tokens"] == 12
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    PROMPTBATCH("Say {{ word }}", "hi", None, None, 0.7)
    assert len(server.requests) == 2  # another temperature is another question


@pytest.mark.parametrize(("args", "message"), [
    (("{{ oops", "x"), "#ERROR: Template syntax error"),
    ((TEMPLATE, [["Name"], ["cup"]]), "#ERROR: The template in the PROMPTBATCH template uses"),
    ((TEMPLATE, [["Name", "Colour"]]), "#ERROR: PROMPTBATCH needs a header row"),
    (("Say {{ word }}", "hi", None, "nope:x"), "#ERROR: Unknown provider 'nope'"),
    (("", "hi"), "#ERROR: The template in the PROMPTBATCH template is empty"),
])
def test_mistakes_come_back_as_error_text(server: FakeLLMServer, args: tuple[Any, ...],
                                          message: str) -> None:
    result = PROMPTBATCH(*args)
    assert isinstance(result, str) and result.startswith(message), result
    assert not server.requests


def test_a_row_that_cannot_render_stops_the_formula_before_any_call(
        server: FakeLLMServer) -> None:
    """As the command line stops a run: a template mistake costs nothing."""
    result = PROMPTBATCH("{{ 10 // (n | int) }}", [["N"], [0], [4]])
    assert result == ("#ERROR: The template in the PROMPTBATCH template failed on row 2 "
                      "('PROMPTBATCH range'!B2): ZeroDivisionError: integer division or "
                      "modulo by zero")
    assert not server.requests


def test_an_error_value_is_refused_naming_its_cell(server: FakeLLMServer) -> None:
    """xlwings passes #N/A as text (err_to_str): not sent, as from the command line."""
    result = PROMPTBATCH("Say {{ n }}", [["N"], ["#N/A"], [4]])
    assert result == [["#ERROR: 'PROMPTBATCH range'!A2 holds #N/A; fix that cell and run "
                       "again"], [answer("Say 4")]]
    assert server.prompts == ["Say 4"]


def test_failed_request_is_an_error_cell_and_is_retried_next_time(
        server: FakeLLMServer) -> None:
    server.config.faults = ["500"] * 6  # every attempt of one request
    assert PROMPTBATCH("Say {{ word }}", "hi").startswith("#ERROR:")
    assert PROMPTBATCH("Say {{ word }}", "hi") == answer("Say hi")


def test_a_missing_api_key_is_an_error_cell(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTBATCH_MODEL", "openai:gpt-4o-mini")
    result = PROMPTBATCH("Say {{ word }}", [["hi"], ["yo"]])
    assert result[0][0].startswith("#ERROR:") and "OPENAI_API_KEY" in result[0][0]
    assert result[1] == result[0]


def test_recalculation_storm_sends_each_prompt_once(server: FakeLLMServer) -> None:
    """5,000 cells recalculate at once on xlwings' worker threads; 250 distinct prompts."""
    words = [f"word{i % 250}" for i in range(5000)]

    def cell(word: str) -> Any:
        return PROMPTBATCH("Say {{ word }}", word)

    with ThreadPoolExecutor(16) as pool:
        first = list(pool.map(cell, words))
    assert first == [answer(f"Say {w}") for w in words]
    assert len(server.requests) == 250
    assert sorted(server.prompts) == sorted({f"Say {w}" for w in words})

    with ThreadPoolExecutor(16) as pool:
        again = list(pool.map(cell, words))
    assert again == first
    assert len(server.requests) == 250  # a second recalculation is free


def test_answers_paid_for_in_the_cli_are_free_in_a_formula(samples: Path,
                                                           server: FakeLLMServer) -> None:
    book = samples / "product_descriptions.xlsx"
    out = book.parent / "unused"
    result = cli("run", str(book), "-o", str(out.with_suffix(".xlsx")), *fake_model(server))
    out.with_suffix(".xlsx").unlink(missing_ok=True)
    assert result.exit_code == 0, result.output
    sent = len(server.requests)
    ws = openpyxl.load_workbook(book, data_only=True)["Products"]
    template = str(ws["B1"].value)
    table = [list(r) for r in ws.iter_rows(min_row=3, max_col=4, values_only=True)]
    assert all(t[0].startswith("Answer: ") for t in PROMPTBATCH(template, table))
    assert len(server.requests) == sent


def test_declared_for_xlwings_on_windows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Load udfs.py with xlwings' Windows decorators (pywin32 stubbed) and generate its VBA."""
    for name in ("pythoncom", "pywintypes", "win32com", "win32com.client"):
        stub = types.ModuleType(name)
        stub.Dispatch = object  # type: ignore[attr-defined]
        stub.CoInitialize = object  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, name, stub)
    import xlwings as xw

    monkeypatch.setattr(xw, "udfs", None, raising=False)  # both undone after the test
    monkeypatch.setitem(sys.modules, "xlwings.udfs", None)
    del sys.modules["xlwings.udfs"]
    import xlwings.udfs as xludfs

    monkeypatch.setattr(xw, "func", xludfs.xlfunc, raising=False)
    monkeypatch.setattr(xw, "arg", xludfs.xlarg, raising=False)
    monkeypatch.setattr(xw, "ret", xludfs.xlret, raising=False)
    name = "promptbatch_sheets.udfs_on_windows"
    spec = importlib.util.spec_from_file_location(name, udfs.__file__)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, module)
    spec.loader.exec_module(module)

    info = module.PROMPTBATCH.__xlfunc__
    assert info["async_mode"] == "threading"
    assert info["argmap"]["table"]["options"]["ndim"] == 2
    assert info["argmap"]["headers"]["options"]["ndim"] == 1
    vba = io.StringIO()
    xludfs.generate_vba_wrapper("promptbatch_sheets.udfs", module, vba,
                                types.SimpleNamespace(Name="Book1.xlsx"))
    assert info["argmap"]["fields"]["options"]["ndim"] == 1
    assert ("Function PROMPTBATCH(template, table, Optional headers, Optional model, "
            "Optional temperature, Optional max_tokens, Optional system, Optional fields)"
            ) in vba.getvalue()


def test_one_header_may_be_a_single_cell(server: FakeLLMServer) -> None:
    assert PROMPTBATCH("Say {{ word }}", [["hi"]], "Word") == answer("Say hi")


FIELDS = "mood (happy|sad), score (number), spam (boolean), note"


def test_fields_spill_one_typed_row_per_data_row(server: FakeLLMServer) -> None:
    rows = PROMPTBATCH(TEMPLATE, [["Name", "Colour"], ["cup", "red"], [None, None],
                                  ["pot", "blue"]], fields=FIELDS)
    sent = next(p for p in server.prompts if p.startswith("Describe cup in red.\n\n"))
    assert rows[0] == ["happy", len(sent) / 4, True, "text: " + sent[:30]]
    assert rows[1] == ["", "", "", ""] and rows[2][0] == "happy"
    schema = server.requests[-1]["json"]["response_format"]["json_schema"]["schema"]
    assert list(schema["properties"]) == ["mood", "score", "spam", "note"]


def test_fields_from_a_range_of_headers_and_one_row(server: FakeLLMServer) -> None:
    row = PROMPTBATCH("Say {{ word }}", "hi", fields=["mood (happy|sad)", None, "score (int)"])
    assert row == [["happy", len(server.prompts[0])]]
    assert PROMPTBATCH("Say {{ word }}", "hi", fields=[None]) == answer("Say hi")


def test_a_reply_that_breaks_the_schema_is_asked_again_then_says_why(
        server: FakeLLMServer) -> None:
    server.config.structured_answer = lambda prompt, schema: {"mood": "meh", "score": 1,
                                                              "spam": False, "note": ""}
    row = PROMPTBATCH("Say {{ word }}", [["hi"], ["yo"]], fields=FIELDS)
    assert row[0] == ["#ERROR: the reply did not fit the fields, twice: mood: 'meh' is not "
                      "one of happy, sad", "", "", ""]
    assert len(server.requests) == 4  # each prompt once more, with the reason
    server.config.structured_answer = None
    assert PROMPTBATCH("Say {{ word }}", [["hi"]], fields=FIELDS)[0][0] == "happy", \
        "a reply that did not fit was not cached"
    server.config.faults = ["500"] * 6
    failed = PROMPTBATCH("Say {{ word }}", "ho", fields=FIELDS)
    assert failed[0][0].startswith("#ERROR: HTTP 500") and failed[0][1:] == ["", "", ""]


def test_a_bad_fields_argument_is_one_error_cell(server: FakeLLMServer) -> None:
    result = PROMPTBATCH("Say {{ word }}", "hi", fields="score (numeric)")
    assert result.startswith("#ERROR: The PROMPTBATCH fields argument: field 'score'")
    assert not server.requests
