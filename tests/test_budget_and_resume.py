"""Money and crashes: a budget is never crossed, and kill -9 loses no answer that came back."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import openpyxl
import pytest

from promptbatch_sheets.estimate import cost
from tests.conftest import cli
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer


def write_rows(path: Path, n: int) -> Path:
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([["item"]] + [[f"item number {i}"] for i in range(n)])
    return path


def test_budget_stops_before_crossing_and_leaves_rows_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    book = write_rows(tmp_path / "b.csv", 30)
    budget = 0.0006
    with FakeLLMServer(FakeLLMConfig(completion_tokens=100)) as server:
        result = cli("run", str(book), "--template", "Describe {{ item }}.", "--model",
                     "openai:gpt-4o-mini", "--base-url", server.base_url, "--max-tokens", "100",
                     "--concurrency", "4", "--budget", str(budget))
        usage = [r for r in server.requests if r["status"] == 200]
    assert result.exit_code == 1
    assert "Budget $0.0006 reached" in " ".join(result.output.split())
    spent = sum(cost("openai:gpt-4o-mini", len(r["json"]["messages"][0]["content"]) // 4 + 1,
                     100) or 0 for r in usage)
    assert 0 < spent <= budget
    with (tmp_path / "b.promptbatch.csv").open(newline="") as handle:
        answers = [row[1] if len(row) > 1 else "" for row in list(csv.reader(handle))[1:]]
    assert sum(1 for a in answers if a) == len(usage) < 30
    assert all(a == "" or a.startswith("Answer:") for a in answers)  # unsent rows: empty


def test_budget_needs_a_known_price(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = write_rows(tmp_path / "b.csv", 2)
    result = cli("run", str(book), "--template", "{{ item }}", "--model",
                 "openai-compatible:mystery", "--base-url", llm.base_url, "--budget", "1")
    assert result.exit_code == 2 and "not in the price table" in result.output


def test_kill_9_mid_run_then_rerun_finishes_without_paying_twice(
    tmp_path: Path, isolated_home: Path
) -> None:
    book = write_rows(tmp_path / "b.csv", 60)
    out = tmp_path / "out.csv"
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.15)) as server:
        command = [sys.executable, "-m", "promptbatch_sheets.cli", "run", str(book),
                   "--template", "Describe {{ item }}.", "-o", str(out), "--concurrency", "4",
                   "--model", "openai-compatible:fake", "--base-url", server.base_url]
        env = {**os.environ, "PROMPTBATCH_HOME": str(isolated_home)}
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        db = isolated_home / "answers.sqlite3"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if db.exists() and _stored(db) >= 10:
                break
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        stored_before = _stored_prompts(db, server)
        assert 10 <= len(stored_before) < 60
        first_run = len(server.prompts)
        again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert again.returncode == 0, again.stderr
        resent = server.prompts[first_run:]
    assert not set(resent) & stored_before  # nothing already paid for was sent again
    assert len(set(server.prompts)) == 60
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    assert [r[1] for r in rows] == [f"Answer: Describe item number {i}." for i in range(60)]


def _stored(db: Path) -> int:
    with sqlite3.connect(db) as con:
        try:
            return int(con.execute("SELECT count(*) FROM answers").fetchone()[0])
        except sqlite3.OperationalError:
            return 0


def _stored_prompts(db: Path, server: FakeLLMServer) -> set[str]:
    """The prompts whose answers the killed run had stored (matched through their text)."""
    with sqlite3.connect(db) as con:
        texts = {row[0] for row in con.execute("SELECT text FROM answers")}
    return {p for p in server.prompts if f"Answer: {p}" in texts}


def test_answers_reach_the_file_while_the_run_goes_on(tmp_path: Path) -> None:
    book = write_rows(tmp_path / "b.csv", 40)
    out = tmp_path / "b.promptbatch.csv"
    seen: list[int] = []

    def watch() -> None:
        while not done:
            if out.exists():
                with out.open(newline="") as handle:
                    seen.append(sum(1 for r in list(csv.reader(handle))[1:] if len(r) > 1 and r[1]))
            time.sleep(0.2)

    done = False
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.3)) as server:
        watcher = threading.Thread(target=watch)
        watcher.start()
        result = cli("run", str(book), "--template", "{{ item }}", "--concurrency", "2",
                     "--model", "openai-compatible:fake", "--base-url", server.base_url)
        done = True
        watcher.join()
    assert result.exit_code == 0
    assert any(0 < n < 40 for n in seen)  # a partial file, readable, before the end


def test_xlsx_answers_reach_the_workbook_while_the_run_goes_on(tmp_path: Path) -> None:
    book = tmp_path / "b.xlsx"
    wb = openpyxl.Workbook()
    wb.active.append(["item"])
    for i in range(30):
        wb.active.append([f"item {i}"])
    wb.save(book)
    out = tmp_path / "b.promptbatch.xlsx"
    seen: list[int] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if out.exists():
                ws = openpyxl.load_workbook(out, read_only=True).active
                seen.append(sum(1 for (v,) in ws.iter_rows(min_row=2, min_col=2, max_col=2,
                                                           values_only=True) if v))
            time.sleep(0.2)

    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.3)) as server:
        watcher = threading.Thread(target=watch)
        watcher.start()
        result = cli("run", str(book), "--template", "{{ item }}", "--concurrency", "2",
                     "--model", "openai-compatible:fake", "--base-url", server.base_url)
        done.set()
        watcher.join()
    assert result.exit_code == 0
    assert any(0 < n < 30 for n in seen)
