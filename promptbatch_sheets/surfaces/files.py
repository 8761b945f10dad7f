"""What the file surfaces share: where output goes and how it is replaced without harm."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from ..errors import WorkbookError


def default_output(source: Path) -> Path:
    """``book.xlsx`` -> ``book.promptbatch.xlsx`` beside it: the user's file stays untouched."""
    return source.with_name(f"{source.stem}.promptbatch{source.suffix}")


def check_readable(path: Path) -> None:
    if not path.exists():
        raise WorkbookError(f"{path} does not exist. Check the path and the file name.")
    if not path.is_file():
        raise WorkbookError(f"{path} is a folder, not a workbook.")


def atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file beside ``target``, then rename: never a half-written file."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise WorkbookError(f"Cannot write {target}: {exc.strerror}. Choose another folder "
                            "with -o.") from None
    os.close(fd)
    try:
        write(Path(tmp))
        if target.exists():
            os.chmod(tmp, target.stat().st_mode & 0o777)
        os.replace(tmp, target)
    except OSError as exc:
        raise WorkbookError(f"Cannot write {target}: {exc.strerror}. Is it open in another "
                            "program, or read-only?") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
