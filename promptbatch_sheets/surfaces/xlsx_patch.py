"""Write answers into an .xlsx/.xlsm by patching one worksheet's XML inside the zip.

openpyxl's load+save rebuilds the whole package and drops what it does not model (charts'
styles, pivots it cannot parse, form controls, rich data, threaded comments, ...). Here every zip
member keeps its content, name, order, date and compression method (zlib deflates it afresh),
except the target worksheet and an Excel Table that grows by the new column. Inside the worksheet
only the ``<row>`` elements that receive answers are rewritten; every other byte stays as the
producing program wrote it. The XML is scanned, never re-serialized: an ElementTree round trip
would rename namespace prefixes and be slow on 50,000-row sheets.
"""

from __future__ import annotations

import bisect
import itertools
import math
import posixpath
import re
import shutil
import zipfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import IO
from urllib.parse import unquote
from xml.etree import ElementTree as ET

from openpyxl.utils.cell import column_index_from_string, get_column_letter, range_boundaries

from ..cells import EXCEL_CELL_LIMIT, CellValue, fit_cell
from ..errors import WorkbookError
from .base import Cell

MAX_UNPACKED = 2**30
"""Bytes a workbook may inflate to, all parts together, as its zip declares them: real
workbooks inflate to a few hundred MB at most (the corpus's largest: 60 MB)."""
MAX_RATIO, RATIO_FROM = 250, 10 * 2**20
"""A part over 10 MB may inflate at most 250 times its packed size (real sheets: up to 121);
a zip bomb inflates ~1,000 times."""
MAX_ROWS, MAX_COLS = 1_048_576, 16_384
OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
"""Encrypted (password-to-open) workbooks are OLE compound files, not zips."""

Answers = dict[tuple[int, int], CellValue]
"""(row, column) 0-based -> the value as it will land in the sheet."""

_ATTR = rb"""\s+[^\s=/>]+\s*=\s*(?:"[^"]*"|'[^']*')"""
_ATTRS = re.compile(rb"""([^\s=/>]+)\s*=\s*("[^"]*"|'[^']*')""")
_SHEET_DATA = re.compile(rb"<((?:[\w.-]+:)?)sheetData(?:" + _ATTR + rb")*\s*(/?)>")
_R_ATTR = re.compile(rb"""\sr\s*=\s*["']([^"']*)["']""")
_ENCODING = re.compile(rb"""^(?:\xef\xbb\xbf)?\s*<\?xml[^>]*encoding\s*=\s*["']([^"']+)""")
_EXCEL_ESCAPE = re.compile(r"_(x[0-9A-Fa-f]{4}_)")
_DROPPED_CELL_ATTRS = {b"t", b"cm", b"vm"}
"""Attributes that describe the old value (type, dynamic-array and rich-value metadata)."""


@dataclass(frozen=True)
class SheetParts:
    """Where one worksheet and its Excel Tables live in the zip."""

    sheet: str
    tables: tuple[str, ...]


@dataclass(frozen=True)
class _Element:
    """One element found by scanning: its start tag and where it ends."""

    start: int
    tag_end: int
    end: int
    closed: bool
    """Self-closing (``<row .../>``): no content, no end tag."""
    index: int
    """Row number (1-based) or column number (1-based)."""


def check_package(path: Path) -> None:
    """Refuse files that are not zip workbooks before any reader gives a vaguer message."""
    if path.suffix.lower() == ".xlsb":
        raise WorkbookError(f"{path} is a binary Excel workbook (.xlsb), which promptbatch "
                            "cannot write safely. Save it as .xlsx and run that.")
    with path.open("rb") as fh:
        head = fh.read(len(OLE_MAGIC))
    if head == OLE_MAGIC:
        raise WorkbookError(f"{path} is encrypted with a password (or is an old .xls file "
                            "renamed), so promptbatch cannot write into it. Remove the password "
                            "in Excel (File > Info > Protect Workbook > Encrypt with Password) "
                            "and save it as .xlsx.")
    if not zipfile.is_zipfile(path):
        raise WorkbookError(f"{path} is not a readable .xlsx workbook (the zip is damaged or "
                            "it is another kind of file). Open it in Excel and save it as .xlsx.")
    with _damage_reported(path), zipfile.ZipFile(path) as zf:
        _check_sizes(zf, path)


