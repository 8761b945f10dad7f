"""The batch journal: which keys are on their way, and why a finished job left some unanswered."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from promptbatch_sheets.providers import Completion
from promptbatch_sheets.store import Store
from promptbatch_sheets.store.journal import Job, Journal


def job(job_id: str, created: float) -> Job:
    return Job(job_id, "openai", "openai:m", "http://127.0.0.1:9/v1", created, "validating", 2,
               {}, 0.5)


def test_keys_are_in_flight_until_collected_and_the_latest_reason_wins(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    journal = Journal(store)
    journal.add(job("b1", 1.0), {"k1": 10, "k2": 20})
    assert journal.in_flight(["k1", "k2", "k3"]) == {"k1": "b1", "k2": "b1"}
    journal.update("b1", "in_progress", {"total": 2, "completed": 1})
    assert journal.jobs(["k2"])[0].counts == {"total": 2, "completed": 1}

    journal.finish("b1", "expired", {"total": 2}, None, {"k2": "expired"})
    assert journal.in_flight(["k1", "k2"]) == {}
    assert journal.failures(["k1", "k2"]) == {"k2": "expired"}
    assert not journal.jobs()[0].open

    journal.add(job("b2", 2.0), {"k2": 20})  # sent again, and this time answered
    assert journal.in_flight(["k2"]) == {"k2": "b2"}
    journal.finish("b2", "completed", {"total": 1}, None, {})
    assert journal.failures(["k2"]) == {}
    assert [j.id for j in journal.jobs(["k2"])] == ["b1", "b2"]
    assert journal.prompt_chars("b1") == {"k1": 10, "k2": 20}
    store.close()


def test_put_many_stores_answers_in_one_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    store.put_many("openai:m", [(f"k{i}", Completion(f"a{i}", 1, 2), 5) for i in range(3)])
    assert store.get_many(["k0", "k2"])["k2"].text == "a2"
    store.close()
    tables = sqlite3.connect(tmp_path / "c.sqlite3").execute(
        "SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert {("batch_jobs",), ("batch_keys",)} <= set(tables)
