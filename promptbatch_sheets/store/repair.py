"""A damaged cache file: moved aside (never deleted), and every row that can still be read
copied into the new file that takes its place, so a broken sector or a cut copy costs only
the answers it really destroyed."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TABLES = ("answers", "batch_jobs", "batch_keys")
"""What is worth keeping; claims are only true while their holders run."""
_HEX = "0123456789abcdef"
FETCH = 500


def damaged(exc: sqlite3.DatabaseError) -> bool:
    """Whether SQLite says the file itself is broken (corrupt, or not a database at all);
    full disks, locks and permissions are OperationalErrors, which moving aside would not fix."""
    return type(exc) is sqlite3.DatabaseError


def healthy(db: sqlite3.Connection) -> bool:
    """SQLite's own check of every page; only run once damage was seen (it reads the file)."""
    try:
        return bool(db.execute("PRAGMA quick_check(1)").fetchone()[0] == "ok")
    except sqlite3.DatabaseError:
        return False


def move_aside(path: Path) -> Path:
    """Rename ``path`` (file or folder, with its -wal) to a free
    ``NAME.damaged-YYYYmmdd-HHMMSS`` beside it, and return the new name."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = path.with_name(f"{path.name}.damaged-{stamp}")
    n = 1
    while aside.exists():
        n += 1
        aside = path.with_name(f"{path.name}.damaged-{stamp}-{n}")
    path.rename(aside)
    wal, shm = Path(f"{path}-wal"), Path(f"{path}-shm")
    if wal.exists():  # pages not yet in the file itself: they belong with it
        wal.rename(Path(f"{aside}-wal"))
    if shm.exists():  # an index SQLite rebuilds from the two
        shm.unlink()
    return aside


def salvage(source: Path, into: sqlite3.Connection) -> int:
    """Copy every readable row of ``source``'s tables into ``into``; returns the answers kept.

    Answers' keys are listed in 256 slices of the key space, then each answer is read by
    its key: a damaged page loses the rest of one slice, or one long answer whose overflow
    page it was, not the rest of the table."""
    if not source.is_file():
        return 0
    try:
        old = sqlite3.connect(f"{source.resolve().as_uri()}?mode=ro", uri=True)
        # a cut file is shorter than its header says; this lets SQLite read what is there
        old.execute("PRAGMA writable_schema=ON")
    except sqlite3.Error:
        return 0
    kept = 0
    try:
        with into:
            into.execute("BEGIN IMMEDIATE")
            for table in TABLES:
                columns = _common_columns(old, into, table)
                if not columns:
                    continue
                names = ", ".join(columns)
                insert = (f"INSERT OR IGNORE INTO {table} ({names}) "
                          f"VALUES ({', '.join('?' * len(columns))})")
                for rows in _readable(old, table, names):
                    into.executemany(insert, rows)
                    if table == "answers":
                        kept += len(rows)
    finally:
        old.close()
        _tidy(source)
    return kept


def _tidy(source: Path) -> None:
    """Reading made SQLite's side files beside the damaged copy; only a non-empty WAL holds
    anything of it."""
    wal, shm = Path(f"{source}-wal"), Path(f"{source}-shm")
    with contextlib.suppress(OSError):
        if wal.stat().st_size == 0:
            wal.unlink()
    with contextlib.suppress(OSError):
        shm.unlink()


def _common_columns(old: sqlite3.Connection, new: sqlite3.Connection, table: str) -> list[str]:
    """Columns both files give ``table`` (an older file may lack later ones)."""
    try:
        have = [r[1] for r in old.execute(f"PRAGMA table_info({table})")]
    except sqlite3.DatabaseError:
        return []
    wanted = {r[1] for r in new.execute(f"PRAGMA table_info({table})")}
    return [c for c in have if c in wanted]


def _readable(old: sqlite3.Connection, table: str, names: str) -> Iterator[list[Any]]:
    """Blocks of rows, as many as can be read before a damaged page stops each scan."""
    if table != "answers":
        yield from _scan(old, f"SELECT {names} FROM {table}", ())
        return
    slices = [(first + second, first + chr(ord(second) + 1))
              for first in _HEX for second in _HEX]
    keys = [key for low, high in slices for rows in _scan(
        old, "SELECT key FROM answers WHERE key >= ? AND key < ?", (low, high)) for (key,) in rows]
    keys += [key for rows in _scan(old, "SELECT key FROM answers WHERE key < '0' OR key >= 'g'",
                                   ()) for (key,) in rows]
    block: list[Any] = []
    for key in keys:
        block += next(_scan(old, f"SELECT {names} FROM answers WHERE key = ?", (key,)), [])
        if len(block) >= FETCH:
            yield block
            block = []
    if block:
        yield block


def _scan(old: sqlite3.Connection, sql: str, args: tuple[str, ...]) -> Iterator[list[Any]]:
    rows: list[Any] = []
    try:
        for row in old.execute(sql, args):
            rows.append(row)
            if len(rows) == FETCH:
                yield rows
                rows = []
    except sqlite3.DatabaseError:
        pass  # the rest of this scan lies behind a damaged page
    if rows:
        yield rows
