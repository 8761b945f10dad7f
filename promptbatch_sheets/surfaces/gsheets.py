"""Google Sheets through gspread: the sheet is read in one values request, answers written in place.

Writes are ``values:batchUpdate`` with ``RAW`` input (an answer that starts with ``=`` stays
text), one request per block, sent by a background thread so a slow or rate-limited Google never
stalls the model calls. A write request starts at least ``PACE_SECONDS`` after the previous one
was answered (the first one after opening the sheet): under 30 a minute, Google allows 60.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any

from google.auth.exceptions import GoogleAuthError
from gspread import Client
from gspread.exceptions import APIError
from gspread.http_client import FileType, HTTPClient, ParamsType
from openpyxl.utils import get_column_letter
from requests import Response
from requests.exceptions import RequestException

from ..cells import GOOGLE_CELL_LIMIT, CellValue
from ..errors import WorkbookError
from ..table import Bounds, TemplateText, quote_sheet
from .base import (
    CONF_SHEET,
    TEMPLATE_NAME,
    Cell,
    Conf,
    SheetData,
    Surface,
    conf_settings,
    fill_merged,
)
from .gsheets_auth import Login, login

PACE_SECONDS = 2.0
"""Least time from a write request's answer to the next one: under 30 a minute (Google: 60)."""
API_URL_ENV = "PROMPTBATCH_SHEETS_API_URL"
GOOGLE_ROOT = "https://sheets.googleapis.com/"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
RETRIES = 7
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 64.0
TIMEOUT_S = 120.0
META_FIELDS = ("properties.title,namedRanges(name,range),"
               "sheets(properties(sheetId,title,index,gridProperties(rowCount,columnCount)),"
               "merges)")
HIDDEN_FIELDS = "sheets.data.rowMetadata(hiddenByUser,hiddenByFilter)"
"""A row is hidden by a person (right-click, Hide row) or by a filter (filter views aside)."""
# Numbers stay numbers (as the xlsx surface reads them, so both render the same prompt and share
# the cache); dates come as the user sees them rather than as serial numbers.
READ_PARAMS: dict[str, str] = {"valueRenderOption": "UNFORMATTED_VALUE",
                               "dateTimeRenderOption": "FORMATTED_STRING",
                               "majorDimension": "ROWS"}
_URL = re.compile(r"^https://docs\.google\.com/spreadsheets/d/([A-Za-z0-9_-]+)")
_GID = re.compile(r"[#?&]gid=(\d+)")


def parse_ref(ref: str) -> tuple[str, str | None, int | None]:
    """``gsheet:ID[/SHEET]`` or a sheet URL -> (spreadsheet id, sheet name, sheet gid)."""
    match = _URL.match(ref)
    if match:
        gid = _GID.search(ref)
        return match.group(1), None, int(gid.group(1)) if gid else None
    key, _, sheet = ref.removeprefix("gsheet:").partition("/")
    if not re.fullmatch(r"[A-Za-z0-9_-]+", key):
        raise WorkbookError(f"{ref!r} names no spreadsheet. Write gsheet:SPREADSHEET_ID or "
                            "gsheet:SPREADSHEET_ID/Sheet name, or paste the sheet's URL.")
    return key, sheet or None, None


class SheetsHTTPClient(HTTPClient):
    """gspread's client, pointed at ``PROMPTBATCH_SHEETS_API_URL`` (an emulator) when set, and
    retrying 429 and 5xx with exponential backoff and full jitter.

    gspread copies Google's URLs at import, so the prefix is rewritten here, per request; the
    rewrite leaves an already rewritten URL alone.
    """

    def __init__(self, auth: Any, session: Any = None) -> None:
        super().__init__(auth, session)
        self.root = os.environ.get(API_URL_ENV, GOOGLE_ROOT).rstrip("/") + "/"
        self.set_timeout(TIMEOUT_S)

    def request(self, method: str, endpoint: str, params: ParamsType | None = None,
                data: bytes | None = None, json: Mapping[str, Any] | None = None,
                files: FileType = None,
                headers: MutableMapping[str, str] | None = None) -> Response:
        if endpoint.startswith(GOOGLE_ROOT):
            endpoint = self.root + endpoint[len(GOOGLE_ROOT):]
        attempt = 0
        while True:
            try:
                return super().request(method, endpoint, params, data, json, files, headers)
            except APIError as err:
                if err.response.status_code not in RETRY_STATUSES or attempt == RETRIES:
                    raise
                time.sleep(_backoff(attempt, err.response.headers.get("retry-after")))
                attempt += 1


def _backoff(attempt: int, retry_after: str | None) -> float:
    """Google's advice for the Sheets API: 1, 2, 4... seconds plus up to one second at random,
    so that clients limited together do not retry together."""
    wait = min(BACKOFF_CAP_S, BACKOFF_BASE_S * (2.0 ** attempt + random.random()))
    if retry_after and retry_after.isdigit():
        wait = max(wait, float(retry_after))
    return wait


