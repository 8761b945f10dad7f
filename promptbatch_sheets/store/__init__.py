"""The answer cache on disk: SQLite, content-addressed, shared by every surface.

A key is the SHA-256 of the model's label (which names its server, so that one server's
answer is never served as another's), the parameters and the rendered prompt: the same
question to the same model is paid for once, whichever sheet or tool asks it. Schema changes
are numbered migrations (migrations.py); the Batch API journal (journal.py) and the claims
that keep two processes from paying for one prompt (claims.py) live in the same file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from ..lockfile import FileLock
from ..providers import Completion, Params
from .migrations import MIGRATIONS
from .repair import damaged, healthy, move_aside, salvage

CHUNK = 500
"""Keys per SELECT: well under SQLite's limit on bound parameters."""
HISTORY = 1000
"""Latest answers of a model read to calibrate estimates: recent enough to follow a changed
template or server, many enough to average out odd answers."""


def default_path() -> Path:
    """``$PROMPTBATCH_HOME/answers.sqlite3``, else the user's cache folder."""
    home = os.environ.get("PROMPTBATCH_HOME")
    if home:
        return Path(home) / "answers.sqlite3"
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "promptbatch" / "answers.sqlite3"


_JSON = json.JSONEncoder(ensure_ascii=False)


def answer_key(label: str, params: Params, prompt: str) -> str:
    """What makes two requests the same request."""
    return key_function(label, params)(prompt)


def key_function(label: str, params: Params) -> Callable[[str], str]:
    """``answer_key`` for many prompts to one model. The key hashes sorted JSON of the model,
    the parameters and the prompt; all but the prompt is encoded and hashed once, as a
    100,000-row rerun spends a large share of its time hashing keys."""
    material = json.dumps(
        {"model": label, "temperature": params.temperature, "max_tokens": params.max_tokens,
         "system": params.system, "prompt": "",
         **({"schema": params.schema} if params.schema else {}),
         **({"seed": params.seed} if params.seed is not None else {})},
        sort_keys=True, ensure_ascii=False,
    )
    # Quotes inside JSON strings are escaped, so this is the "prompt" key and nothing else.
    head, _, tail = material.partition('"prompt": ""')
    start = hashlib.sha256(f'{head}"prompt": '.encode())

    def key(prompt: str) -> str:
        digest = start.copy()
        digest.update(f"{_JSON.encode(prompt)}{tail}".encode())
        return digest.hexdigest()

    return key


