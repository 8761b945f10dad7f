"""Google Sheets surface: real gspread and google-auth against a fake Sheets API on loopback."""

from __future__ import annotations

import itertools
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from google.auth import _regional_access_boundary_utils
from typer.testing import CliRunner

from promptbatch_sheets.cells import CUT_MARKER
from promptbatch_sheets.cli import app
from promptbatch_sheets.errors import ConfigError, WorkbookError
from promptbatch_sheets.surfaces import gsheets, open_surface
from promptbatch_sheets.surfaces.gsheets import GSheetSurface, parse_ref
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer
from tests.fakes.sheets_api import FakeSheetsAPI, Formula
from tests.fakes.token_endpoint import service_account_key

ID = "1AbC-dEf_0123456789"
EMAIL = "promptbatch@fake-project.iam.gserviceaccount.com"
SPREADSHEETS_SCOPE = "https://www.googleapis.com/auth/spreadsheets"


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSheetsAPI]:
    """The fake API, and an environment where no real Google credentials can be found."""
    for name in ("GOOGLE_APPLICATION_CREDENTIALS", "GOOGLE_CLOUD_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # gspread's ~/.config/gspread
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("NO_GCE_CHECK", "True")  # never ask a metadata server
    with FakeSheetsAPI() as server:
        monkeypatch.setenv(gsheets.API_URL_ENV, server.root_url)
        # google-auth looks up a service account's regional access boundary at IAM after each
        # token; the pinned version builds that URL here, so it stays on loopback too.
        monkeypatch.setattr(_regional_access_boundary_utils, "get_service_account_rab_endpoint",
                            server.locations_url)
        yield server


@pytest.fixture
def key(api: FakeSheetsAPI, tmp_path: Path) -> str:
    info, public = service_account_key(EMAIL, api.token_uri)
    api.tokens.trust(EMAIL, public)
    path = tmp_path / "key.json"
    path.write_text(json.dumps(info), encoding="utf-8")
    return str(path)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unit tests of what is written; the real pace is checked by the 2,000-row run."""
    monkeypatch.setattr(gsheets, "PACE_SECONDS", 0.05)
    monkeypatch.setattr(gsheets, "BACKOFF_BASE_S", 0.02)


def sheets_calls(api: FakeSheetsAPI) -> list[tuple[str, str]]:
    prefix = f"/v4/spreadsheets/{ID}"
    return [(r["method"], r["path"].removeprefix(prefix)) for r in api.requests
            if r["path"].startswith(prefix)]


PRODUCTS: list[list[Any]] = [["template", "Describe {{ product }} ({{ price }})."], [],
            ["product", "price"], ["lamp", 12.5], ["desk", 200], ["", ""], ["chair", 40]]


def test_parse_ref() -> None:
    assert parse_ref(f"gsheet:{ID}") == (ID, None, None)
    assert parse_ref(f"gsheet:{ID}/Q3 / EMEA") == (ID, "Q3 / EMEA", None)
    url = f"https://docs.google.com/spreadsheets/d/{ID}/edit?usp=sharing#gid=42"
    assert parse_ref(url) == (ID, None, 42)
    assert parse_ref(f"https://docs.google.com/spreadsheets/d/{ID}/edit") == (ID, None, None)
    with pytest.raises(WorkbookError, match="names no spreadsheet"):
        parse_ref("gsheet:")


def test_read_is_one_values_request(api: FakeSheetsAPI, key: str) -> None:
    api.add(ID, {"Notes": [["x"]], "Products": PRODUCTS,
                 "promptbatch.conf": [["key", "value"], ["Model", "openai:gpt-4o-mini"]]},
            named={"prompt_template": (0, 0, 0)})
    surface = open_surface(f"gsheet:{ID}/Products", credentials=key)
    data = surface.read()
    assert data.name == "Products"
    assert data.grid == [["template", "Describe {{ product }} ({{ price }})."], [],
                         ["product", "price"], ["lamp", 12.5], ["desk", 200], [], ["chair", 40]]
    assert data.settings == {"model": "openai:gpt-4o-mini"}
    assert data.template is not None and data.template.text == "x"
    assert data.template.origin == "'Notes'!A1 (the name prompt_template)"
    assert sheets_calls(api) == [("GET", ""), ("GET", "/values:batchGet")]
    query = next(r["query"] for r in api.requests if r["path"].endswith("values:batchGet"))
    assert ("valueRenderOption", "UNFORMATTED_VALUE") in query
    assert [v for k, v in query if k == "ranges"] == [
        "'Products'", "'promptbatch.conf'!A:B", "'Notes'!A1"]
    assert [g["scope"] for g in api.tokens.grants] == [SPREADSHEETS_SCOPE]
    assert surface.cell_text("B1") == "Describe {{ product }} ({{ price }})."


def test_sheet_by_gid_and_default(api: FakeSheetsAPI, key: str) -> None:
    api.add(ID, {"promptbatch.conf": [], "First": [["a"]], "Second": [["b"]]})
    url = f"https://docs.google.com/spreadsheets/d/{ID}/edit#gid=2"
    assert GSheetSurface(url, credentials=key).read().grid == [["b"]]
    assert GSheetSurface(f"gsheet:{ID}", credentials=key).read().name == "First"


def test_cli_preview_reads_only(api: FakeSheetsAPI, key: str) -> None:
    api.add(ID, {"Products": PRODUCTS})
    result = CliRunner().invoke(app, ["preview", f"gsheet:{ID}", "--credentials", key,
                                      "--model", "openai:gpt-4o-mini"])
    assert result.exit_code == 0, result.output
    assert "Describe lamp (12.5)." in result.output
    assert api.writes() == []


def test_writes_raw_grouped_after_adding_columns(api: FakeSheetsAPI, key: str,
                                                 fast: None) -> None:
    book = api.add(ID, {"Sheet1": [["q", "a"]] + [[f"q{i}"] for i in range(6)]})
    book.sheets[0].cols = 2
    surface = GSheetSurface(f"gsheet:{ID}/Sheet1", credentials=key)
    surface.read()
    long = "y" * 60_000
    surface.write([(0, 2, "response"), (1, 2, "=SUM(1,2)"), (2, 2, "+1 555"), (3, 2, long),
                   (5, 2, "later"), (1, 1, "b")])
    surface.close()
    writes = api.writes()
    assert [w["path"].rpartition("/")[2] for w in writes] == [
        f"{ID}:batchUpdate", "values:batchUpdate"]
    assert writes[0]["json"]["requests"] == [
        {"appendDimension": {"sheetId": 0, "dimension": "COLUMNS", "length": 1}}]
    body = writes[1]["json"]
    assert body["valueInputOption"] == "RAW"
    assert [vr["range"] for vr in body["data"]] == [
        "'Sheet1'!B2:B2", "'Sheet1'!C1:C4", "'Sheet1'!C6:C6"]
    cells = book.sheets[0].cells
    assert cells[1, 2] == "=SUM(1,2)" and not isinstance(cells[1, 2], Formula)
    assert cells[2, 2] == "+1 555"
    assert len(cells[3, 2]) <= 50_000 and cells[3, 2].endswith(CUT_MARKER.format(
        n=60_000 - 50_000 + len(CUT_MARKER.format(n=60_000))))


def test_backs_off_on_429_with_jitter(api: FakeSheetsAPI, key: str, fast: None) -> None:
    book = api.add(ID, {"Sheet1": [["q", "a"], ["x"]]})
    api.write_faults = [429, 503, 429]
    surface = GSheetSurface(f"gsheet:{ID}", credentials=key)
    surface.read()
    surface.write([(1, 1, "answer")])
    surface.close()
    assert [w["status"] for w in api.writes()] == [429, 503, 429, 200]
    assert book.sheets[0].cells[1, 1] == "answer"
    random.seed(7)
    waits = [gsheets._backoff(3, None) / gsheets.BACKOFF_BASE_S for _ in range(50)]
    assert len(set(waits)) == 50 and min(waits) >= 8 and max(waits) < 9
    assert gsheets._backoff(0, "5") == 5


def test_errors_say_the_fix(api: FakeSheetsAPI, key: str) -> None:
    api.add(ID, {"Sheet1": [["a"]], "Other": []}, editors={"someone@example.com"})
    with pytest.raises(WorkbookError, match=f"not shared with {EMAIL}.*Editor"):
        GSheetSurface(f"gsheet:{ID}", credentials=key).read()
    api.spreadsheets[ID].editors = None
    with pytest.raises(WorkbookError, match="no sheet 'Nope'. Sheets: 'Sheet1', 'Other'"):
        GSheetSurface(f"gsheet:{ID}/Nope", credentials=key).read()
    with pytest.raises(WorkbookError, match="Spreadsheet missing was not found"):
        GSheetSurface("gsheet:missing", credentials=key).read()
    with pytest.raises(ConfigError, match="-o is for files"):
        open_surface(f"gsheet:{ID}", output="out.xlsx", credentials=key)


def test_failed_write_is_reported(api: FakeSheetsAPI, key: str, fast: None) -> None:
    api.add(ID, {"Sheet1": [["q", "a"]]})
    surface = GSheetSurface(f"gsheet:{ID}", credentials=key)
    surface.read()
    surface.write([(5000, 1, "beyond the last row")])
    with pytest.raises(WorkbookError, match="400.*exceeds grid limits"):
        surface.close()


def test_file_runs_do_not_import_gspread() -> None:
    code = "import sys, promptbatch_sheets.cli; sys.exit('gspread' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_no_credentials_names_three_ways(api: FakeSheetsAPI, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="No Google credentials found") as err:
        GSheetSurface(f"gsheet:{ID}")
    for way in ("--credentials key.json", "GOOGLE_APPLICATION_CREDENTIALS", "OAuth client",
                "gcloud auth application-default login"):
        assert way in str(err.value)
    (tmp_path / "client.json").write_text('{"type": "nope"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a service-account key"):
        GSheetSurface(f"gsheet:{ID}", credentials=str(tmp_path / "client.json"))


def test_credentials_from_environment(api: FakeSheetsAPI, key: str,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    api.add(ID, {"Sheet1": [["a"]]})
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", key)
    assert GSheetSurface(f"gsheet:{ID}").read().grid == [["a"]]


def test_url_rewrite_is_idempotent(api: FakeSheetsAPI, key: str) -> None:
    api.add(ID, {"Sheet1": [["a"]]})
    http = GSheetSurface(f"gsheet:{ID}", credentials=key)._http
    for url in (f"https://sheets.googleapis.com/v4/spreadsheets/{ID}",
                f"{api.root_url}/v4/spreadsheets/{ID}"):
        assert http.request("get", url).json()["spreadsheetId"] == ID


def test_cli_2000_rows_within_write_budget(api: FakeSheetsAPI, key: str) -> None:
    """The product's pace (2 s), a run of several seconds: under 30 writes a minute."""
    rows = 2000
    grid: list[list[Any]] = [["template", "Describe {{ product }}"], [], ["product"]]
    grid += [[f"item {i}"] for i in range(rows)]
    book = api.add(ID, {"Sheet1": grid})
    api.write_quota = 30  # a burst over 30 in any minute would get a 429 here
    config = FakeLLMConfig(latency_median_s=0.01, answer=lambda prompt: f"={prompt}")
    with FakeLLMServer(config) as llm:
        started = time.monotonic()
        result = CliRunner().invoke(app, [
            "run", f"gsheet:{ID}/Sheet1", "--credentials", key,
            "--model", "openai-compatible:fake", "--base-url", llm.base_url])
        seconds = time.monotonic() - started
    assert result.exit_code == 0, result.output
    writes = api.writes()
    per_minute = len(writes) / (seconds / 60)
    print(f"{len(writes)} write requests in {seconds:.1f} s = {per_minute:.1f}/min")
    assert per_minute < 30, per_minute
    assert [w["status"] for w in writes] == [200] * len(writes)
    gaps = [b["time"] - a["time"] for a, b in itertools.pairwise(writes)]
    assert min(gaps) > 1.9, gaps
    assert all(w["json"]["valueInputOption"] == "RAW" for w in writes)
    assert sum(1 for r in api.requests if r["path"].endswith("values:batchGet")) == 1
    cells = book.sheets[0].cells
    assert cells[2, 1] == "response"
    for i in range(rows):
        assert cells[3 + i, 1] == f"=Describe item {i}"


def test_typed_values_go_as_json_numbers_and_booleans(api: FakeSheetsAPI, key: str,
                                                      fast: None) -> None:
    """Fields of a structured answer: numbers and booleans stay typed; strings stay text."""
    book = api.add(ID, {"Sheet1": [["q", "a", "b", "c"], ["x"], ["y"]]})
    surface = GSheetSurface(f"gsheet:{ID}/Sheet1", credentials=key)
    surface.read()
    surface.write([(1, 1, 3.5), (2, 1, 7), (1, 2, True), (2, 2, False), (1, 3, "3"),
                   (2, 3, "=1+1")])
    surface.close()
    values = [vr["values"] for vr in api.writes()[-1]["json"]["data"]]
    assert values == [[[3.5], [7]], [[True], [False]], [["3"], ["=1+1"]]]
    cells = book.sheets[0].cells
    assert (cells[1, 1], cells[2, 1], cells[1, 2], cells[2, 2]) == (3.5, 7, True, False)
    assert cells[1, 3] == "3" and not isinstance(cells[2, 3], Formula)
