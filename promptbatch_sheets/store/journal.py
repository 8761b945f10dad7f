"""The batch journal: which provider Batch API jobs hold which answer keys.

It lives in the store's SQLite file because that file is what machines share
(``PROMPTBATCH_HOME``): a job sent from one machine can be collected on another, and a rerun
anywhere knows which keys are already on their way. No API key is ever written here.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from typing import Any

from ..errors import CacheError
from . import CHUNK, Store


@dataclass(frozen=True)
class Job:
    """One provider batch, as last seen."""

    id: str
    """The provider's batch id."""
    provider: str
    model: str
    """The answers' cache label, e.g. ``openai:gpt-4o-mini``, or with its server when that is
    not the provider's own (``openai:gpt-4o-mini@http://127.0.0.1:8400/v1``)."""
    base_url: str
    """Where it was sent, and so where it is polled (with the poller's own key)."""
    created: float
    status: str
    requests: int
    counts: dict[str, int]
    """The provider's own request_counts, as it names them."""
    estimate_usd: float | None = None
    """The estimated cost at batch price when it was sent."""
    collected: float | None = None
    """When its results reached the answer cache; None while it may still hold answers."""
    error: str | None = None
    """Why the whole batch gave no answers, when it did not."""

    @property
    def open(self) -> bool:
        return self.collected is None

    @property
    def model_name(self) -> str:
        """``provider:model``, without the server its label may name."""
        return self.model.removesuffix(f"@{self.base_url}")


_COLUMNS = ("id, provider, model, base_url, created, status, requests, counts, estimate_usd, "
            "collected, error")


def _job(row: tuple[Any, ...]) -> Job:
    values = list(row)
    values[7] = json.loads(values[7])
    return Job(*values)


def _chunks(keys: Collection[str]) -> Iterator[tuple[list[str], str]]:
    """Keys in slices a single statement can bind, with their placeholders."""
    unique = list(dict.fromkeys(keys))
    for start in range(0, len(unique), CHUNK):
        chunk = unique[start:start + CHUNK]
        yield chunk, ",".join("?" * len(chunk))


class Journal:
    """Jobs and their keys; each change is one transaction, so a crash leaves no half job."""

    def __init__(self, store: Store) -> None:
        if not store.durable:
            raise CacheError(
                f"Batch API jobs are recorded in the cache {store.path}, which cannot be used "
                f"now (see above): a job sent without its record could never be collected. "
                f"{store.fix()}")
        self._store = store

    @property
    def _db(self) -> sqlite3.Connection:
        """The store's connection of the moment: a repair mid-run replaces it."""
        return self._store.db

    def add(self, job: Job, prompt_chars: dict[str, int]) -> None:
        """Record a job the provider accepted, with the keys it carries."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                f"INSERT INTO batch_jobs ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.provider, job.model, job.base_url, job.created, job.status,
                 job.requests, json.dumps(job.counts), job.estimate_usd, job.collected,
                 job.error))
            self._db.executemany(
                "INSERT INTO batch_keys (job, key, prompt_chars) VALUES (?, ?, ?)",
                ((job.id, key, chars) for key, chars in prompt_chars.items()))

    def update(self, job_id: str, status: str, counts: dict[str, int]) -> None:
        self._db.execute("UPDATE batch_jobs SET status = ?, counts = ? WHERE id = ?",
                         (status, json.dumps(counts), job_id))

    def finish(self, job_id: str, status: str, counts: dict[str, int], error: str | None,
               failures: dict[str, str]) -> None:
        """Mark a job collected, with the reason of every key that got no answer."""
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "UPDATE batch_jobs SET status = ?, counts = ?, error = ?, collected = ? "
                "WHERE id = ?", (status, json.dumps(counts), error, time.time(), job_id))
            self._db.executemany("UPDATE batch_keys SET error = ? WHERE job = ? AND key = ?",
                                 ((reason, job_id, key) for key, reason in failures.items()))

    def jobs(self, keys: Collection[str] | None = None) -> list[Job]:
        """Every job, oldest first; or only those holding one of ``keys``."""
        if keys is None:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM batch_jobs ORDER BY created")
            return [_job(r) for r in rows]
        ids: set[str] = set()
        for chunk, marks in _chunks(keys):
            ids.update(r[0] for r in self._db.execute(
                f"SELECT DISTINCT job FROM batch_keys WHERE key IN ({marks})", chunk))
        return [j for j in self.jobs() if j.id in ids]

    def prompt_chars(self, job_id: str) -> dict[str, int]:
        """The job's keys, with the characters each request sent (for the estimates)."""
        rows = self._db.execute("SELECT key, prompt_chars FROM batch_keys WHERE job = ?",
                                (job_id,))
        return {key: int(chars) for key, chars in rows}

    def in_flight(self, keys: Collection[str]) -> dict[str, str]:
        """Those of ``keys`` in a job not yet collected, with that job's id."""
        found: dict[str, str] = {}
        for chunk, marks in _chunks(keys):
            found.update(self._db.execute(
                "SELECT k.key, k.job FROM batch_keys k JOIN batch_jobs j ON j.id = k.job "
                f"WHERE j.collected IS NULL AND k.key IN ({marks})", chunk))
        return found

    def failures(self, keys: Collection[str]) -> dict[str, str]:
        """Those of ``keys`` whose latest collected job gave no answer, with the reason."""
        latest: dict[str, str | None] = {}
        for chunk, marks in _chunks(keys):
            rows = self._db.execute(
                "SELECT k.key, k.error FROM batch_keys k JOIN batch_jobs j ON j.id = k.job "
                f"WHERE j.collected IS NOT NULL AND k.key IN ({marks}) ORDER BY j.collected",
                chunk)
            latest.update(rows)
        return {key: reason for key, reason in latest.items() if reason is not None}