class Store:
    """Answers by key. Each answer is committed as it arrives, so a crash loses none.

    The file is never a reason to stop a run: a damaged one is moved aside (its readable rows
    copied into a new one), and one that cannot be written (a full disk, a read-only folder)
    leaves the run's answers in memory, for the output; ``notices`` says so, one line each.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.notices: list[str] = []
        """What the user should hear about the cache file, one line each."""
        self.unsaved = 0
        """Answers this process got that the file refused: they are in memory only."""
        self.write_error: str | None = None
        self._memory: dict[str, Completion] = {}
        self._db = self._open()

    @property
    def durable(self) -> bool:
        """Whether what is stored here outlives this process."""
        return self._durable

    def _open(self) -> sqlite3.Connection:
        self._durable = True
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            return _connect(self.path)
        except sqlite3.DatabaseError as exc:
            if damaged(exc) or self.path.is_dir():
                return self._replace(str(exc))
            reason = str(exc)
        except OSError as exc:
            reason = exc.strerror or str(exc)
        return self._in_memory(reason)

    def _replace(self, reason: str) -> sqlite3.Connection:
        """Move the damaged file aside and start a new one with what could be read; under a
        lock, so two processes finding it damaged do not both move files."""
        try:
            with FileLock(self.path.with_name(f"{self.path.name}.lock"), wait=True):
                try:  # another process may have repaired it meanwhile
                    db = _connect(self.path)
                    if healthy(db):
                        return db
                    db.close()
                except sqlite3.DatabaseError as exc:
                    if not (damaged(exc) or self.path.is_dir()):
                        raise
                was = "a folder, not a cache file" if self.path.is_dir() else \
                    f"damaged ({reason})"
                aside = move_aside(self.path)
                db = _connect(self.path)
                kept = salvage(aside, db)
        except (sqlite3.DatabaseError, OSError) as exc:
            return self._in_memory(str(exc))
        holds = f"holds the {kept:,} answers that could be read from it" if kept else \
            "starts empty: no answer could be read from it"
        self.notices.append(
            f"The cache {self.path} was {was}: it was moved aside to {aside.name}, and a new "
            f"cache {holds}. Nothing to do; delete {aside} once you no longer want it.")
        return db

    def _in_memory(self, reason: str) -> sqlite3.Connection:
        self._durable = False
        self.write_error = self.write_error or reason
        self.notices.append(
            f"Cannot use the cache {self.path} ({reason}): this run keeps its answers in "
            f"memory and writes them to the output, but a rerun pays for them again. "
            f"{self.fix()}")
        return _connect(None)

    def _lost(self, exc: sqlite3.DatabaseError) -> None:
        """The file failed mid-run in a way a repair cannot mend (a full disk, an I/O
        error): the rest of the run works in memory."""
        self._db.close()
        self._db = self._in_memory(str(exc))

    def take_notices(self) -> list[str]:
        """The notices not yet shown, which are then shown."""
        shown, self.notices = self.notices, []
        return shown

    def fix(self) -> str:
        return (f"Free space or fix permissions in {self.path.parent}, or set PROMPTBATCH_HOME "
                "to a folder with room.")

    def _recover(self, exc: sqlite3.DatabaseError) -> bool:
        """A damaged page met mid-run: swap in a repaired file; True if the caller may retry."""
        if not (damaged(exc) and self._durable):
            return False
        self._db.close()
        self._db = self._replace(str(exc))
        return True

    def get_many(self, keys: Iterable[str], since: float = 0.0) -> dict[str, Completion]:
        """The stored answers among ``keys`` (only those stored at ``since`` or later). Keys
        are looked up in sorted order, so each chunk reads neighbouring pages of the table:
        twice as fast as random order."""
        unique = sorted(set(keys))
        try:
            found = self._select(unique, since)
        except sqlite3.DatabaseError as exc:
            if self._recover(exc):
                found = self._select(unique, since)
            else:
                self._lost(exc)
                found = {}
        found.update((k, self._memory[k]) for k in unique if k in self._memory)
        return found

    def _select(self, unique: list[str], since: float) -> dict[str, Completion]:
        found: dict[str, Completion] = {}
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, finish_reason "
                f"FROM answers WHERE key IN ({marks}) AND created >= ?", [*chunk, since])
            for key, text, p, c, finish in rows:
                found[key] = Completion(text, p, c, finish)
        return found

    def put(self, key: str, model: str, completion: Completion,
            prompt_chars: int | None = None, claimed_by: str | None = None) -> None:
        """Store one answer; ``claimed_by`` names the claim (claims.py) it ends, released
        in the same transaction so no waiter ever sees neither the claim nor the answer."""
        self.put_many(model, [(key, completion, prompt_chars)], claimed_by)

    def put_many(self, model: str, answers: Iterable[tuple[str, Completion, int | None]],
                 claimed_by: str | None = None) -> None:
        """Store (key, completion, prompt_chars) triples in one transaction: a Batch API
        results file holds up to 100,000 answers, too many for a commit each. Answers the
        file refuses stay in memory, for this process's later lookups."""
        batch = list(answers)
        for attempt in (1, 2):
            if not self._durable:
                break
            try:
                self._insert(model, batch, claimed_by)
                return
            except sqlite3.DatabaseError as exc:
                if attempt == 1 and self._recover(exc):
                    continue
                self.write_error = self.write_error or str(exc)
                break
        self.unsaved += sum(1 for key, _, _ in batch if key not in self._memory)
        self._memory.update((key, completion) for key, completion, _ in batch)

    def _insert(self, model: str, batch: list[tuple[str, Completion, int | None]],
                claimed_by: str | None) -> None:
        now = time.time()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "INSERT OR REPLACE INTO answers (key, model, text, prompt_tokens, "
                "completion_tokens, finish_reason, created, prompt_chars) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                ((key, model, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason,
                  now, chars) for key, c, chars in batch))
            if claimed_by is not None:
                self._db.executemany("DELETE FROM claims WHERE key = ? AND owner = ?",
                                     ((key, claimed_by) for key, _, _ in batch))

    def unsaved_notice(self) -> str | None:
        """The line that says which answers only the output holds, if any."""
        if not self.unsaved:
            return None
        return (f"{self.unsaved:,} answers were not cached ({self.write_error} in "
                f"{self.path}): they are in the output, but a rerun pays for them again. "
                f"{self.fix()}")

    def history(self, model: str, limit: int = HISTORY) -> list[tuple[int, int, int]]:
        """(prompt_chars, prompt_tokens, completion_tokens) of the model's latest answers whose
        server reported usage, newest first."""
        try:
            rows = self._db.execute(
                "SELECT prompt_chars, prompt_tokens, completion_tokens FROM answers "
                "WHERE model = ? AND prompt_chars IS NOT NULL AND prompt_tokens > 0 "
                "ORDER BY created DESC LIMIT ?", (model, limit)).fetchall()
        except sqlite3.DatabaseError as exc:
            if not self._recover(exc):
                self._lost(exc)
            return []
        return [(int(c), int(p), int(a)) for c, p, a in rows]

    def speed(self, model: str) -> dict[str, float] | None:
        """What the model's last realtime run measured (see ``estimate.timing``), if any; a
        cache that cannot say is no history."""
        try:
            row = self._db.execute("SELECT measured FROM speeds WHERE model = ?",
                                   (model,)).fetchone()
        except sqlite3.DatabaseError:
            return None
        return {k: float(v) for k, v in json.loads(row[0]).items()} if row else None

    def put_speed(self, model: str, measured: dict[str, float]) -> None:
        """Keep what a run measured; a cache that cannot take it loses only an estimate."""
        with contextlib.suppress(sqlite3.DatabaseError):
            self._db.execute("INSERT OR REPLACE INTO speeds VALUES (?, ?, ?)",
                             (model, json.dumps(measured), time.time()))

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the batch journal and the claims that share this file."""
        return self._db

    def close(self) -> None:
        self._db.close()


def _connect(path: Path | None) -> sqlite3.Connection:
    """The file at ``path`` (None: memory), brought to the latest schema."""
    db = sqlite3.connect(":memory:" if path is None else path, isolation_level=None,
                         check_same_thread=False, timeout=30)
    try:
        _migrate(db)
        if path is not None:
            _use_wal(db)
            db.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        db.close()
        raise
    return db


def _use_wal(db: sqlite3.Connection) -> None:
    """WAL lets readers and one writer share the file; the mode is stored in the file, and
    switching to it fails at once (no busy wait) while another opener holds it, so retry."""
    for _ in range(100):
        try:
            if db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.05)


def _migrate(db: sqlite3.Connection) -> None:
    """Run the migrations this file lacks; the version is read under the write lock, so
    two processes opening a new cache at once do not both create its tables."""
    db.execute("BEGIN IMMEDIATE")
    try:
        done = int(db.execute("PRAGMA user_version").fetchone()[0])
        for number, migration in enumerate(MIGRATIONS[done:], start=done + 1):
            migration(db)
            db.execute(f"PRAGMA user_version={number}")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