def _check_sizes(zf: zipfile.ZipFile, path: Path) -> None:
    """Refuse a zip bomb from what the zip declares, before anything is inflated; a part that
    inflates past its declared size is cut there by zipfile, which then fails its CRC check."""
    total = sum(info.file_size for info in zf.infolist())
    if total > MAX_UNPACKED:
        raise WorkbookError(f"{path} would inflate to {total / 2**20:,.0f} MB; promptbatch "
                            f"opens workbooks of up to {MAX_UNPACKED // 2**20:,} MB unpacked. "
                            "If it is really that big, save its table as .csv and run that.")
    for info in zf.infolist():
        if info.file_size > RATIO_FROM and info.file_size > MAX_RATIO * info.compress_size:
            raise WorkbookError(f"{path} is not a plausible workbook: its part "
                                f"{info.filename} inflates {info.file_size // 2**20:,} MB from "
                                f"{info.compress_size // 2**10:,} KB (a zip bomb?). Open it "
                                "in Excel and save it again if you trust it.")


def check_writable(path: Path, sheet: str) -> None:
    """Everything ``patch_workbook`` would refuse for, found before any answer is bought."""
    check_package(path)
    with _damage_reported(path), zipfile.ZipFile(path) as zf, \
            zf.open(locate_parts(zf, path, sheet).sheet) as xml:
        for _ in _checked(row_pieces(xml), path, sheet):
            pass


def patch_workbook(source: Path, target: Path, sheet: str, cells: Iterable[Cell]) -> None:
    """Copy ``source`` to ``target`` with ``cells`` written into ``sheet``: strings as text,
    numbers as numbers, booleans as booleans.

    Later cells for the same position win. Raises ``WorkbookError``, leaving no ``target``,
    when the workbook cannot be patched safely. The worksheet is read and written in pieces,
    never held whole, so a refusal can come after ``target`` was begun: it is removed then.
    """
    answers = _answers(cells)
    check_package(source)
    try:
        with _damage_reported(source), zipfile.ZipFile(source) as zf:
            parts = locate_parts(zf, source, sheet)
            changed: dict[str, bytes | Iterator[bytes]] = dict(
                _grow_tables(zf, parts.tables, answers))
            with zf.open(parts.sheet) as xml:
                changed[parts.sheet] = _patched(_checked(row_pieces(xml), source, sheet),
                                                answers, sheet)
                _copy_zip(zf, target, changed)
    except WorkbookError:
        target.unlink(missing_ok=True)
        raise


