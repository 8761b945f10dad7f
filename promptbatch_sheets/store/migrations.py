"""The store's schema, one numbered migration a change: ``PRAGMA user_version`` records how
many have run, so a store file of any age is brought up to date when it is opened."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from ..providers import KINDS, same_address


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


def _m004_answers_by_server(db: sqlite3.Connection) -> None:
    """From here on an answer's key names its server when that is not the provider's own
    (``ModelSpec.label``); the label of a provider's own address is unchanged, so its answers
    stay valid. Before, a batch sent to another address stored its answers under the
    provider's own label, to be served as the provider's answers: the journal knows which,
    so they go (a rerun asks that server again under its new label), and so do the jobs' keys,
    which no longer name any request of theirs; the jobs are kept, closed, with the reason."""
    foreign = [job for job, provider, base_url in db.execute(
        "SELECT id, provider, base_url FROM batch_jobs")
        if provider not in KINDS or not same_address(base_url,
                                                     KINDS[provider].default_base_url)]
    for job in foreign:
        db.execute("DELETE FROM answers WHERE key IN (SELECT key FROM batch_keys WHERE job = ?)",
                   (job,))
        db.execute("DELETE FROM batch_keys WHERE job = ?", (job,))
        db.execute("UPDATE batch_jobs SET model = model || '@' || base_url, "
                   "collected = COALESCE(collected, ?), error = COALESCE(error, ?) WHERE id = ?",
                   (time.time(), "sent before answers were kept apart by server; not used",
                    job))


def _m005_claims(db: sqlite3.Connection) -> None:
    """Prompts some process is asking a model right now (claims.py): another process that
    needs the same answer waits for it instead of paying for it again. A claim names its
    holder (host, pid) and when it last said it was alive, so a dead holder's claims lapse."""
    db.execute(
        """CREATE TABLE claims (
               key TEXT PRIMARY KEY,
               owner TEXT NOT NULL,
               host TEXT NOT NULL,
               pid INTEGER NOT NULL,
               beat REAL NOT NULL
           ) WITHOUT ROWID"""
    )
    db.execute("CREATE INDEX claims_by_owner ON claims (owner)")


def _m006_speeds(db: sqlite3.Connection) -> None:
    """What the last realtime run of each model measured (latency, window, limits, tokens
    per second), as JSON: the next estimate of its time starts from it instead of a guess."""
    db.execute("CREATE TABLE speeds (model TEXT PRIMARY KEY, measured TEXT NOT NULL, "
               "updated REAL NOT NULL)")


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_answers, _m002_prompt_chars, _m003_batch_jobs, _m004_answers_by_server, _m005_claims,
    _m006_speeds]
"""Numbered by position; ``PRAGMA user_version`` records how many have run."""
