"""What a request to ``promptbatch serve`` may hold, checked before anything runs.

Every route shares these checks, so a malformed request gets the same clear 400 whichever
route it reached, and no route forgets a limit.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from ..errors import BadRequest

MAX_ROWS = 5000
"""Rows per request: a chunk of a sheet, never a whole workbook."""
Scalar = str | int | float | bool | None
SAMPLING = {"temperature", "max_tokens", "system"}
"""What the ``options`` object of a request may set."""


def body_fields(body: Any, required: set[str], optional: set[str]) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    unknown = sorted(set(body) - required - optional)
    misplaced = [f"options.{u}" for u in unknown if u in SAMPLING and "options" in optional]
    if misplaced:
        raise BadRequest(f"Unknown field(s) {', '.join(unknown)}: sampling settings go inside "
                         f"the options object, as {', '.join(misplaced)}.")
    if unknown:
        raise BadRequest(f"Unknown field(s) {', '.join(unknown)}. The model and its server "
                         "are chosen where promptbatch serve runs, not per request.")
    missing = sorted(required - set(body))
    if missing:
        raise BadRequest(f"Missing field(s) {', '.join(missing)}.")
    return body


def text_field(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a string.")
    return value


def number_field(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise BadRequest(f"{name} must be a number from {low:g} to {high:g}.")
    return float(value)


def cell_list(value: Any, name: str) -> list[Scalar]:
    if not isinstance(value, list) or not all(
            v is None or isinstance(v, (str, int, float, bool)) for v in value):
        raise BadRequest(f"{name} must be a list of cell values (text, numbers, booleans).")
    return value


def row_grid(value: Any, name: str, max_rows: int = MAX_ROWS) -> list[list[Scalar]]:
    if not isinstance(value, list):
        raise BadRequest(f"{name} must be a list of rows.")
    if len(value) > max_rows:
        raise BadRequest(f"{name} has {len(value):,} rows; send at most {max_rows:,} per "
                         "request.", 413)
    return [cell_list(row, f"each row of {name}") for row in value]


def sampling_options(value: Any) -> dict[str, Any]:
    """Sampling options a sheet may set; each is part of the answer's cache key."""
    options = body_fields(value if value is not None else {}, set(), SAMPLING)
    out: dict[str, Any] = {}
    if options.get("temperature") is not None:
        out["temperature"] = number_field(options["temperature"], "options.temperature", 0, 2)
    if options.get("max_tokens") is not None:
        out["max_tokens"] = int(number_field(options["max_tokens"], "options.max_tokens", 1,
                                             100_000))
    if options.get("system") is not None:
        out["system"] = text_field(options["system"], "options.system")
    return out


async def bounded_body(request: Request, limit: int, too_large: str) -> bytes:
    """The body, refused with ``too_large`` (413) past ``limit`` bytes, whatever its
    Content-Length claims: it is read in pieces and never held beyond the limit."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadRequest(too_large, 413)
    data = bytearray()
    async for part in request.stream():
        data += part
        if len(data) > limit:
            raise BadRequest(too_large, 413)
    return bytes(data)
