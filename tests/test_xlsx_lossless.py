"""The lossless .xlsx writer: answers land as text, every other byte of the package stays.

The corpus (/work/shared/corpus/xlsx, see SOURCES.md) holds 40 real workbooks from Excel,
LibreOffice, Google Sheets, Numbers, gnumeric and libraries; each is patched and compared part by
part and cell by cell with its original.
"""

from __future__ import annotations

import posixpath
import re
import time
import zipfile
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import openpyxl
import pytest
from openpyxl.utils import get_column_letter
from openpyxl.utils.cell import column_index_from_string
from openpyxl.worksheet.table import Table

from promptbatch_sheets.errors import WorkbookError
from promptbatch_sheets.surfaces.xlsx import XlsxSurface
from promptbatch_sheets.surfaces.xlsx_patch import OLE_MAGIC, check_writable, patch_workbook

CORPUS = Path("/work/shared/corpus/xlsx")
SAMPLES = Path(__file__).resolve().parent.parent / "sample_workbooks"
CORPUS_FILES = sorted(CORPUS.glob("*.xls[xm]"))
NOT_OPENPYXL = {  # SOURCES.md: openpyxl 3.1.5 cannot load (or sees no sheets in) these
    "calamine__pivots.xlsx", "sheetjs__sheet_visibility_strict.xlsx",
    "sheetjs__xlsx-stream-d-date-cell.xlsx",
}
FULL_LOAD_BYTES = 300_000
"""openpyxl needs minutes for a full load of the largest files; those load read-only."""
ANSWERS = [
    "=SUM(A1:A9) looks like a formula\nsecond line: 日本語の回答\x07 & <b>",
    "+1 555 0100",
    "line one\r\nline two\n\nline four",
    "日本語の回答です。",
    "bell\x07 gone, _x0041_ stays literal",
]


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _rels(zf: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
    folder, name = posixpath.split(part)
    path = posixpath.join(folder, "_rels", name + ".rels")
    if path not in zf.namelist():
        return {}
    found = {}
    for rel in ET.fromstring(zf.read(path)):
        target = rel.get("Target", "")
        full = target[1:] if target.startswith("/") else posixpath.join(folder, target)
        found[rel.get("Id", "")] = (rel.get("Type", ""), posixpath.normpath(full))
    return found


def worksheets(path: Path) -> list[tuple[str, str]]:
    """(sheet name, worksheet part) in workbook order, chart/macro/dialog sheets left out."""
    with zipfile.ZipFile(path) as zf:
        book = next(t for k, t in _rels(zf, "").values() if k.endswith("/officeDocument"))
        rels = _rels(zf, book)
        found = []
        for el in ET.fromstring(zf.read(book)).iter():
            if _local(el.tag) == "sheet":
                rid = next(v for k, v in el.attrib.items() if _local(k) == "id")
                kind, part = rels[rid]
                if kind.endswith("/worksheet"):
                    found.append((el.get("name", ""), part))
        return found


def cells(xml: bytes) -> dict[tuple[int, int], tuple[Any, ...]]:
    """(row, col) 1-based -> the <c> element as (attributes, canonical children)."""
    found: dict[tuple[int, int], tuple[Any, ...]] = {}
    row_no = 0
    for row in ET.fromstring(xml).iter():
        if _local(row.tag) != "row":
            continue
        row_no = int(row.get("r", row_no + 1))
        col = 0
        for c in row:
            if _local(c.tag) != "c":
                continue
            ref = c.get("r")
            col = column_index_from_string(ref.rstrip("0123456789")) if ref else col + 1
            found[row_no, col] = (sorted(c.attrib.items()), tuple(_shape(x) for x in c))
    return found


def _shape(el: ET.Element) -> tuple[Any, ...]:
    """Everything an element says: tag, attributes, text, and its children's shapes."""
    return (el.tag, sorted(el.attrib.items()), el.text, tuple(_shape(x) for x in el))


def inline_texts(xml: bytes, refs: set[tuple[int, int]]) -> dict[tuple[int, int], str]:
    """The text of inline-string cells; they must hold no formula and no cached value."""
    wanted = {f"{get_column_letter(c)}{r}": (r, c) for r, c in refs}
    found = {}
    for c in ET.fromstring(xml).iter():
        if _local(c.tag) == "c" and c.get("r") in wanted:
            assert c.get("t") == "inlineStr"
            assert not [x for x in c if _local(x.tag) in ("f", "v")]
            text = "".join(t.text or "" for t in c.iter() if _local(t.tag) == "t")
            found[wanted[c.get("r", "")]] = text
    return found


def outside_sheet_data(xml: bytes) -> tuple[bytes, bytes]:
    """The bytes before <sheetData> (dimension ref blanked) and after </sheetData>."""
    head, _, rest = xml.partition(b"<sheetData")
    tail = rest.rpartition(b"</sheetData>")[2] if b"</sheetData>" in rest else rest
    tail = tail.partition(b"/>")[2] if b"</sheetData>" not in rest else tail
    return re.sub(rb'(<dimension ref=")[^"]*', rb"\1", head), tail


def expected(text: str) -> str:
    return text.replace("\x07", "")


def excel_reads(text: str) -> str:
    """What Excel shows for stored text: it decodes ``_xHHHH_`` (openpyxl does not)."""
    return re.sub(r"_x([0-9A-Fa-f]{4})_", lambda m: chr(int(m.group(1), 16)), text)


def _target_sheet(path: Path) -> tuple[str, str]:
    """The first worksheet that is not protected (a protected one must be refused)."""
    for name, part in worksheets(path):
        try:
            check_writable(path, name)
        except WorkbookError as exc:
            assert "protected" in str(exc) and name in str(exc)
            continue
        return name, part
    pytest.skip(f"{path.name} has no writable worksheet")


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: p.name)
def test_corpus_patch_is_lossless(path: Path, tmp_path: Path) -> None:
    if not worksheets(path):
        pytest.skip("no worksheet part")
    name, part = _target_sheet(path)
    with zipfile.ZipFile(path) as zf:
        before = {i.filename: zf.read(i) for i in zf.infolist()}
    old = cells(before[part])
    used = [k for k, (_, children) in old.items() if children]  # styled blanks are not used
    last_row = max((r for r, _ in used), default=0)
    out_col = max((c for _, c in used), default=0) + 1
    rows = range(2, min(6, last_row + 3) + 1)
    written = {(r, out_col): ANSWERS[i % len(ANSWERS)] for i, r in enumerate(rows)}
    out = tmp_path / path.name
    patch_workbook(path, out, name, [(r - 1, c - 1, t) for (r, c), t in written.items()])

    with zipfile.ZipFile(out) as zf:
        assert zf.testzip() is None
        infos = {i.filename: i for i in zf.infolist()}
        after = {n: zf.read(n) for n in infos}
    assert list(after) == list(before)
    with zipfile.ZipFile(path) as zf:
        for info in zf.infolist():
            assert infos[info.filename].compress_type == info.compress_type
            assert infos[info.filename].date_time == info.date_time
    changed = [n for n in before if before[n] != after[n]]
    assert changed == [part]

    new = cells(after[part])
    assert {k: v for k, v in new.items() if k not in written} == {
        k: v for k, v in old.items() if k not in written}
    for key in written.keys() & old.keys():  # styled blanks replaced in place keep the style
        assert dict(new[key][0]).get("s") == dict(old[key][0]).get("s")
    assert outside_sheet_data(after[part]) == outside_sheet_data(before[part])
    texts = inline_texts(after[part], set(written))
    assert {k: excel_reads(t) for k, t in texts.items()} == {
        k: expected(t) for k, t in written.items()}

    if path.name in NOT_OPENPYXL:
        for member, data in after.items():  # every XML part still parses
            if member.endswith((".xml", ".rels")):
                ET.fromstring(data)
        return
    if path.stat().st_size < FULL_LOAD_BYTES:
        openpyxl.load_workbook(out)
    ws = openpyxl.load_workbook(out, read_only=True)[name]
    read = {(c.row, c.column): c for row in ws.iter_rows(min(rows), max(rows), out_col, out_col)
            for c in row}
    for key, text in written.items():
        assert read[key].data_type == "s"
        assert excel_reads(read[key].value) == expected(text)


