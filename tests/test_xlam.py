"""The Excel add-in file: built reproducibly from xlwings' ribbon template, checked from outside
(unzip for the ribbon XML, olevba for the VBA), and installed by ``promptbatch addin``."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from xml.etree import ElementTree

import pytest

from promptbatch_sheets import addin
from tests.conftest import cli

with warnings.catch_warnings():  # oletools 0.60.2 uses pyparsing names pyparsing 3.3 deprecates
    warnings.simplefilter("ignore", DeprecationWarning)
    from oletools.olevba import VBA_Parser

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "addin" / "excel" / "build_xlam.py"
CHECKED_IN = REPO / "addin" / "excel" / addin.XLAM_NAME
UI = "{http://schemas.microsoft.com/office/2006/01/customui}"


@pytest.fixture(scope="module")
def xlam(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The build script, run from a copy so that the repository is not written to."""
    folder = tmp_path_factory.mktemp("xlam")
    shutil.copy(SCRIPT, folder / SCRIPT.name)
    subprocess.run([sys.executable, str(folder / SCRIPT.name)], check=True, cwd=REPO)
    return folder / addin.XLAM_NAME


def test_build_is_byte_identical_and_matches_the_checked_in_file(xlam: Path,
                                                                 tmp_path: Path) -> None:
    again = addin.build_xlam(tmp_path / addin.XLAM_NAME)
    assert again.read_bytes() == xlam.read_bytes() == CHECKED_IN.read_bytes()


def test_ribbon_tab_and_button(xlam: Path) -> None:
    with zipfile.ZipFile(xlam) as z:
        root = ElementTree.fromstring(z.read("customUI/customUI.xml"))
        rels = z.read("_rels/.rels").decode()
        assert {i.date_time for i in z.infolist()} == {addin.ZIP_TIME}
    (tab,) = root.iter(f"{UI}tab")
    (button,) = tab.iter(f"{UI}button")
    assert tab.get("label") == "PromptBatch"
    assert button.get("label") == "Run batch"
    assert button.get("onAction") == "RibbonMyAddin.RunMain"
    assert 'Target="customUI/customUI.xml"' in rels


def test_every_other_part_is_xlwings_template_unchanged(xlam: Path) -> None:
    template = addin.xlwings_dir() / addin.TEMPLATE_XLAM
    with zipfile.ZipFile(template) as src, zipfile.ZipFile(xlam) as out:
        assert src.namelist() == out.namelist()
        for name in src.namelist():
            if name != addin.RIBBON_PART:
                assert src.read(name) == out.read(name), name


def _vba_modules(path: Path) -> dict[str, str]:
    parser = VBA_Parser(str(path))
    try:
        return {name: code for _, _, name, code in parser.extract_macros()}
    finally:
        parser.close()


def test_run_main_runs_promptbatch_sheets_main(xlam: Path) -> None:
    """RunMain imports the workbook's own name, and the add-in is named promptbatch_sheets."""
    code = _vba_modules(xlam)["RibbonMyAddin.bas"]
    body = code[code.index("Sub RunMain(control As IRibbonControl)"):code.index("End Sub")]
    assert ('mymodule = Left(ThisWorkbook.Name, (InStrRev(ThisWorkbook.Name, ".", -1, '
            'vbTextCompare) - 1))') in body
    (call,) = re.findall(r"^\s*RunPython (.+)$", body, re.MULTILINE)
    mymodule = Path(addin.XLAM_NAME).stem
    command = "".join(mymodule if part.strip() == "mymodule" else part.strip().strip('"')
                      for part in call.split("&"))
    assert command == "import promptbatch_sheets;promptbatch_sheets.main()"
    checked = subprocess.run([sys.executable, "-c", command.replace(".main()", ".main")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "Public Function RunPython" in _vba_modules(xlam)["xlwings.bas"]


def test_addin_install_on_linux_says_it_needs_desktop_excel() -> None:
    for action in ("install", "uninstall"):
        result = cli("addin", action)
        assert result.exit_code == 2
        assert "needs desktop Excel" in result.output


@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_addin_install_and_uninstall(platform: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []

    def xlwings_cli(*args: str) -> None:
        calls.append(args)
        if "--file" in args and args[1] == "install":
            assert Path(args[-1]).read_bytes() == CHECKED_IN.read_bytes()

    monkeypatch.setattr(sys, "platform", platform)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(addin, "_xlwings", xlwings_cli)
    result = cli("addin", "install")
    assert result.exit_code == 0, result.output
    assert calls[0] == ("addin", "install")
    assert calls[1][:3] == ("addin", "install", "--file")
    os_name = "windows" if platform == "win32" else "macos"
    conf = addin.config_file("myaddin", os_name).read_text()
    key = "INTERPRETER_WIN" if platform == "win32" else "INTERPRETER_MAC"
    assert f'"{key}","{sys.executable}"' in conf
    udfs = addin.config_file("xlwings", os_name)
    assert (udfs.exists() and '"UDF MODULES","promptbatch_sheets.udfs"' in udfs.read_text()
            ) == (platform == "win32")

    result = cli("addin", "uninstall")
    assert result.exit_code == 0, result.output
    assert calls[2] == ("addin", "remove", "--file", addin.XLAM_NAME)


def test_set_config_keeps_the_users_other_lines(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    path.write_text('"INTERPRETER_WIN","old"\n"DEBUG UDFS","True"\n')
    addin.set_config(path, "INTERPRETER_WIN", "new")
    assert path.read_text() == '"DEBUG UDFS","True"\n"INTERPRETER_WIN","new"\n'