@contextmanager
def _damage_reported(path: Path) -> Iterator[None]:
    """A damaged zip member or malformed XML becomes a message instead of a traceback."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, ET.ParseError, ValueError) as exc:
        raise WorkbookError(f"{path} is damaged and cannot be written ({exc}). Open it in "
                            "Excel and save it again.") from None


def _answers(cells: Iterable[Cell]) -> Answers:
    answers: Answers = {}
    for row, col, value in cells:
        if not (0 <= row < MAX_ROWS and 0 <= col < MAX_COLS):
            raise WorkbookError(f"Cell ({row + 1}, {col + 1}) lies outside an Excel sheet.")
        answers[row, col] = fit_cell(value, EXCEL_CELL_LIMIT) if isinstance(value, str) else value
    return answers


# --- finding the parts -------------------------------------------------------------------------


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _member(zf: zipfile.ZipFile, part: str) -> str | None:
    """The zip member for a part name: OPC part names are case-insensitive."""
    wanted = part.lower()
    return next((n for n in zf.namelist() if n.lower() == wanted), None)


def _relationships(zf: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    """Relationship id -> (type, member name) for the internal targets of ``part``."""
    folder, name = posixpath.split(part)
    rels = _member(zf, posixpath.join(folder, "_rels", name + ".rels"))
    if rels is None:
        return {}
    found: dict[str, tuple[str, str]] = {}
    for rel in ET.fromstring(zf.read(rels)):
        target = unquote(rel.get("Target", ""))
        if _local(rel.tag) != "Relationship" or rel.get("TargetMode") == "External":
            continue
        path = target[1:] if target.startswith("/") else posixpath.join(folder, target)
        member = _member(zf, posixpath.normpath(path))
        if member is not None:
            found[rel.get("Id", "")] = (rel.get("Type", ""), member)
    return found


def locate_parts(zf: zipfile.ZipFile, path: Path, sheet: str) -> SheetParts:
    """workbook.xml ``<sheet name r:id>`` -> workbook rels -> the worksheet and its tables."""
    book = next((m for kind, m in _relationships(zf, "").values()
                 if kind.endswith("/officeDocument")), None)
    if book is None:
        raise WorkbookError(f"{path} has no workbook part; it is not an Excel workbook.")
    if book.lower().endswith(".bin"):
        raise WorkbookError(f"{path} is a binary Excel workbook (.xlsb inside), which "
                            "promptbatch cannot write safely. Save it as .xlsx and run that.")
    rels = _relationships(zf, book)
    names = []
    for element in ET.fromstring(zf.read(book)).iter():
        if _local(element.tag) != "sheet":
            continue
        names.append(element.get("name", ""))
        if element.get("name") != sheet:
            continue
        rid = next((v for k, v in element.attrib.items() if _local(k) == "id"), "")
        kind, member = rels.get(rid, ("", ""))
        if not kind.endswith("/worksheet"):
            raise WorkbookError(f"Sheet {sheet!r} of {path} is not a worksheet (a chart, macro "
                                "or dialog sheet); choose a worksheet with --sheet.")
        tables = tuple(m for k, m in _relationships(zf, member).values() if k.endswith("/table"))
        return SheetParts(member, tables)
    raise WorkbookError(f"{path} has no sheet {sheet!r}. Sheets: "
                        + ", ".join(repr(n) for n in names))


_ROW_END = re.compile(rb"</(?:[\w.-]+:)?row>")


def row_pieces(stream: IO[bytes], size: int = 1 << 20) -> Iterator[bytes]:
    """A worksheet's XML in pieces of about ``size`` bytes, each ending after a row's end tag,
    so that no cell (and no tag) is split between two: a sheet need not be read whole."""
    rest = b""
    while chunk := stream.read(size):
        rest += chunk
        end = max((m.end() for m in _ROW_END.finditer(rest, max(len(rest) - len(chunk) - 16,
                                                                  0))), default=0)
        if end:
            yield rest[:end]
            rest = rest[end:]
    yield rest


def _checked(pieces: Iterable[bytes], path: Path, sheet: str) -> Iterator[bytes]:
    """``pieces`` (as ``row_pieces`` cuts them: the sheet's head is in the first), refused if
    the sheet is protected or holds XML this scanner cannot patch byte-for-byte."""
    protection: re.Pattern[bytes] | None = None
    for piece in pieces:
        if protection is None:
            protection = _check_head(piece, path, sheet)
        found = protection.search(piece)
        if found and _attrs(found.group(0)).get(b"sheet") in (b"1", b"true"):
            raise WorkbookError(f"Sheet {sheet!r} of {path} is protected. Unprotect it in "
                                "Excel (Review > Unprotect Sheet), save, and run again.")
        if b"<!--" in piece or b"<![CDATA[" in piece:
            raise WorkbookError(f"Sheet {sheet!r} of {path} holds XML comments or CDATA, "
                                "which promptbatch cannot patch safely; open it in Excel and "
                                "save again.")
        yield piece


def _check_head(xml: bytes, path: Path, sheet: str) -> re.Pattern[bytes]:
    """The sheet is UTF-8 and has cell data; returns how its protection tag is spelled."""
    encoding = _ENCODING.match(xml)
    if xml.startswith((b"\xff\xfe", b"\xfe\xff")) or (
            encoding and encoding.group(1).lower() not in (b"utf-8", b"utf8")):
        raise WorkbookError(f"Sheet {sheet!r} of {path} is not stored as UTF-8; open the "
                            "workbook in Excel and save it again.")
    data = _SHEET_DATA.search(xml)
    if data is None:
        raise WorkbookError(f"Sheet {sheet!r} of {path} has no cell data part; open the "
                            "workbook in Excel and save it again.")
    return _tag(data.group(1), b"sheetProtection")


# --- scanning XML --------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def _tag(prefix: bytes, name: bytes) -> re.Pattern[bytes]:
    """A start tag ``<prefix:name ...>`` or ``<prefix:name .../>``; group 1 is the slash."""
    return re.compile(b"<" + re.escape(prefix + name) + b"(?:" + _ATTR + rb")*\s*(/?)>")


def _attrs(tag: bytes) -> dict[bytes, bytes]:
    """Attribute name -> raw value (entities left as written: the ones read here have none)."""
    return {name: value[1:-1] for name, value in _ATTRS.findall(tag)}


def _set_attr(tag: bytes, name: bytes, value: str) -> bytes:
    """``tag`` with attribute ``name`` set, every other byte of it kept."""
    new = name + b'="' + _escape_attr(value) + b'"'
    found = re.search(rb"(?<=\s)" + re.escape(name) + rb"""\s*=\s*(?:"[^"]*"|'[^']*')""", tag)
    if found:
        return tag[:found.start()] + new + tag[found.end():]
    cut = len(tag) - (2 if tag.endswith(b"/>") else 1)
    return tag[:cut].rstrip() + b" " + new + tag[cut:]


