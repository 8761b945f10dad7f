"""Issue 7, part 4: mutated workbooks through the xlsx reader and the patching writer.

Whatever the bytes, only a PromptBatchError may come out, and the output folder holds either
no file or a complete zip: never a half-written file or a temporary one left behind.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import zipfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptbatch_sheets.errors import PromptBatchError
from promptbatch_sheets.surfaces.xlsx import XlsxSurface
from tests.conftest import SAMPLES

CORPUS = Path("/work/shared/corpus/xlsx")
SEEDS = [SAMPLES / "product_descriptions.xlsx", CORPUS / "sheetjs__minimal_112.xlsx",
         CORPUS / "closedxml__InlineStrings-inputfile.xlsx", CORPUS / "calamine__date_1904.xlsx"]
TOKENS = [b"<", b">", b'"', b"</c>", b"<f>A1*2</f>", b"\x00", b"&", b' r="ZZZ9999999"',
          b"<row r=\"0\">", b"<sheetData/>", b"\xff\xfe", b"<!--", b"t=\"s\"", b"<v>999</v>"]

Edit = tuple[int, bytes]
edits = st.lists(st.tuples(st.integers(0, 2**31), st.one_of(
    st.binary(min_size=1, max_size=4), st.sampled_from(TOKENS))), min_size=1, max_size=6)


def mutate(data: bytes, changes: list[Edit], insert: bool) -> bytes:
    """Overwrite (or insert) each chunk at a position taken modulo the length."""
    buf = bytearray(data)
    for position, chunk in changes:
        at = position % max(len(buf), 1)
        buf[at:at + (0 if insert else len(chunk))] = chunk
    return bytes(buf)


def mutate_part(data: bytes, changes: list[Edit], part_choice: int) -> bytes:
    """Damage one XML part (a worksheet, the workbook, the strings) and zip it up again, so
    the parsers, not only the zip's checksums, meet the damage."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [(i, zf.read(i)) for i in zf.infolist()]
    xml = [n for n, (i, _) in enumerate(members) if i.filename.endswith(".xml")]
    target = xml[part_choice % len(xml)]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for n, (info, body) in enumerate(members):
            zf.writestr(info, mutate(body, changes, insert=True) if n == target else body)
    return out.getvalue()


def read_and_write(source: Path, target: Path) -> None:
    surface = XlsxSurface(source, output=target)
    data = surface.read()
    surface.write([(0, 20, "header"), (1, 20, "answer <&> 1"), (len(data.grid), 20, "x")])
    surface.close()


def assert_clean(folder: Path, target: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    if target.exists():
        with zipfile.ZipFile(target) as zf:
            assert zf.testzip() is None


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), edits, st.sampled_from(["bytes", "part"]), st.integers(0, 99))
def test_mutated_workbooks_fail_cleanly(seed: Path, changes: list[Edit], mode: str,
                                        part: int) -> None:
    data = seed.read_bytes()
    broken = mutate(data, changes, insert=False) if mode == "bytes" else \
        mutate_part(data, changes, part)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        source, target = folder / "in.xlsx", folder / "out" / "answers.xlsx"
        source.write_bytes(broken)
        with contextlib.suppress(PromptBatchError):
            read_and_write(source, target)
        assert_clean(target.parent if target.parent.exists() else folder, target)


def test_unmutated_seeds_round_trip(tmp_path: Path) -> None:
    for n, seed in enumerate(SEEDS):
        target = tmp_path / f"out{n}.xlsx"
        read_and_write(seed, target)
        assert_clean(tmp_path, target)