class GSheetSurface(Surface):
    """One sheet of a Google spreadsheet; credentials as ``gsheets_auth.login`` finds them."""

    cell_limit = GOOGLE_CELL_LIMIT

    def __init__(self, ref: str, sheet: str | None = None,
                 credentials: str | None = None) -> None:
        self.key, ref_sheet, self._gid = parse_ref(ref)
        self.sheet_name = sheet or ref_sheet
        self._login: Login = login(credentials)
        self._http = Client(self._login.credentials, http_client=SheetsHTTPClient).http_client
        self._title = ""
        self._sheet_id = 0
        self._columns = 0
        self._queue: list[Cell] = []
        self._ready_at = time.monotonic() + PACE_SECONDS
        self._wake = threading.Condition()
        self._closing = False
        self._error: Exception | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- reading

    def read(self) -> SheetData:
        meta = self._call(lambda: self._http.fetch_sheet_metadata(
            self.key, params={"includeGridData": "false", "fields": META_FIELDS}))
        sheets = [s["properties"] for s in meta.get("sheets", [])]
        props = self._pick_sheet(sheets)
        merges = next(s.get("merges", []) for s in meta["sheets"] if s["properties"] is props)
        self._title, self._sheet_id = props["title"], props.get("sheetId", 0)
        self._columns = props.get("gridProperties", {}).get("columnCount", 0)
        self.output = (f"https://docs.google.com/spreadsheets/d/{self.key}/edit"
                       f"#gid={self._sheet_id}")
        ranges = [quote_sheet(self._title)]
        conf = next((s["title"] for s in sheets if s["title"].lower() == CONF_SHEET), None)
        if conf is not None:
            ranges.append(f"{quote_sheet(conf)}!A:B")
        template_ref = self._template_ref(meta.get("namedRanges", []), sheets)
        if template_ref is not None:
            ranges.append(template_ref)
        got = self._call(lambda: self._http.values_batch_get(self.key, ranges, dict(READ_PARAMS)))
        values = [vr.get("values", []) for vr in got.get("valueRanges", [])]
        template = None
        if template_ref is not None:
            template = TemplateText(_first(values[-1]), f"{template_ref} (the name "
                                    f"{TEMPLATE_NAME})")
        found = conf_settings(values[1], conf) if conf is not None else Conf({}, {})
        grid: list[Sequence[Any]] = values[0]
        merged = tuple(_bounds(m) for m in merges)
        fill_merged(grid, merged)
        return SheetData(name=self._title, grid=grid, template=template,
                         settings=found.settings, setting_cells=found.cells, merged=merged)

    def hidden_rows(self, data: SheetData) -> frozenset[int]:
        """One metadata request for the rows read: hidden by a person or by a filter."""
        rows = f"{quote_sheet(self._title)}!A1:A{max(1, len(data.grid))}"
        meta = self._call(lambda: self._http.fetch_sheet_metadata(
            self.key, params={"ranges": rows, "fields": HIDDEN_FIELDS}))
        hidden: set[int] = set()
        for sheet in meta.get("sheets", []):
            for part in sheet.get("data", []):
                start = part.get("startRow", 0)  # proto3 JSON leaves out zeros
                hidden.update(start + i for i, row in enumerate(part.get("rowMetadata", []))
                              if row.get("hiddenByUser") or row.get("hiddenByFilter"))
        return frozenset(hidden)

    def _pick_sheet(self, sheets: list[dict[str, Any]]) -> dict[str, Any]:
        if self.sheet_name is not None:
            found = next((s for s in sheets if s["title"] == self.sheet_name), None)
        elif self._gid is not None:
            found = next((s for s in sheets if s.get("sheetId", 0) == self._gid), None)
        else:
            found = next((s for s in sorted(sheets, key=lambda s: s.get("index", 0))
                          if s["title"].lower() != CONF_SHEET), None)
        if found is None:
            wanted = (repr(self.sheet_name) if self.sheet_name is not None
                      else f"with gid {self._gid}" if self._gid is not None else "to run")
            raise WorkbookError(f"Spreadsheet {self.key} has no sheet {wanted}. Sheets: "
                                + ", ".join(repr(s["title"]) for s in sheets))
        return found

    @staticmethod
    def _template_ref(named: list[dict[str, Any]], sheets: list[dict[str, Any]]) -> str | None:
        """The top-left cell of the named range ``prompt_template``, in A1 notation."""
        grid = next((n.get("range", {}) for n in named if n.get("name") == TEMPLATE_NAME), None)
        if grid is None:
            return None
        # Google leaves out fields that are 0 (proto3 JSON): sheetId 0, row 0, column 0.
        title = next((s["title"] for s in sheets
                      if s.get("sheetId", 0) == grid.get("sheetId", 0)), None)
        if title is None:
            return None
        column = get_column_letter(grid.get("startColumnIndex", 0) + 1)
        return f"{quote_sheet(title)}!{column}{grid.get('startRowIndex', 0) + 1}"

    def cell_text(self, ref: str) -> str:
        if "!" not in ref:
            ref = f"{quote_sheet(self._title)}!{ref}"
        try:
            got = self._call(lambda: self._http.values_get(self.key, ref, dict(READ_PARAMS)))
        except WorkbookError as exc:
            raise WorkbookError(f"Cell {ref}: {exc} Write it like 'Sheet 1'!B2.") from None
        return _first(got.get("values", []))

    # ---------------------------------------------------------------- writing

    def write(self, cells: Sequence[Cell]) -> None:
        """Queue a block; the sender thread takes everything queued when its turn comes."""
        with self._wake:
            if self._error is not None:
                raise self._error
            self._queue.extend(cells)
            if self._thread is None:
                self._thread = threading.Thread(target=self._send_loop, daemon=True,
                                                name=f"gsheet-writer-{self.key}")
                self._thread.start()
            self._wake.notify()

    def close(self) -> None:
        """Wait until every queued answer is in the sheet (the pace still holds)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def _send_loop(self) -> None:
        try:
            while True:
                with self._wake:
                    while not self._queue and not self._closing:
                        self._wake.wait()
                    if not self._queue:
                        return
                time.sleep(max(0.0, self._ready_at - time.monotonic()))
                with self._wake:
                    cells, self._queue = self._queue, []
                widest = max(col for _row, col, _value in cells) + 1
                if widest > self._columns:
                    self._add_columns(widest - self._columns)
                    with self._wake:
                        self._queue[:0] = cells
                else:
                    self._send(cells)
                # counted from the answer, so retries after a 429 stay inside the pace too
                self._ready_at = time.monotonic() + PACE_SECONDS
        except Exception as exc:  # any failure, raised again by write() and close()
            with self._wake:
                self._error = exc

    def _add_columns(self, count: int) -> None:
        body = {"requests": [{"appendDimension": {"sheetId": self._sheet_id,
                                                  "dimension": "COLUMNS", "length": count}}]}
        self._call(lambda: self._http.batch_update(self.key, body))
        self._columns += count

    def _send(self, cells: Sequence[Cell]) -> None:
        latest = {(row, col): value for row, col, value in cells}
        data: list[dict[str, Any]] = []
        run: list[tuple[int, int, CellValue]] = []
        for row, col in sorted(latest, key=lambda rc: (rc[1], rc[0])):
            if run and (col != run[-1][1] or row != run[-1][0] + 1):
                data.append(self._value_range(run))
                run = []
            run.append((row, col, self.fit(latest[row, col])))
        data.append(self._value_range(run))
        body = {"valueInputOption": "RAW", "data": data, "includeValuesInResponse": False}
        self._call(lambda: self._http.values_batch_update(self.key, body))

    def _value_range(self, run: list[tuple[int, int, CellValue]]) -> dict[str, Any]:
        """Contiguous rows of one column as one ValueRange. Input is RAW: strings stay text
        (never formulas), numbers and booleans go as JSON numbers and booleans."""
        letter = get_column_letter(run[0][1] + 1)
        return {"range": f"{quote_sheet(self._title)}!{letter}{run[0][0] + 1}:"
                         f"{letter}{run[-1][0] + 1}",
                "majorDimension": "ROWS", "values": [[value] for _r, _c, value in run]}

    # ---------------------------------------------------------------- errors

    def _call(self, call: Callable[[], Any]) -> Any:
        """One API call; Google's and the network's failures become a message with the fix."""
        try:
            return call()
        except APIError as err:
            raise WorkbookError(self._explain(err)) from None
        except GoogleAuthError as exc:
            raise WorkbookError(f"Google did not accept the credentials from "
                                f"{self._login.source}: {exc}") from None
        except RequestException as exc:
            raise WorkbookError(f"Cannot reach the Google Sheets API: {exc}") from None

    def _explain(self, err: APIError) -> str:
        status = err.response.status_code
        message = str(err.error.get("message", ""))
        where = f"Spreadsheet {self.key}"
        if status == 404:
            return (f"{where} was not found: check the ID (the part of the URL between /d/ and "
                    "/edit).")
        if status == 403 and "scope" in message.lower():
            return (f"{where}: the credentials from {self._login.source} lack the spreadsheets "
                    f"scope ({message}). With gcloud, log in again with --scopes="
                    "https://www.googleapis.com/auth/spreadsheets,"
                    "https://www.googleapis.com/auth/cloud-platform.")
        if status == 403 and "permission" in message.lower():
            who = self._login.email or "the Google account you signed in with"
            return (f"{where} is not shared with {who}, or only as Viewer: open it in Google "
                    f"Sheets, click Share and add {who} as Editor.")
        if status == 429:
            return f"{where}: Google's quota is still exhausted after {RETRIES} retries."
        return f"{where}: Google answered {status}: {message}"


def _bounds(grid_range: dict[str, Any]) -> Bounds:
    """A GridRange (end indexes exclusive, zeros left out) as inclusive 0-based bounds."""
    return Bounds(grid_range.get("startRowIndex", 0), grid_range.get("startColumnIndex", 0),
                  grid_range.get("endRowIndex", 1) - 1, grid_range.get("endColumnIndex", 1) - 1)


def _first(values: list[list[Any]]) -> str:
    return str(values[0][0]) if values and values[0] else ""