def _elements(xml: bytes, prefix: bytes, name: bytes, start: int, stop: int,
              ends: bool, previous: int = 0) -> Iterator[_Element]:
    """The ``name`` elements in ``xml[start:stop]``, none nested in another.

    ``index`` comes from the ``r`` attribute (a row number or a cell reference) or, where a
    producer left ``r`` out, is one more than the previous element's (``previous`` before the
    first). ``end`` is only searched for when ``ends`` is true: indexing 50,000 rows needs the
    start tags only.
    """
    close = b"</" + prefix + name + b">"
    for found in _tag(prefix, name).finditer(xml, start, stop):
        r = _R_ATTR.search(found.group(0))
        previous = _index(r.group(1)) if r else previous + 1
        closed = found.group(1) == b"/"
        end = found.end() if closed or not ends else xml.index(close, found.end()) + len(close)
        yield _Element(found.start(), found.end(), end, closed, previous)


def _index(ref: bytes) -> int:
    """``b"12"`` -> 12 (a row), ``b"AB12"`` -> 28 (a cell's column)."""
    letters = ref.rstrip(b"0123456789")
    return column_index_from_string(letters.decode()) if letters else int(ref)


def _apply(xml: bytes, edits: list[tuple[int, int, bytes]]) -> bytes:
    """Replace each ``xml[start:end]``; edits at one place keep their given order. The kept
    parts are views, not copies: a big sheet is held twice at most, not three times."""
    view = memoryview(xml)
    pieces: list[bytes | memoryview] = []
    pos = 0
    for start, end, text in sorted(edits, key=lambda e: e[0]):
        pieces += [view[pos:start], text]
        pos = end
    pieces.append(view[pos:])
    return b"".join(pieces)


# --- the worksheet -----------------------------------------------------------------------------


def patch_sheet_xml(xml: bytes, answers: Mapping[tuple[int, int], CellValue],
                    sheet: str = "") -> bytes:
    """The worksheet part with ``answers`` written in; only touched rows change."""
    data = _SHEET_DATA.search(xml)
    if data is None:
        raise WorkbookError(f"Sheet {sheet!r} has no cell data part.")
    if not answers:
        return xml
    prefix = data.group(1)
    by_row: dict[int, dict[int, CellValue]] = {}
    for (row, col), value in sorted(answers.items()):
        by_row.setdefault(row + 1, {})[col + 1] = value
    if data.group(2):
        body = b"".join(_new_row(prefix, number, cells) for number, cells in by_row.items())
        rows = (_tag_open(data.group(0)) + body + b"</" + prefix + b"sheetData>")
        edits = [(data.start(), data.end(), rows)]
    else:
        stop = xml.index(b"</" + prefix + b"sheetData>", data.end())
        found = list(_elements(xml, prefix, b"row", data.end(), stop, ends=False))
        edits = _row_edits(xml, prefix, found, stop, by_row, sheet)
    edits += _dimension_edit(xml[:data.start()], prefix, answers)
    return _apply(xml, edits)


