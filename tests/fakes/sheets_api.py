"""A fake Google Sheets API v4 on 127.0.0.1, shaped after ``shared/specs/sheets.v4.json``.

Real gspread and google-auth talk to it over HTTP (``PROMPTBATCH_SHEETS_API_URL`` points the
surface here; ``/token`` is the OAuth endpoint of the test's service-account keys). Grids live in
memory. What it keeps of Google's behaviour: the discovery document's paths and parameters,
ValueRanges without trailing empty cells and rows, GridRanges without zero fields (proto3 JSON),
RAW vs USER_ENTERED (``=...`` becomes a formula only with USER_ENTERED), merged ranges and
hidden rows (``merges``, ``rowMetadata``) in spreadsheets.get, 400 for writes outside
the grid, 403 for a sheet not shared with the caller, 404 for an unknown id and 429
RESOURCE_EXHAUSTED past a per-minute write quota. ``fields`` masks are not applied: the
answer is a superset of what was asked.
Every request is recorded (method, path, query, json, status, time) so tests can count them.
"""

from __future__ import annotations

import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from openpyxl.utils import column_index_from_string, get_column_letter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.fakes.threaded import ThreadedServer

from .token_endpoint import TokenEndpoint


@dataclass(frozen=True)
class Formula:
    """A cell a USER_ENTERED ``=...`` made; reads as Google shows an unknown function."""

    text: str


@dataclass
class FakeSheet:
    sheet_id: int
    title: str
    rows: int = 1000
    cols: int = 26
    cells: dict[tuple[int, int], Any] = field(default_factory=dict)
    hidden_by_user: set[int] = field(default_factory=set)
    """0-based rows a person hid (right-click, Hide row)."""
    hidden_by_filter: set[int] = field(default_factory=set)
    """0-based rows a filter hides."""
    merges: list[tuple[int, int, int, int]] = field(default_factory=list)
    """Merged ranges as GridRanges give them: start row, start column, end row, end column,
    0-based, ends exclusive. The value lives in the top-left cell only, as in Google's."""

    def fill(self, grid: list[list[Any]]) -> None:
        for r, row in enumerate(grid):
            for c, value in enumerate(row):
                if value not in (None, ""):
                    self.cells[r, c] = value

    def value(self, row: int, col: int) -> Any:
        return self.cells.get((row, col))


@dataclass
class FakeSpreadsheet:
    id: str
    title: str
    sheets: list[FakeSheet]
    named: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """name -> (sheetId, row, column) of a one-cell named range"""
    editors: set[str] | None = None
    """Service-account emails it is shared with; None: everyone with a token."""

    def sheet(self, title: str) -> FakeSheet:
        return next(s for s in self.sheets if s.title == title)


class ApiError(Exception):
    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.body = {"error": {"code": code, "message": message, "status": status}}
        self.code = code


def _quota_error(limit: int) -> ApiError:
    err = ApiError(429, "RESOURCE_EXHAUSTED", "Quota exceeded for quota metric 'Write requests' "
                   "and limit 'Write requests per minute per user' of service "
                   "'sheets.googleapis.com' for consumer 'project_number:000000000000'.")
    err.body["error"]["details"] = [{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "RATE_LIMIT_EXCEEDED",
        "domain": "googleapis.com",
        "metadata": {"quota_metric": "sheets.googleapis.com/write_requests",
                     "quota_limit": "WriteRequestsPerMinutePerUser",
                     "quota_limit_value": str(limit), "service": "sheets.googleapis.com"}}]
    return err


def _proto3(message: dict[str, Any]) -> dict[str, Any]:
    """A message as Google's JSON sends it: fields at their default (0, false) left out."""
    return {k: v for k, v in message.items() if v}


def _a1_title(title: str) -> str:
    if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", title) and not re.fullmatch(r"[A-Za-z]+\d+",
                                                                           title):
        return title
    return "'" + title.replace("'", "''") + "'"


