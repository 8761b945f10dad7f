"""``--export-dir``: each answer also as a Markdown file, for answers that are documents.

The files are named from a column the user picks (``--export-name``, else the row number),
made safe for every file system, and written only inside the folder the user named: a cell
cannot hold a path, and a workbook cannot choose the folder (see ``refuse_from_sheet``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from .engine import RowResult
from .errors import ConfigError, WorkbookError
from .plan import Plan
from .settings import setting_name
from .surfaces.files import atomic_write, check_output
from .table import Grid, quote_sheet
from .template import display, variable_name

MAX_STEM = 100
"""Characters of a file name before ``.md``: well inside every file system's 255."""
SUFFIX = ".md"
RESERVED = frozenset({"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)),
                      *(f"lpt{i}" for i in range(10))})
"""Names Windows gives to devices, with any extension."""
_UNSAFE = re.compile(r'[\x00-\x1f\x7f<>:"/\\|?*]+|\.{2,}')
"""Path separators, characters Windows refuses, control characters, and ``..``."""


def refuse_from_sheet(conf: Mapping[str, str], cells: Mapping[str, str], sheet: str) -> None:
    """A workbook is someone else's file: it may not make promptbatch write files, or choose
    where. The folder comes from the user (a flag, the environment, their config file)."""
    for key in conf:
        if setting_name(key) == "export_dir":
            where = cells.get(key, f"The {quote_sheet(sheet)} sheet")
            raise ConfigError(f"{where} sets export_dir, but a workbook cannot choose where "
                              "promptbatch writes files. Pass --export-dir DIR yourself (or "
                              "set export_dir in your config file), and delete that row.")


def file_stem(text: str) -> str:
    """``text`` as a file name of its own: no separators, control or reserved characters,
    no leading dots (``..``, hidden files), no device names, at most MAX_STEM characters."""
    stem = re.sub("_{2,}", "_", _UNSAFE.sub("_", text)).strip().lstrip(".").rstrip(". ")
    stem = stem[:MAX_STEM].rstrip(". ")
    if not stem or stem.split(".")[0].strip().lower() in RESERVED:
        stem = f"_{stem}"
    return stem


class Export:
    """Where each (row, step) answer goes: one file each, names settled before the run in
    row order, so a rerun writes the same files and two rows never share one."""

    def __init__(self, folder: Path, names: dict[tuple[int, int], str]) -> None:
        self.folder = folder
        self.names = names

    @classmethod
    def of(cls, plan: Plan, grid: Grid, folder: str, column: str | None) -> Export:
        table = plan.table
        col = None
        if column is not None:
            wanted = column.strip().lower()
            col = next((c for c, h in table.columns.items()
                        if h.lower() == wanted or variable_name(h) == variable_name(column)),
                       None)
            if col is None:
                present = ", ".join(repr(h) for h in table.columns.values())
                raise ConfigError(f"--export-name {column!r} names no column of sheet "
                                  f"{quote_sheet(table.sheet)}. Columns: {present}.")
        several = len(plan.steps) > 1
        taken: set[str] = set()
        names: dict[tuple[int, int], str] = {}
        for row in table.rows:
            label = display(table.value(grid, row, col)).strip() if col is not None else ""
            base = label or f"row {row + 1}"
            for step in plan.steps:
                stem = file_stem(f"{base} - {step.outputs[0].header}" if several else base)
                name, n = stem, 1
                while name.lower() in taken:  # case-blind: Windows and macOS are
                    n += 1
                    name = f"{stem[:MAX_STEM - 6]} ({n})"
                taken.add(name.lower())
                names[row, step.index] = name + SUFFIX
        return cls(Path(folder).expanduser(), names)

    def ready(self) -> None:
        """Create the folder and check it takes files, before anything is paid for."""
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WorkbookError(f"Cannot create the export folder {self.folder}: "
                                f"{exc.strerror}. Choose another with --export-dir.") from None
        check_output(self.folder / "promptbatch-export-check.md")

    def add(self, result: RowResult) -> None:
        """Write an answer's file (a failed answer writes none)."""
        name = self.names.get((result.row, result.step))
        if not result.ok or name is None:
            return
        root = self.folder.resolve()
        target = (root / name).resolve()
        if target.parent != root:  # cannot happen with file_stem's names; never write there
            raise WorkbookError(f"Refused to write {name!r} outside {root}.")
        data = (result.text if result.text.endswith("\n") else result.text + "\n").encode()

        def write(tmp: Path) -> None:
            tmp.write_bytes(data)

        atomic_write(target, write)