def _patched(pieces: Iterator[bytes], answers: Mapping[tuple[int, int], CellValue],
             sheet: str) -> Iterator[bytes]:
    """``patch_sheet_xml`` over the pieces ``row_pieces`` cuts, piece by piece: each piece's
    answers are the rows up to its last one (the last piece takes the rest, before
    ``</sheetData>``), so a big sheet is never held whole, in or out."""
    first = next(pieces)
    data = _SHEET_DATA.search(first)
    if data is None or data.group(2) or not answers:  # no rows: the sheet is one piece
        yield patch_sheet_xml(b"".join([first, *pieces]), answers, sheet)
        return
    prefix, end_tag = data.group(1), b"</" + data.group(1) + b"sheetData>"
    by_row: dict[int, dict[int, CellValue]] = {}
    for (row, col), value in sorted(answers.items()):
        by_row.setdefault(row + 1, {})[col + 1] = value
    numbers, taken, previous = list(by_row), 0, 0
    start, edits = data.end(), _dimension_edit(first[:data.start()], prefix, answers)
    for piece in itertools.chain([first], pieces):
        stop = piece.find(end_tag, start)
        found = list(_elements(piece, prefix, b"row", start, len(piece) if stop < 0 else stop,
                               ends=False, previous=previous))
        previous = found[-1].index if found else previous
        upto = len(numbers) if stop >= 0 else bisect.bisect(numbers, previous)
        mine = {n: by_row[n] for n in numbers[taken:upto]}
        taken = upto
        yield _apply(piece, edits + _row_edits(piece, prefix, found, len(piece) if stop < 0
                                               else stop, mine, sheet))
        start, edits = 0, []


def _tag_open(tag: bytes) -> bytes:
    """``<x .../>`` -> ``<x ...>``."""
    return re.sub(rb"\s*/>$", b">", tag)


def _row_edits(xml: bytes, prefix: bytes, found: list[_Element], stop: int,
               by_row: dict[int, dict[int, CellValue]], sheet: str) -> list[tuple[int, int, bytes]]:
    """Edits writing ``by_row`` into the rows ``found`` in ``xml``; a row not there is
    inserted before the next one, or at ``stop``."""
    rows = {e.index: e for e in found}
    ordered = sorted(rows)
    starts = [rows[n].start for n in ordered]
    edits = []
    for number, cells in by_row.items():
        row = rows.get(number)
        if row is None:
            later = bisect.bisect(ordered, number)
            after = starts[later] if later < len(starts) else stop
            edits.append((after, after, _new_row(prefix, number, cells)))
            continue
        close = b"</" + prefix + b"row>"
        end = row.tag_end if row.closed else xml.index(close, row.tag_end) + len(close)
        edits.append((row.start, end, _patch_row(xml[row.start:end], row, prefix, cells,
                                                 sheet)))
    return edits


def _new_row(prefix: bytes, number: int, cells: dict[int, CellValue]) -> bytes:
    body = b"".join(_cell(prefix, [b'r="%s%d"' % (_letters(c), number)], value)
                    for c, value in cells.items())
    return b'<%srow r="%d">%s</%srow>' % (prefix, number, body, prefix)


def _letters(col: int) -> bytes:
    letters: str = get_column_letter(col)
    return letters.encode()


def _patch_row(xml: bytes, row: _Element, prefix: bytes, cells: dict[int, CellValue],
               sheet: str) -> bytes:
    """One ``<row>`` element (``xml`` is exactly it) with ``cells`` replaced or inserted."""
    tag_len = row.tag_end - row.start
    tag, close = xml[:tag_len], b"</" + prefix + b"row>"
    body = b"" if row.closed else xml[tag_len:len(xml) - len(close)]
    existing = {e.index: e for e in _elements(body, prefix, b"c", 0, len(body), ends=True)}
    tail = max((e.end for e in existing.values()), default=0)
    edits = []
    for col, value in cells.items():
        old = existing.get(col)
        if old is None:
            at = min((e.start for e in existing.values() if e.index > col), default=tail)
            ref = b'r="%s%d"' % (_letters(col), row.index)
            edits.append((at, at, _cell(prefix, [ref], value)))
            continue
        _refuse_shared_formula(body[old.start:old.end], prefix, row.index, col, cells, sheet)
        kept = [raw for name, raw in _raw_attrs(body[old.start:old.tag_end])
                if name not in _DROPPED_CELL_ATTRS]
        edits.append((old.start, old.end, _cell(prefix, kept, value)))
    return _spans(_tag_open(tag), cells) + _apply(body, edits) + close


