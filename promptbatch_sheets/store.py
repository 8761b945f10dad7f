"""The answer cache on disk: SQLite, content-addressed, shared by every surface.

A key is the SHA-256 of the model, the parameters and the rendered prompt, so the same
question to the same model is paid for once, whichever sheet or tool asks it.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from .providers import Completion, Params

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
         **({"schema": params.schema} if params.schema else {})},
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


def _m001_answers(db: sqlite3.Connection) -> None:
    db.execute(
        """CREATE TABLE answers (
               key TEXT PRIMARY KEY,
               model TEXT NOT NULL,
               text TEXT NOT NULL,
               prompt_tokens INTEGER NOT NULL,
               completion_tokens INTEGER NOT NULL,
               finish_reason TEXT,
               created REAL NOT NULL
           ) WITHOUT ROWID"""
    )


def _m002_prompt_chars(db: sqlite3.Connection) -> None:
    """Characters each answer's request sent: with its prompt_tokens they teach the estimate
    the model's tokens per character. Older answers stay NULL and are not used."""
    db.execute("ALTER TABLE answers ADD COLUMN prompt_chars INTEGER")
    db.execute("CREATE INDEX answers_by_model ON answers (model, created)")


def _m003_batch_jobs(db: sqlite3.Connection) -> None:
    """Provider Batch API jobs and the answer keys each carries (journal.py): a collect on any
    machine sharing this file knows what to fetch, and a rerun does not send a key twice. The
    journal names the server, never a key: whoever polls brings their own."""
    db.execute(
        """CREATE TABLE batch_jobs (
               id TEXT PRIMARY KEY,
               provider TEXT NOT NULL,
               model TEXT NOT NULL,
               base_url TEXT NOT NULL,
               created REAL NOT NULL,
               status TEXT NOT NULL,
               requests INTEGER NOT NULL,
               counts TEXT NOT NULL,
               estimate_usd REAL,
               collected REAL,
               error TEXT
           )"""
    )
    db.execute(
        """CREATE TABLE batch_keys (
               job TEXT NOT NULL REFERENCES batch_jobs (id),
               key TEXT NOT NULL,
               prompt_chars INTEGER NOT NULL,
               error TEXT,
               PRIMARY KEY (job, key)
           ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX batch_keys_by_key ON batch_keys (key)")


def _m004_speeds(db: sqlite3.Connection) -> None:
    """What the last realtime run of each model measured (latency, window, limits, tokens
    per second), as JSON: the next estimate of its time starts from it instead of a guess."""
    db.execute("CREATE TABLE speeds (model TEXT PRIMARY KEY, measured TEXT NOT NULL, "
               "updated REAL NOT NULL)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_answers, _m002_prompt_chars,
                                                          _m003_batch_jobs, _m004_speeds]
"""Numbered by position; ``PRAGMA user_version`` records how many have run."""


class Store:
    """Answers by key. Each answer is committed as it arrives, so a crash loses none."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                   timeout=30)
        self._migrate()
        self._use_wal()
        self._db.execute("PRAGMA synchronous=NORMAL")

    def _use_wal(self) -> None:
        """WAL lets readers and one writer share the file; the mode is stored in the file, and
        switching to it fails at once (no busy wait) while another opener holds it, so retry."""
        for _ in range(100):
            try:
                if self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0] == "wal":
                    return
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)

    def _migrate(self) -> None:
        """Run the migrations this file lacks; the version is read under the write lock, so
        two processes opening a new cache at once do not both create its tables."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            done = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            for number, migration in enumerate(MIGRATIONS[done:], start=done + 1):
                migration(self._db)
                self._db.execute(f"PRAGMA user_version={number}")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def get_many(self, keys: Iterable[str]) -> dict[str, Completion]:
        """The stored answers among ``keys``. Keys are looked up in sorted order, so each
        chunk reads neighbouring pages of the table: twice as fast as random order."""
        found: dict[str, Completion] = {}
        unique = sorted(set(keys))
        for start in range(0, len(unique), CHUNK):
            chunk = unique[start:start + CHUNK]
            marks = ",".join("?" * len(chunk))
            rows = self._db.execute(
                "SELECT key, text, prompt_tokens, completion_tokens, finish_reason "
                f"FROM answers WHERE key IN ({marks})", chunk)
            for key, text, p, c, finish in rows:
                found[key] = Completion(text, p, c, finish)
        return found

    def put(self, key: str, model: str, completion: Completion,
            prompt_chars: int | None = None) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO answers (key, model, text, prompt_tokens, completion_tokens, "
            "finish_reason, created, prompt_chars) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (key, model, completion.text, completion.prompt_tokens,
             completion.completion_tokens, completion.finish_reason, time.time(), prompt_chars),
        )

    def put_many(self, model: str, answers: Iterable[tuple[str, Completion, int | None]]) -> None:
        """Store (key, completion, prompt_chars) triples in one transaction: a Batch API
        results file holds up to 100,000 answers, too many for a commit each."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            for key, completion, prompt_chars in answers:
                self.put(key, model, completion, prompt_chars)

    def history(self, model: str, limit: int = HISTORY) -> list[tuple[int, int, int]]:
        """(prompt_chars, prompt_tokens, completion_tokens) of the model's latest answers whose
        server reported usage, newest first."""
        rows = self._db.execute(
            "SELECT prompt_chars, prompt_tokens, completion_tokens FROM answers "
            "WHERE model = ? AND prompt_chars IS NOT NULL AND prompt_tokens > 0 "
            "ORDER BY created DESC LIMIT ?", (model, limit))
        return [(int(c), int(p), int(a)) for c, p, a in rows]

    def speed(self, model: str) -> dict[str, float] | None:
        """What the model's last realtime run measured (see ``estimate.timing``), if any."""
        row = self._db.execute("SELECT measured FROM speeds WHERE model = ?", (model,)).fetchone()
        return {k: float(v) for k, v in json.loads(row[0]).items()} if row else None

    def put_speed(self, model: str, measured: dict[str, float]) -> None:
        self._db.execute("INSERT OR REPLACE INTO speeds VALUES (?, ?, ?)",
                         (model, json.dumps(measured), time.time()))

    @property
    def db(self) -> sqlite3.Connection:
        """The connection, for the batch journal that shares this file (journal.py)."""
        return self._db

    def close(self) -> None:
        self._db.close()