def _table_book(path: Path) -> None:
    book = openpyxl.Workbook()
    ws = book.active
    ws.title = "Data"
    ws.append(["name", "city", "note"])
    for i in range(4):
        ws.append([f"n{i}", f"c{i}", f"x{i}"])
    table = Table(displayName="People", ref="A1:C5")
    ws.add_table(table)
    book.save(path)


def _table_xml(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read(next(n for n in zf.namelist() if n.startswith("xl/tables/")))


def test_table_grows_by_the_new_column(tmp_path: Path) -> None:
    src, out = tmp_path / "t.xlsx", tmp_path / "out.xlsx"
    _table_book(src)
    answers = [(0, 3, "response")] + [(r, 3, f"answer {r}") for r in range(1, 5)]
    patch_workbook(src, out, "Data", answers)
    table = openpyxl.load_workbook(out)["Data"].tables["People"]
    assert table.ref == "A1:D5"
    assert table.autoFilter.ref == "A1:D5"
    assert [c.name for c in table.tableColumns] == ["name", "city", "note", "response"]
    assert [c.id for c in table.tableColumns] == [1, 2, 3, 4]
    assert b'count="4"' in _table_xml(out)


def test_table_grows_by_several_new_columns(tmp_path: Path) -> None:
    """Chained prompts or JSON fields add several answers columns at once."""
    src, out = tmp_path / "t.xlsx", tmp_path / "out.xlsx"
    _table_book(src)
    patch_workbook(src, out, "Data", [(0, 3, "summary"), (0, 4, "reply"), (1, 4, "r1")])
    table = openpyxl.load_workbook(out)["Data"].tables["People"]
    assert table.ref == "A1:E5" and table.autoFilter.ref == "A1:E5"
    assert [c.name for c in table.tableColumns][-2:] == ["summary", "reply"]
    assert b'count="5"' in _table_xml(out)


def test_table_column_name_stays_unique(tmp_path: Path) -> None:
    src, out = tmp_path / "t.xlsx", tmp_path / "out.xlsx"
    _table_book(src)
    patch_workbook(src, out, "Data", [(0, 3, "Note")])
    ws = openpyxl.load_workbook(out)["Data"]
    assert ws["D1"].value == "Note2"
    assert ws.tables["People"].tableColumns[-1].name == "Note2"


def test_support_tickets_answers_stay_inside_the_table(tmp_path: Path) -> None:
    src, out = SAMPLES / "support_tickets.xlsx", tmp_path / "out.xlsx"
    patch_workbook(src, out, "Tickets", [(r, 4, f"reply {r}") for r in range(1, 11)])
    assert _table_xml(out) == _table_xml(src)
    ws = openpyxl.load_workbook(out)["Tickets"]
    assert ws.tables["Tickets"].ref == "A1:E11"
    assert [ws.cell(r, 5).value for r in range(2, 12)] == [f"reply {r}" for r in range(1, 11)]
    assert ws["E2"].style_id == openpyxl.load_workbook(src)["Tickets"]["E2"].style_id


def test_surface_writes_through_the_patch(tmp_path: Path) -> None:
    out = tmp_path / "tickets.out.xlsx"
    surface = XlsxSurface(SAMPLES / "support_tickets.xlsx", output=out)
    data = surface.read()
    surface.write([(1, 4, "first"), (2, 4, "=1+1")])
    surface.write([(1, 4, "second")])
    surface.close()
    ws = openpyxl.load_workbook(out)[data.name]
    assert (ws["E2"].value, ws["E3"].value, ws["E3"].data_type) == ("second", "=1+1", "s")


def test_encrypted_file_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / "secret.xlsx"
    fake.write_bytes(OLE_MAGIC + bytes(504))
    out = tmp_path / "out.xlsx"
    with pytest.raises(WorkbookError, match="encrypted"):
        patch_workbook(fake, out, "Sheet1", [(0, 0, "x")])
    with pytest.raises(WorkbookError, match="encrypted"):
        XlsxSurface(fake, output=out)
    assert not out.exists()


def test_xlsb_is_refused(tmp_path: Path) -> None:
    book = tmp_path / "b.xlsb"
    book.write_bytes(b"PK\x03\x04")
    with pytest.raises(WorkbookError, match="xlsb"):
        patch_workbook(book, tmp_path / "out.xlsb", "Sheet1", [(0, 0, "x")])


def test_protected_sheet_is_refused(tmp_path: Path) -> None:
    src, out = tmp_path / "p.xlsx", tmp_path / "out.xlsx"
    book = openpyxl.Workbook()
    book.active.title = "Locked"
    book.active.protection.sheet = True
    book.save(src)
    with pytest.raises(WorkbookError, match="'Locked'.*protected.*Unprotect"):
        patch_workbook(src, out, "Locked", [(0, 0, "x")])
    assert not out.exists()
    real = CORPUS / "closedxml__DrawingSizeInPx.xlsx"
    protected = next(n for n, p in worksheets(real) if p == "xl/worksheets/sheet12.xml")
    with pytest.raises(WorkbookError, match="protected"):
        patch_workbook(real, out, protected, [(0, 0, "x")])


def test_protection_flags_without_sheet_lock_are_written(tmp_path: Path) -> None:
    """gnumeric writes <sheetProtection formatCells="0" ...> without sheet="1"."""
    src = CORPUS / "calamine__issue_174.xlsx"
    patch_workbook(src, tmp_path / "out.xlsx", "Sheet1", [(0, 0, "x")])


def _sheet_xml(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read("xl/worksheets/sheet1.xml")


def test_shared_string_cell_is_replaced_in_place(tmp_path: Path) -> None:
    src, out = CORPUS / "closedxml__GoogleSheets-file1.xlsx", tmp_path / "out.xlsx"
    old = cells(_sheet_xml(src))
    attrs = dict(old[1, 1][0])
    assert attrs["t"] == "s"
    patch_workbook(src, out, "Sheet1", [(0, 0, "#ERROR: replaced")])
    xml = _sheet_xml(out)
    new = cells(xml)
    assert dict(new[1, 1][0]) == {"r": "A1", "s": attrs["s"], "t": "inlineStr"}
    assert inline_texts(xml, {(1, 1)}) == {(1, 1): "#ERROR: replaced"}
    assert len(new) == len(old)
    assert openpyxl.load_workbook(out)["Sheet1"]["A1"].value == "#ERROR: replaced"


def test_formula_cell_loses_its_formula(tmp_path: Path) -> None:
    src, out = tmp_path / "f.xlsx", tmp_path / "out.xlsx"
    book = openpyxl.Workbook()
    book.active.append([1, 2, "=A1+B1"])
    book.save(src)
    patch_workbook(src, out, "Sheet", [(0, 2, "@mention")])
    cell = openpyxl.load_workbook(out)["Sheet"]["C1"]
    assert (cell.value, cell.data_type) == ("@mention", "s")


def test_shared_formula_master_is_not_overwritten(tmp_path: Path) -> None:
    src = CORPUS / "sheetjs__large_strings.xlsx"
    xml = _sheet_xml(src)
    master = re.search(rb'<c r="([A-Z]+)(\d+)"[^>]*><f t="shared" ref="([A-Z]+\d+:[A-Z]+\d+)"',
                       xml)
    assert master is not None
    col, row = column_index_from_string(master.group(1).decode()), int(master.group(2))
    name = worksheets(src)[0][0]
    with pytest.raises(WorkbookError, match="shared"):
        patch_workbook(src, tmp_path / "out.xlsx", name, [(row - 1, col - 1, "x")])


def test_missing_rows_are_created_in_order(tmp_path: Path) -> None:
    src, out = tmp_path / "gaps.xlsx", tmp_path / "out.xlsx"
    book = openpyxl.Workbook()
    ws = book.active
    ws["A2"], ws["C5"] = "two", "five"
    book.save(src)
    patch_workbook(src, out, "Sheet", [(9, 1, "ten"), (0, 1, "one"), (3, 1, "four"),
                                       (4, 0, "five-a"), (4, 3, "five-d")])
    xml = _sheet_xml(out)
    rows = [int(r) for r in re.findall(rb'<row r="(\d+)"', xml)]
    assert rows == [1, 2, 4, 5, 10]
    assert re.findall(rb'<c r="([A-Z]+)5"', xml) == [b"A", b"C", b"D"]
    assert re.search(rb'<dimension ref="A1:D10"', xml)
    ws = openpyxl.load_workbook(out)["Sheet"]
    assert [ws["B1"].value, ws["A2"].value, ws["B4"].value, ws["A5"].value, ws["C5"].value,
            ws["D5"].value, ws["B10"].value] == ["one", "two", "four", "five-a", "five",
                                                 "five-d", "ten"]


def test_empty_sheet_data_gets_rows(tmp_path: Path) -> None:
    src, out = CORPUS / "poi__51585.xlsx", tmp_path / "out.xlsx"
    patch_workbook(src, out, "Sheet3", [(2, 1, "b3"), (0, 0, "a1")])
    ws = openpyxl.load_workbook(out)["Sheet3"]
    assert (ws["A1"].value, ws["B3"].value) == ("a1", "b3")


def test_escaping_and_limits(tmp_path: Path) -> None:
    src, out = tmp_path / "e.xlsx", tmp_path / "out.xlsx"
    openpyxl.Workbook().save(src)
    text = "a & b < c > d \"q\" 'q'\ttab\x00\x1f\ufffe end"
    patch_workbook(src, out, "Sheet", [(0, 0, text), (1, 0, "x" * 40_000)])
    ws = openpyxl.load_workbook(out)["Sheet"]
    assert ws["A1"].value == "a & b < c > d \"q\" 'q'\ttab end"
    assert len(ws["A2"].value) <= 32_767 and "[... cut:" in ws["A2"].value


def test_unknown_sheet_and_chartsheet_are_refused(tmp_path: Path) -> None:
    src = CORPUS / "calamine__any_sheets.xlsx"
    with pytest.raises(WorkbookError, match="no sheet 'Nope'"):
        patch_workbook(src, tmp_path / "o.xlsx", "Nope", [(0, 0, "x")])
    chart = next(n for n in re.findall(r'name="([^"]+)"', zipfile.ZipFile(src).read(
        "xl/workbook.xml").decode()) if n not in dict(worksheets(src)))
    with pytest.raises(WorkbookError, match="not a worksheet"):
        patch_workbook(src, tmp_path / "o.xlsx", chart, [(0, 0, "x")])


def test_patching_the_largest_file_is_fast(tmp_path: Path) -> None:
    src = max(CORPUS_FILES, key=lambda p: p.stat().st_size)
    name, part = max(worksheets(src), key=lambda s: zipfile.ZipFile(src).getinfo(s[1]).file_size)
    start = time.perf_counter()
    patch_workbook(src, tmp_path / "out.xlsx", name, [(r, 200, f"a{r}") for r in range(1, 6)])
    elapsed = time.perf_counter() - start
    print(f"\npatched 5 cells into {src.name} sheet {name!r} ({part}) in {elapsed:.3f} s")
    assert elapsed < 5


def test_numbers_and_booleans_land_typed(tmp_path: Path) -> None:
    """Fields of a structured answer: ``<v>`` numbers, ``t="b"`` booleans, strings inline;
    a typed value replacing a string cell drops its old type."""
    src, out = tmp_path / "t.xlsx", tmp_path / "out.xlsx"
    _table_book(src)
    answers = [(1, 3, 3.5), (2, 3, 7), (3, 3, 1e20), (4, 3, -0.25), (1, 4, True),
               (2, 4, False), (1, 2, 42), (2, 2, "=1+1")]
    patch_workbook(src, out, "Data", answers)
    xml = _sheet_xml(out)
    assert b'<c r="D2"><v>3.5</v></c>' in xml and b'<c r="D4"><v>1E+20</v></c>' in xml
    assert b'<c r="E2" t="b"><v>1</v></c>' in xml
    ws = openpyxl.load_workbook(out)["Data"]
    got = {(r, c): (ws.cell(r + 1, c + 1).value, ws.cell(r + 1, c + 1).data_type)
           for r, c, _ in answers}
    assert got == {(1, 3): (3.5, "n"), (2, 3): (7, "n"), (3, 3): (1e20, "n"),
                   (4, 3): (-0.25, "n"), (1, 4): (True, "b"), (2, 4): (False, "b"),
                   (1, 2): (42, "n"), (2, 2): ("=1+1", "s")}
    assert isinstance(got[2, 3][0], int) and isinstance(got[1, 2][0], int)


def test_table_grows_by_every_field_column(tmp_path: Path) -> None:
    src, out = tmp_path / "t.xlsx", tmp_path / "out.xlsx"
    _table_book(src)
    answers = [(0, 3, "mood"), (0, 4, "name"), (0, 6, "apart"), (1, 3, "ok"), (1, 4, 3.5)]
    patch_workbook(src, out, "Data", answers)
    ws = openpyxl.load_workbook(out)["Data"]
    table = ws.tables["People"]
    assert table.ref == "A1:E5" and table.autoFilter.ref == "A1:E5"
    assert [c.name for c in table.tableColumns] == ["name", "city", "note", "mood", "name2"]
    assert [c.id for c in table.tableColumns] == [1, 2, 3, 4, 5]
    assert ws["E1"].value == "name2" and ws["G1"].value == "apart"
    assert b'count="5"' in _table_xml(out)


def _sheet_xml(path: Path) -> bytes:
    with zipfile.ZipFile(path) as zf:
        return zf.read("xl/worksheets/sheet1.xml")