def _raw_attrs(tag: bytes) -> list[tuple[bytes, bytes]]:
    """(name, the attribute exactly as written) for every attribute of a start tag."""
    return [(m.group(1), m.group(0)) for m in _ATTRS.finditer(tag)]


def _refuse_shared_formula(cell: bytes, prefix: bytes, row: int, col: int,
                           cells: dict[int, CellValue], sheet: str) -> None:
    """Overwriting the master of a shared or array formula would break the cells it feeds."""
    formula = _tag(prefix, b"f").search(cell)
    ref = _attrs(formula.group(0)).get(b"ref") if formula else None
    if not ref:
        return
    left, top, right, bottom = range_boundaries(ref.decode())
    if top == bottom == row and left == right == col:
        return
    raise WorkbookError(
        f"Cell {get_column_letter(col)}{row} of sheet {sheet!r} holds a formula shared with "
        f"{ref.decode()}; writing an answer there would break those cells. Clear the output "
        "column or choose another one.")


def _spans(tag: bytes, cells: dict[int, CellValue]) -> bytes:
    """Widen a row's optional ``spans`` hint (``"1:3"``) so it covers the new cells."""
    spans = _attrs(tag).get(b"spans")
    if spans is None:
        return tag
    ranges = [r.split(b":") for r in spans.split()]
    try:
        first, last = int(ranges[0][0]), int(ranges[-1][-1])
    except (ValueError, IndexError):
        return tag
    low, high = min(first, *cells), max(last, *cells)
    if (low, high) == (first, last):
        return tag
    ranges[0][0], ranges[-1][-1] = b"%d" % low, b"%d" % high
    return _set_attr(tag, b"spans", " ".join(b":".join(r).decode() for r in ranges))


def _dimension_edit(head: bytes, prefix: bytes,
                    answers: Mapping[tuple[int, int], CellValue]) -> list[tuple[int, int, bytes]]:
    """Grow ``<dimension ref>`` (the used range) over the written cells."""
    found = _tag(prefix, b"dimension").search(head)
    ref = _attrs(found.group(0)).get(b"ref") if found else None
    if found is None or ref is None:
        return []
    try:
        left, top, right, bottom = range_boundaries(ref.decode())
    except (ValueError, TypeError):
        return []
    rows = [r + 1 for r, _ in answers]
    cols = [c + 1 for _, c in answers]
    grown = (min(left, *cols), min(top, *rows), max(right, *cols), max(bottom, *rows))
    if grown == (left, top, right, bottom):
        return []
    new = f"{get_column_letter(grown[0])}{grown[1]}:{get_column_letter(grown[2])}{grown[3]}"
    return [(found.start(), found.end(), _set_attr(found.group(0), b"ref", new))]


def _cell(prefix: bytes, attrs: list[bytes], value: CellValue) -> bytes:
    """A string as an inline-string cell (never a formula, and shared strings need not
    change); a boolean as ``t="b"`` with 1 or 0; a number as a plain ``<v>``."""
    p, head = prefix, b"<" + prefix + b"c " + b" ".join(attrs)
    if isinstance(value, bool):
        return head + b' t="b"><' + p + b"v>%d</" % value + p + b"v></" + p + b"c>"
    if isinstance(value, (int, float)):
        return head + b"><" + p + b"v>" + _number(value) + b"</" + p + b"v></" + p + b"c>"
    return (head + b' t="inlineStr"><' + p + b"is><" + p + b't xml:space="preserve">'
            + _escape_text(value) + b"</" + p + b"t></" + p + b"is></" + p + b"c>")


