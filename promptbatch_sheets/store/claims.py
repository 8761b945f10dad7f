"""Claims: which prompts some process is asking a model for right now.

They live in the store's file, which every process of the user shares, so a second run (of
another sheet with the same prompts, or a collect, or ``serve``) waits for an answer that is
on its way instead of paying for it again. A claim names its holder and when the holder last
said it was alive; the claims of a process that died (kill -9 too) lapse: at once on the
same machine (its pid is gone), after ``STALE_S`` elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sqlite3
import time
from collections.abc import Collection

from ..lockfile import pid_alive
from . import CHUNK, Store

BEAT_S = 5.0
"""How often a holder says it is alive."""
STALE_S = 120.0
"""A holder silent this long is taken for dead: longer than any pause of a live run (a big
workbook's save), short enough that a lost machine does not stall the others for long."""


class Claims:
    """This process's claims, and the view of everyone else's. Every call tolerates a store
    that cannot be written: then nothing is shared, and a run just sends."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.host = socket.gethostname()
        self.owner = f"{self.host}:{os.getpid()}:{secrets.token_hex(4)}"

    def take(self, keys: list[str], stored: bool = True) -> dict[str, bool | None]:
        """Claim ``keys`` in one transaction (a commit per request would cost more than the
        rest of its bookkeeping). Each is True if now ours, False while a live holder
        elsewhere has it, None (and not claimed) if its answer is stored already
        (``stored``: an answer of any age will do)."""
        db = self._store.db
        taken: dict[str, bool | None] = {}
        try:
            with db:
                db.execute("BEGIN IMMEDIATE")
                for key in keys:
                    taken[key] = self._take(db, key, stored)
        except sqlite3.Error:
            return dict.fromkeys(keys, True)  # an unwritable store shares nothing: send
        return taken

    def _take(self, db: sqlite3.Connection, key: str, stored: bool) -> bool | None:
        if stored and db.execute("SELECT 1 FROM answers WHERE key = ?", (key,)).fetchone():
            return None
        row = db.execute("SELECT owner, host, pid, beat FROM claims WHERE key = ?",
                         (key,)).fetchone()
        if row is not None and row[0] != self.owner and self._alive(*row[1:]):
            return False
        db.execute("INSERT OR REPLACE INTO claims (key, owner, host, pid, beat) "
                   "VALUES (?, ?, ?, ?, ?)", (key, self.owner, self.host, os.getpid(), time.time()))
        return True

    def held(self, keys: Collection[str]) -> set[str]:
        """Those of ``keys`` that a live holder other than us still has."""
        found: set[str] = set()
        unique = list(keys)
        try:
            for start in range(0, len(unique), CHUNK):
                chunk = unique[start:start + CHUNK]
                rows = self._store.db.execute(
                    "SELECT key, owner, host, pid, beat FROM claims "
                    f"WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update(key for key, owner, *holder in rows
                             if owner != self.owner and self._alive(*holder))
        except sqlite3.Error:
            return set()
        return found

    def release(self, keys: Collection[str]) -> None:
        """Give up ``keys`` (answered, failed or abandoned): a waiter may take them."""
        self._quietly("DELETE FROM claims WHERE owner = ? AND key = ?",
                      [(self.owner, key) for key in keys])

    def release_all(self) -> None:
        self._quietly("DELETE FROM claims WHERE owner = ?", [(self.owner,)])

    def beat(self) -> None:
        """Say we are alive, for every claim we hold."""
        self._quietly("UPDATE claims SET beat = ? WHERE owner = ?", [(time.time(), self.owner)])

    def _quietly(self, sql: str, args: list[tuple[object, ...]]) -> None:
        with contextlib.suppress(sqlite3.Error):  # a claim that outlives us lapses anyway
            self._store.db.executemany(sql, args)

    def _alive(self, host: str, pid: int, beat: float) -> bool:
        if time.time() - beat > STALE_S:
            return False
        return host != self.host or pid_alive(pid)
