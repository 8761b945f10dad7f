"""What an answer cell holds, and how a model's answer becomes one: text that stays data on
every output (never a formula), within the spreadsheet's cell limit."""

from __future__ import annotations

import re

CellValue = str | int | float | bool
"""What an answer cell holds: text, or a typed field of a structured answer."""

EXCEL_CELL_LIMIT = 32_767
"""Characters an Excel cell holds (UTF-16 code units)."""
GOOGLE_CELL_LIMIT = 50_000
"""Characters a Google Sheets cell holds."""

CUT_MARKER = " [... cut: {n} more characters]"
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
"""Characters no XML file can hold; lone surrogates (a JSON reply can carry one) cannot be
encoded as UTF-8 either."""


def fit_cell(text: str, limit: int) -> str:
    """Text a cell can hold: characters XML forbids removed, and answers over ``limit`` UTF-16
    code units (how Excel and Google Sheets count: an emoji is two) visibly cut, never inside
    a character."""
    text = _XML_ILLEGAL.sub("", text)
    if len(text) <= limit // 2 or _units(text) <= limit:  # a character is 1 or 2 units
        return text
    keep = limit - _units(CUT_MARKER.format(n=len(text)))
    data = text.encode("utf-16-le")[:2 * keep]
    if data and 0xD800 <= int.from_bytes(data[-2:], "little") <= 0xDBFF:
        data = data[:-2]  # the first half of a surrogate pair goes with its second
    kept = data.decode("utf-16-le")
    return kept + CUT_MARKER.format(n=len(text) - len(kept))


def _units(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


FORMULA_START = "=+-@"
"""How a formula (or Lotus-style ``@SUM``) starts when a spreadsheet reads text."""
_FORMULA_HEAD = re.compile(r"\s*[=+\-@]|[\t\r]")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def answer_text(text: str) -> str:
    """A model's answer as a cell holds it: surrounding whitespace removed, except leading
    whitespace before something formula-like (``\t=1+1``), which stripping would turn into a
    formula in a CSV file."""
    stripped = text.strip()
    if stripped[:1] and stripped[0] in FORMULA_START and not _NUMBER.fullmatch(stripped):
        return text.rstrip()
    return stripped


def escape_formula(text: str) -> str:
    """OWASP's rule against CSV injection (CWE-1236): text that a spreadsheet opening the file
    would run as a formula, because it starts with = + - @, a tab or a carriage return (also
    after leading spaces or line breaks), gets a leading ``'``. A plain number such as -3 is
    no formula and stays as it is."""
    if _FORMULA_HEAD.match(text) and not _NUMBER.fullmatch(text):
        return "'" + text
    return text