class FakeSheetsAPI(ThreadedServer):
    """Use as a context manager or ``start()`` / ``stop()``; add spreadsheets with ``add``."""

    name = "fake Sheets API"

    def __init__(self, write_quota_per_minute: int = 60) -> None:
        self.write_quota = write_quota_per_minute
        self.spreadsheets: dict[str, FakeSpreadsheet] = {}
        self.tokens = TokenEndpoint()
        self.requests: list[dict[str, Any]] = []
        self.write_faults: list[int] = []
        """Statuses (429, 5xx) to answer the next write requests with, before the quota."""
        self._writes: deque[float] = deque()
        self._lock = threading.Lock()
        super().__init__(Starlette(routes=[
            Route("/token", self.tokens.handle, methods=["POST"]),
            Route("/v4/spreadsheets/{rest:path}", self._handle, methods=["GET", "POST", "PUT"]),
            Route("/v1/projects/-/serviceAccounts/{email}/allowedLocations", self._locations),
        ]))

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.root_url}/token"

    def locations_url(self, email: str) -> str:
        """Where tests point google-auth's lookup that would go to iamcredentials.googleapis.com."""
        return f"{self.root_url}/v1/projects/-/serviceAccounts/{email}/allowedLocations"

    def add(self, spreadsheet_id: str, grids: dict[str, list[list[Any]]],
            title: str = "Fake spreadsheet", **kwargs: Any) -> FakeSpreadsheet:
        sheets = [FakeSheet(i, name, rows=max(1000, len(grid) + 1)) for i, (name, grid)
                  in enumerate(grids.items())]
        for sheet, grid in zip(sheets, grids.values(), strict=True):
            sheet.fill(grid)
        book = FakeSpreadsheet(spreadsheet_id, title, sheets, **kwargs)
        self.spreadsheets[spreadsheet_id] = book
        return book

    def writes(self) -> list[dict[str, Any]]:
        return [r for r in self.requests if r["write"]]

    # ------------------------------------------------------------------ server

    # ------------------------------------------------------------------ dispatch

    async def _handle(self, request: Request) -> JSONResponse:
        rest = request.path_params["rest"]
        body = await request.json() if request.method != "GET" else None
        write = request.method != "GET"
        record = {"method": request.method, "path": request.url.path, "write": write,
                  "query": list(request.query_params.multi_items()), "json": body,
                  "status": None, "time": time.monotonic()}
        self.requests.append(record)
        try:
            book = self._authorize(request, rest.partition("/")[0].partition(":")[0])
            if write:
                self._admit_write()
            result = self._route(request, book, rest, body)
            record["status"] = 200
            return JSONResponse(result)
        except ApiError as err:
            record["status"] = err.code
            return JSONResponse(err.body, status_code=err.code)

    async def _locations(self, request: Request) -> JSONResponse:
        """IAM's regional access boundary lookup, which google-auth makes after a token."""
        self.requests.append({"method": "GET", "path": request.url.path, "write": False,
                              "query": [], "json": None, "status": 200, "time": time.monotonic()})
        return JSONResponse({"encodedLocations": "0x0", "locations": []})

    def _authorize(self, request: Request, spreadsheet_id: str) -> FakeSpreadsheet:
        auth = request.headers.get("authorization", "")
        email = self.tokens.tokens.get(auth.removeprefix("Bearer "))
        if email is None:
            raise ApiError(401, "UNAUTHENTICATED", "Request had invalid authentication "
                           "credentials. Expected OAuth 2 access token, login cookie or other "
                           "valid authentication credential.")
        book = self.spreadsheets.get(spreadsheet_id)
        if book is None:
            raise ApiError(404, "NOT_FOUND", "Requested entity was not found.")
        if book.editors is not None and email not in book.editors:
            raise ApiError(403, "PERMISSION_DENIED", "The caller does not have permission")
        return book

    def _admit_write(self) -> None:
        with self._lock:
            if self.write_faults:
                status = self.write_faults.pop(0)
                if status == 429:
                    raise _quota_error(self.write_quota)
                raise ApiError(status, "UNAVAILABLE", "The service is currently unavailable.")
            now = time.monotonic()
            while self._writes and self._writes[0] <= now - 60:
                self._writes.popleft()
            if len(self._writes) >= self.write_quota:
                raise _quota_error(self.write_quota)
            self._writes.append(now)

    def _route(self, request: Request, book: FakeSpreadsheet, rest: str, body: Any) -> Any:
        method, query = request.method, request.query_params
        key, _, sub = rest.partition("/")
        if sub == "" and method == "GET" and ":" not in key:
            return self._get(book, query.getlist("ranges"),
                             query.get("includeGridData") == "true"
                             or "data" in query.get("fields", ""))
        if sub == "" and method == "POST" and key.endswith(":batchUpdate"):
            return self._batch_update(book, body)
        if sub == "values:batchGet" and method == "GET":
            return {"spreadsheetId": book.id, "valueRanges": [
                self._read(book, a1, query.get("valueRenderOption", "FORMATTED_VALUE"))
                for a1 in query.getlist("ranges")]}
        if sub == "values:batchUpdate" and method == "POST":
            return self._write(book, body.get("data", []), body.get("valueInputOption"))
        if sub.startswith("values/") and method == "GET":
            return self._read(book, sub[7:], query.get("valueRenderOption", "FORMATTED_VALUE"))
        if sub.startswith("values/") and method == "PUT":
            data = [{**body, "range": sub[7:]}]
            return self._write(book, data, query.get("valueInputOption"))["responses"][0]
        raise ApiError(404, "NOT_FOUND", f"fake Sheets API: no route {method} {rest}")

    # ------------------------------------------------------------------ methods

    def _get(self, book: FakeSpreadsheet, ranges: list[str], grid_data: bool) -> Any:
        """spreadsheets.get: with ``ranges``, only the sheets they touch; with grid data (a
        ``fields`` mask naming ``data``, or includeGridData), one GridData per range, whose
        rowMetadata holds a DimensionProperties per row (false flags left out, as proto3
        JSON does)."""
        named = []
        for i, (name, (sheet_id, row, col)) in enumerate(book.named.items()):
            grid = {"sheetId": sheet_id, "startRowIndex": row, "endRowIndex": row + 1,
                    "startColumnIndex": col, "endColumnIndex": col + 1}
            named.append({"namedRangeId": f"nr{i}", "name": name,
                          "range": _proto3(grid)})
        parsed = [self._parse(book, a1) for a1 in ranges]
        sheets = []
        for i, s in enumerate(book.sheets):
            mine = [p for p in parsed if p[0] is s]
            if ranges and not mine:
                continue
            sheet: dict[str, Any] = {"properties": {
                "sheetId": s.sheet_id, "title": s.title, "index": i, "sheetType": "GRID",
                "gridProperties": {"rowCount": s.rows, "columnCount": s.cols}}}
            if s.merges:
                sheet["merges"] = [_proto3({"sheetId": s.sheet_id, "startRowIndex": r0,
                                            "startColumnIndex": c0, "endRowIndex": r1,
                                            "endColumnIndex": c1})
                                   for r0, c0, r1, c1 in s.merges]
            if grid_data:
                sheet["data"] = [_proto3({
                    "startRow": r0, "startColumn": c0,
                    "rowMetadata": [_proto3({"pixelSize": 21,
                                             "hiddenByUser": r in s.hidden_by_user,
                                             "hiddenByFilter": r in s.hidden_by_filter})
                                    for r in range(r0, min(r1, s.rows))]})
                    for _, r0, c0, r1, _ in mine or [(s, 0, 0, s.rows, s.cols)]]
            sheets.append(sheet)
        return {"spreadsheetId": book.id,
                "properties": {"title": book.title, "locale": "en_US", "timeZone": "Etc/GMT"},
                "sheets": sheets,
                "namedRanges": named,
                "spreadsheetUrl": f"https://docs.google.com/spreadsheets/d/{book.id}/edit"}

    def _batch_update(self, book: FakeSpreadsheet, body: Any) -> Any:
        replies: list[Any] = []
        for i, req in enumerate(body.get("requests", [])):
            append = req.get("appendDimension")
            sheet = next((s for s in book.sheets
                          if append and s.sheet_id == append.get("sheetId", 0)), None)
            if sheet is None or append.get("dimension") not in ("ROWS", "COLUMNS"):
                raise ApiError(400, "INVALID_ARGUMENT", f"Invalid requests[{i}]: the fake "
                               "supports appendDimension on an existing sheet only.")
            if append["dimension"] == "ROWS":
                sheet.rows += int(append["length"])
            else:
                sheet.cols += int(append["length"])
            replies.append({})
        return {"spreadsheetId": book.id, "replies": replies}

    def _parse(self, book: FakeSpreadsheet, a1: str) -> tuple[FakeSheet, int, int, int, int]:
        """A1 range -> sheet and [row0, row1) x [col0, col1), unclipped."""
        bad = ApiError(400, "INVALID_ARGUMENT", f"Unable to parse range: {a1}")
        quoted = re.fullmatch(r"'((?:[^']|'')+)'(?:!(.*))?", a1)
        if quoted:
            title, cells = quoted.group(1).replace("''", "'"), quoted.group(2) or ""
        elif "!" in a1:
            title, _, cells = a1.rpartition("!")
        elif any(s.title == a1 for s in book.sheets):
            title, cells = a1, ""
        elif a1 in book.named:
            sheet_id, row, col = book.named[a1]
            named = next(s for s in book.sheets if s.sheet_id == sheet_id)
            return named, row, col, row + 1, col + 1
        else:
            title, cells = book.sheets[0].title, a1
        sheet = next((s for s in book.sheets if s.title == title), None)
        if sheet is None:
            raise bad
        if cells == "":
            return sheet, 0, 0, sheet.rows, sheet.cols
        parts = [re.fullmatch(r"\$?([A-Z]*)\$?(\d*)", p) for p in cells.upper().split(":")]
        if len(parts) > 2 or any(p is None or p.group(0) == "" for p in parts):
            raise bad
        (c0, r0), *end = [(p.group(1), p.group(2)) for p in parts if p is not None]
        col0 = column_index_from_string(c0) - 1 if c0 else 0
        row0 = int(r0) - 1 if r0 else 0
        if not end:
            return sheet, row0, col0, row0 + 1, col0 + 1
        c1, r1 = end[0]
        col1 = column_index_from_string(c1) if c1 else sheet.cols
        row1 = int(r1) if r1 else sheet.rows
        return sheet, row0, col0, row1, col1

    def _read(self, book: FakeSpreadsheet, a1: str, render: str) -> Any:
        sheet, r0, c0, r1, c1 = self._parse(book, a1)
        r1, c1 = min(r1, sheet.rows), min(c1, sheet.cols)
        used = {(r, c): v for (r, c), v in sheet.cells.items() if r0 <= r < r1 and c0 <= c < c1}
        last_col: dict[int, int] = {}
        for r, c in used:
            last_col[r] = max(c, last_col.get(r, c))
        values = [[self._render(used.get((r, c)), render)
                   for c in range(c0, last_col.get(r, c0 - 1) + 1)]
                  for r in range(r0, max(last_col, default=r0 - 1) + 1)]
        result: dict[str, Any] = {"range": self._a1(sheet, r0, c0, r1, c1),
                                  "majorDimension": "ROWS"}
        if values:  # Google leaves out "values" for an empty range
            result["values"] = values
        return result

    @staticmethod
    def _render(value: Any, render: str) -> Any:
        if value is None:
            return ""
        if isinstance(value, Formula):
            return value.text if render == "FORMULA" else "#NAME?"
        if render == "FORMATTED_VALUE":
            if isinstance(value, bool):
                return "TRUE" if value else "FALSE"
            return f"{value:g}" if isinstance(value, float) else str(value)
        return value

    @staticmethod
    def _a1(sheet: FakeSheet, r0: int, c0: int, r1: int, c1: int) -> str:
        return (f"{_a1_title(sheet.title)}!{get_column_letter(c0 + 1)}{r0 + 1}:"
                f"{get_column_letter(c1)}{r1}")

    def _write(self, book: FakeSpreadsheet, data: list[Any], option: str | None) -> Any:
        if option not in ("RAW", "USER_ENTERED"):
            raise ApiError(400, "INVALID_ARGUMENT",
                           "'valueInputOption' is required but not specified")
        staged: list[tuple[FakeSheet, int, int, Any]] = []
        responses: list[dict[str, Any]] = []
        for vr in data:  # check everything first: a batchUpdate is all or nothing
            sheet, r0, c0, r1, c1 = self._parse(book, vr["range"])
            if r1 > sheet.rows or c1 > sheet.cols:
                raise ApiError(400, "INVALID_ARGUMENT", f"Range ({vr['range']}) exceeds grid "
                               f"limits. Max rows: {sheet.rows}, max columns: {sheet.cols}")
            rows = vr.get("values", [])
            for i, row in enumerate(rows):
                for j, value in enumerate(row):
                    if r0 + i >= r1 or c0 + j >= c1:
                        raise ApiError(400, "INVALID_ARGUMENT", f"Requested writing within "
                                       f"range [{vr['range']}], but tried writing to row "
                                       f"[{r0 + i + 1}] column [{c0 + j + 1}]")
                    if value is not None:
                        staged.append((sheet, r0 + i, c0 + j, self._input(value, option)))
            width = max((len(r) for r in rows), default=0)
            responses.append({"spreadsheetId": book.id, "updatedRows": len(rows),
                              "updatedColumns": width,
                              "updatedCells": sum(len(r) for r in rows),
                              "updatedRange": self._a1(sheet, r0, c0, r0 + len(rows),
                                                       c0 + max(width, 1))})
        for sheet, r, c, value in staged:
            if value == "":
                sheet.cells.pop((r, c), None)
            else:
                sheet.cells[r, c] = value
        return {"spreadsheetId": book.id,
                "totalUpdatedRows": sum(r["updatedRows"] for r in responses),
                "totalUpdatedColumns": max((r["updatedColumns"] for r in responses), default=0),
                "totalUpdatedCells": sum(r["updatedCells"] for r in responses),
                "totalUpdatedSheets": len({r["updatedRange"].rpartition("!")[0]
                                           for r in responses}),
                "responses": responses}

    @staticmethod
    def _input(value: Any, option: str) -> Any:
        if option == "RAW" or not isinstance(value, str):
            return value
        if value.startswith("="):
            return Formula(value)
        try:
            return float(value)
        except ValueError:
            return value
