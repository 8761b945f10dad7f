"""What the file surfaces share: where output goes and how it is replaced without harm."""

from __future__ import annotations

import os
import tempfile
import time
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


def check_output(target: Path) -> None:
    """Fail before the first paid answer if ``target`` cannot be written.

    Creates and removes a temporary file where the answers will go: a permission check alone
    is wrong for root, read-only mounts and /proc.
    """
    if target.is_dir():
        raise WorkbookError(f"Cannot write {target}: it is a folder. Give a file name with -o.")
    os.unlink(_temporary(target))


def _temporary(target: Path) -> str:
    """A new empty file beside ``target`` (its folder created if missing), named to be found."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        raise WorkbookError(f"Cannot write {target}: {reason}. Choose another place for the "
                            "answers with -o.") from None
    os.close(fd)
    return tmp


def atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file beside ``target``, then rename: never a half-written file."""
    tmp = _temporary(target)
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


class SaveSchedule:
    """Saves a file while a run goes on, so answers appear in it as they arrive; a save that
    takes long (a big workbook) is repeated less often, spending at most ``share`` of the run
    on saving."""

    def __init__(self, share: float = 0.1) -> None:
        self.share = share
        self.last_end = time.monotonic()
        self.last_cost = 0.0

    def maybe(self, save: Callable[[], None]) -> None:
        if time.monotonic() - self.last_end >= self.last_cost / self.share:
            self.now(save)

    def now(self, save: Callable[[], None]) -> None:
        started = time.monotonic()
        save()
        self.last_end = time.monotonic()
        self.last_cost = self.last_end - started
