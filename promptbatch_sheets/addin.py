"""The Excel add-in: build ``promptbatch_sheets.xlam`` and install it with xlwings' own add-in.

The .xlam is xlwings' ribbon add-in template (``quickstart_addin_ribbon.xlam``, shipped inside
the xlwings package) with our ribbon XML. Its VBA is xlwings' unchanged: the button's
``RunMain`` runs ``import <workbook name>; <workbook name>.main()``, and the file is named
``promptbatch_sheets.xlam``, so it calls ``promptbatch_sheets.main()``. Building at install
time from the installed xlwings keeps the add-in's VBA at the version of the Python package.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import typer

from .errors import ConfigError, PromptBatchError, SetupError

XLAM_NAME = "promptbatch_sheets.xlam"
TEMPLATE_XLAM = "quickstart_addin_ribbon.xlam"
RIBBON_PART = "customUI/customUI.xml"
ZIP_TIME = (2025, 1, 1, 0, 0, 0)
"""Every zip entry gets this time, so two builds give the same bytes."""
VBA_PROJECT = "myaddin"
"""xlwings' template reads its settings as ``myaddin``: its VBA constant PROJECT_NAME."""
UDF_MODULE = "promptbatch_sheets.udfs"

RIBBON_XML = """\
<customUI xmlns="http://schemas.microsoft.com/office/2006/01/customui">
    <ribbon>
        <tabs>
            <tab id="promptbatchTab" label="PromptBatch">
                <group id="promptbatchGroup" label="Batch">
                    <button id="runBatch" label="Run batch" size="large"
                            onAction="RibbonMyAddin.RunMain" imageMso="MacroPlay"
                            screentip="Run batch"
                            supertip="Answer every row of the active sheet's table with its
prompt template. Answers already paid for come from the cache." />
                </group>
            </tab>
        </tabs>
    </ribbon>
</customUI>
"""

addin_app = typer.Typer(help="Install the Excel add-in: ribbon tab PromptBatch and "
                        "=PROMPTBATCH() (desktop Excel on Windows or macOS).",
                        rich_markup_mode=None)


def xlwings_dir() -> Path:
    spec = importlib.util.find_spec("xlwings")
    if spec is None or spec.origin is None:
        raise SetupError("The Excel add-in needs xlwings: pip install 'promptbatch-sheets[excel]'")
    return Path(spec.origin).parent


def build_xlam(target: Path) -> Path:
    """Write the add-in to ``target``: same xlwings, same bytes."""
    source = xlwings_dir() / TEMPLATE_XLAM
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as out:
        for item in src.infolist():
            data = RIBBON_XML.encode() if item.filename == RIBBON_PART else src.read(item)
            info = zipfile.ZipInfo(item.filename, date_time=ZIP_TIME)
            info.create_system = 0
            info.external_attr = 0
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return target


def _desktop_platform() -> str:
    if sys.platform.startswith("win"):
        return "windows"
    if sys.platform == "darwin":
        return "macos"
    raise ConfigError("The Excel add-in needs desktop Excel, on Windows or macOS; there is none "
                      f"on {sys.platform}. Here, run a workbook file instead: "
                      "promptbatch run book.xlsx")


def _xlwings(*args: str) -> None:
    """xlwings' own command line: it asks Excel where its start-up folder is."""
    subprocess.run([sys.executable, "-c", "from xlwings.cli import main; main()", *args],
                   check=True)


def config_file(project: str, platform: str) -> Path:
    """Where xlwings' VBA looks for a user's settings of add-in ``project``."""
    if platform == "macos":
        return (Path.home() / "Library" / "Containers" / "com.microsoft.Excel" / "Data"
                / f"{project}.conf")
    return Path.home() / f".{project}" / f"{project}.conf"


def set_config(path: Path, key: str, value: str) -> None:
    """One ``"KEY","value"`` line in an xlwings config file, the user's other lines kept."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    kept = [line for line in lines if line.strip() and line.split(",")[0] != f'"{key}"']
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([*kept, f'"{key}","{value}"']) + "\n", encoding="utf-8")


def _run(action: str) -> None:
    try:
        platform = _desktop_platform()
        xlwings_dir()
        if action == "install":
            install(platform)
        else:
            uninstall()
    except PromptBatchError as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(2) from None
    except subprocess.CalledProcessError as exc:
        typer.echo(f"Error: xlwings could not {action} the add-in (exit {exc.returncode}).",
                   err=True)
        raise typer.Exit(1) from None


def install(platform: str) -> None:
    _xlwings("addin", "install")
    with tempfile.TemporaryDirectory() as folder:
        _xlwings("addin", "install", "--file", str(build_xlam(Path(folder) / XLAM_NAME)))
    interpreter = "INTERPRETER_WIN" if platform == "windows" else "INTERPRETER_MAC"
    set_config(config_file(VBA_PROJECT, platform), interpreter, sys.executable)
    if platform == "windows":
        set_config(config_file("xlwings", platform), "UDF MODULES", UDF_MODULE)
    typer.echo("Restart Excel: the ribbon tab PromptBatch runs the active sheet with "
               f"{sys.executable}.")
    if platform == "windows":
        typer.echo("For =PROMPTBATCH(), open your workbook and click Import Functions on the "
                   "xlwings tab (it needs 'Trust access to the VBA project object model').")
    else:
        typer.echo("=PROMPTBATCH() needs Excel on Windows: xlwings has no worksheet functions "
                   "on macOS.")


def uninstall() -> None:
    _xlwings("addin", "remove", "--file", XLAM_NAME)
    typer.echo("Removed the PromptBatch add-in. xlwings' own add-in stays; remove it with: "
               "xlwings addin remove")


@addin_app.command("install")
def install_command() -> None:
    """Install xlwings' add-in and ours into Excel's start-up folder."""
    _run("install")


@addin_app.command("uninstall")
def uninstall_command() -> None:
    """Remove our add-in from Excel's start-up folder."""
    _run("uninstall")