def _number(value: int | float) -> bytes:
    """An xsd:double as Excel writes it: ``3``, ``3.5``, ``1E+20``; no NaN or infinity,
    which a cell cannot hold (JSON replies never carry them)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise WorkbookError(f"{value} cannot be stored in an Excel cell.")
    text = repr(value) if isinstance(value, float) else str(value)
    return text.upper().removesuffix(".0").encode()


def _escape_text(text: str) -> bytes:
    """XML-escape, keep carriage returns, and keep ``_x0041_`` literal (Excel decodes it)."""
    text = _EXCEL_ESCAPE.sub(r"_x005F_\1", text)
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("\r", "&#13;").encode("utf-8")


def _escape_attr(value: str) -> bytes:
    escaped = _escape_text(value).replace(b'"', b"&quot;")
    return escaped.replace(b"\n", b"&#10;").replace(b"\t", b"&#9;")


# --- Excel Tables --------------------------------------------------------------------------------


def _grow_tables(zf: zipfile.ZipFile, tables: Iterable[str], answers: Answers) -> dict[str, bytes]:
    """Table parts that take new columns: the headers written right of a table's header row
    (one answers column, or one per field of a structured answer).

    A header that repeats one of the table's column names gets a number appended, in the
    table and in the cell alike, because Excel requires unique column names.
    """
    changed = {}
    for part in tables:
        grown = _grow_table(zf.read(part), answers)
        if grown is not None:
            changed[part] = grown
    return changed


def _grow_table(xml: bytes, answers: Answers) -> bytes | None:
    root = re.search(rb"<((?:[\w.-]+:)?)table(?:" + _ATTR + rb")*\s*>", xml)
    if root is None:
        return None
    prefix, attrs = root.group(1), _attrs(root.group(0))
    if b"ref" not in attrs or attrs.get(b"headerRowCount") == b"0":
        return None
    left, top, right, bottom = range_boundaries(attrs[b"ref"].decode())
    headers: list[str] = []
    while isinstance(header := answers.get((top - 1, right + len(headers))), str):
        headers.append(header)
    if not headers:
        return None
    columns = list(_tag(prefix, b"tableColumn").finditer(xml))
    names = {_attrs(c.group(0)).get(b"name", b"").decode().lower() for c in columns}
    next_id = max((int(_attrs(c.group(0)).get(b"id", b"0")) for c in columns), default=0) + 1
    new_columns = b""
    for i, header in enumerate(headers):
        name, n = header, 1
        while name.lower() in names:
            n += 1
            name = f"{header}{n}"
        names.add(name.lower())
        answers[top - 1, right + i] = name
        new_columns += b'<%stableColumn id="%d" name="%s"/>' % (prefix, next_id + i,
                                                               _escape_attr(name))
    end = xml.index(b"</" + prefix + b"tableColumns>")
    edits = [(end, end, new_columns), _widen(root, b"ref", xml, len(headers)),
             _count(xml, prefix, len(columns) + len(headers))]
    auto = _tag(prefix, b"autoFilter").search(xml)
    if auto is not None:
        edits.append(_widen(auto, b"ref", xml, len(headers)))
    return _apply(xml, edits)


def _widen(tag: re.Match[bytes], name: bytes, xml: bytes, by: int) -> tuple[int, int, bytes]:
    """An edit moving the right edge of the range in attribute ``name`` ``by`` columns on."""
    left, top, right, bottom = range_boundaries(_attrs(tag.group(0))[name].decode())
    ref = f"{get_column_letter(left)}{top}:{get_column_letter(right + by)}{bottom}"
    return tag.start(), tag.end(), _set_attr(xml[tag.start():tag.end()], name, ref)


def _count(xml: bytes, prefix: bytes, count: int) -> tuple[int, int, bytes]:
    tag = _tag(prefix, b"tableColumns").search(xml)
    if tag is None:
        raise WorkbookError("An Excel Table in the workbook has no column list.")
    return tag.start(), tag.end(), _set_attr(tag.group(0), b"count", str(count))


# --- the zip -------------------------------------------------------------------------------------


def _copy_zip(zf: zipfile.ZipFile, target: Path,
              changed: Mapping[str, bytes | Iterator[bytes]]) -> None:
    """Every member in its order, with its name, date, attributes and compression method; a
    changed one given as pieces is written piece by piece."""
    with zipfile.ZipFile(target, "w", allowZip64=True) as out:
        out.comment = zf.comment
        for info in zf.infolist():
            copy = zipfile.ZipInfo(info.filename, info.date_time)
            copy.compress_type = info.compress_type
            copy.external_attr, copy.create_system = info.external_attr, info.create_system
            copy.comment = info.comment
            new = changed.get(info.filename)
            if isinstance(new, bytes):
                out.writestr(copy, new)
                continue
            if new is not None:
                with out.open(copy, "w") as dst:
                    for piece in new:
                        dst.write(piece)
                continue
            copy.file_size = info.file_size
            with zf.open(info) as src, out.open(copy, "w") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
