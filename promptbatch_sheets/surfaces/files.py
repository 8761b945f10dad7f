"""What the file surfaces share: where output goes and how it is replaced without harm."""

from __future__ import annotations

import os
import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from ..errors import WorkbookError
from ..lockfile import Busy, FileLock, pid_alive

STALE_TEMPORARY_S = 3600.0
"""A temporary file of ours older than this is stale even if its pid runs again: no save
takes an hour, and pids are reused."""


def default_output(source: Path) -> Path:
    """``book.xlsx`` -> ``book.promptbatch.xlsx`` beside it: the user's file stays untouched."""
    return source.with_name(f"{source.stem}.promptbatch{source.suffix}")


WORKBOOKS = (".xlsx", ".xlsm")
TEXT_TABLES = (".csv", ".tsv", ".txt")
SPREADSHEETS = WORKBOOKS + TEXT_TABLES
"""The file kinds promptbatch reads and writes, by extension."""


def check_readable(path: Path) -> None:
    if not path.exists():
        raise WorkbookError(f"{path} does not exist. Check the path and the file name.")
    if path.is_dir():
        found = sorted(p.name for p in path.iterdir()
                       if p.suffix.lower() in SPREADSHEETS and not p.name.startswith(("~$", ".")))
        held = f" It holds {', '.join(found[:5])}{', ...' if len(found) > 5 else ''}." \
            if found else ""
        raise WorkbookError(f"{str(path)!r} is a folder, not a spreadsheet: give the name of "
                            f"the .xlsx, .xlsm or .csv file to run.{held}")
    if not path.is_file():
        raise WorkbookError(f"{path} is not a regular file: give the name of the .xlsx, "
                            ".xlsm or .csv file to run.")


def check_output(target: Path) -> None:
    """Fail before the first paid answer if ``target`` cannot be written.

    Creates and removes a temporary file where the answers will go: a permission check alone
    is wrong for root, read-only mounts and /proc. An existing target is checked itself too:
    the folder may allow a rename over a file that is read-only, immutable or open elsewhere.
    """
    if target.is_dir():
        raise WorkbookError(f"Cannot write {target}: it is a folder. Give a file name with -o.")
    if target.exists():
        _check_replaceable(target)
    os.unlink(_temporary(target))


LOCK_FILES = (("~${}", "Excel"), (".~lock.{}#", "LibreOffice"))
"""The lock files Excel and LibreOffice keep beside a file they have open."""


def _check_replaceable(target: Path) -> None:
    """Refuse to replace a file its owner marked read-only, or that a spreadsheet program
    has open: that program would save its own copy over the answers, or hold the file."""
    for pattern, program in LOCK_FILES:
        lock = target.with_name(pattern.format(target.name))
        if lock.exists():
            raise WorkbookError(
                f"{target} is open in {program} (its lock file {lock.name} is beside it): "
                f"answers written now would be lost when {program} saves it. Close it there "
                f"and run again, or write elsewhere with -o. If it is not open, {lock} is left "
                "from a crash: delete it.")
    if not target.stat().st_mode & 0o222:
        raise WorkbookError(f"{target} is read-only, so promptbatch will not replace it. Make "
                            f"it writable (chmod u+w {target}), or write elsewhere with -o.")
    try:
        with target.open("ab"):  # opening for append writes nothing, and fails where a
            pass                 # write would: no permission, immutable (chattr +i)
    except OSError as exc:
        raise WorkbookError(f"Cannot write {target}: {exc.strerror}. Choose another place "
                            "for the answers with -o.") from None


class OutputLock:
    """Holds an output file for one run: two runs writing one file would pay every prompt
    twice, and the slower would save over the other's answers. The lock dies with its
    process, kill -9 included."""

    def __init__(self, target: Path) -> None:
        self.target = target
        self._lock = FileLock(target.with_name(f".{target.name}.lock"))

    def hold(self) -> None:
        """Check ``target`` can be written and take it, or refuse before anything is paid
        for; then remove the temporary files killed saves of ours left. Held already: no-op."""
        if self._lock.held:
            return
        check_output(self.target)
        try:
            self._lock.acquire()
        except Busy as busy:
            raise WorkbookError(
                f"Another promptbatch run ({busy}) is writing {self.target}. Wait until it "
                "ends, then run again (what it answered comes from the cache), or write "
                "elsewhere with -o.") from None
        remove_stale_temporaries(self.target)

    def release(self) -> None:
        self._lock.release()

    def replaces(self, source: Path) -> bool:
        """Whether the target is a file an earlier run wrote, apart from ``source``."""
        try:
            return self.target.is_file() and not self.target.samefile(source)
        except OSError:
            return False


def _temporary(target: Path) -> str:
    """A new empty file beside ``target`` (its folder created if missing), named to be found:
    ``.NAME.pbPID.XXXXXXXX.tmp``, so a later run knows it as ours and whether its writer is
    gone (``remove_stale_temporaries``)."""
    folder = target.parent if str(target.parent) else Path(".")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.pb{os.getpid()}.", suffix=".tmp",
                                   dir=folder)
    except OSError as exc:
        blocker = next((p for p in target.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file, not a folder" if blocker else exc.strerror or str(exc)
        raise WorkbookError(f"Cannot write {target}: {reason}. Choose another place for the "
                            "answers with -o.") from None
    os.close(fd)
    return tmp


def remove_stale_temporaries(target: Path) -> list[Path]:
    """Delete the temporary files our saves of ``target`` left when killed: only files named
    as ``_temporary`` names them (or as versions before the pid did, ``.NAME.XXXXXXXX.tmp``),
    owned by this user, whose process is gone or which are over an hour old. A user's own
    file never matches."""
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape(f".{target.name}.") + r"(?:pb(\d+)\.)?[a-z0-9_]{8}\.tmp")
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1) or 0) == os.getpid():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
            if not entry.is_file(follow_symlinks=False) or (
                    hasattr(os, "getuid") and info.st_uid != os.getuid()):
                continue
            gone = match.group(1) is not None and not pid_alive(int(match.group(1)))
            if gone or time.time() - info.st_mtime > STALE_TEMPORARY_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue  # another run removed it first, or it is not ours to remove
    return removed


def atomic_write(target: Path, write: Callable[[Path], None]) -> None:
    """Write to a temporary file beside ``target``, then rename: never a half-written file."""
    tmp = _temporary(target)
    try:
        write(Path(tmp))
        os.chmod(tmp, target.stat().st_mode & 0o777 if target.exists() else 0o666 & ~umask())
        os.replace(tmp, target)
    except OSError as exc:
        raise WorkbookError(f"Cannot write {target}: {exc.strerror}. Is it open in another "
                            "program, or read-only?") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def umask() -> int:
    """The process's umask: a new file gets the mode any editor would give it, not
    mkstemp's 0600."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
