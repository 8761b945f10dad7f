"""Two runs, crashes and broken stores (issue 12, items 10-12): real CLI processes and a real
server against the loopback fake model, which counts every request it is paid for."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import openpyxl
import pytest

from tests.conftest import cli
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer
from tests.test_server import AUTH, make_app, running

PROMPTBATCH = str(Path(sys.executable).with_name("promptbatch"))
TEMPLATE = "Describe {{ item }}."


def make_book(path: Path, n: int) -> Path:
    wb = openpyxl.Workbook()
    wb.active.append(["item"])
    for i in range(n):
        wb.active.append([f"item {i}"])
    wb.save(path)
    return path


def answers(path: Path) -> list[object]:
    ws = openpyxl.load_workbook(path, read_only=True).active
    return [v for (v,) in ws.iter_rows(min_row=2, min_col=2, max_col=2, values_only=True)]


def expected(n: int, prefix: str = "Answer: ") -> list[object]:
    return [f"{prefix}Describe item {i}." for i in range(n)]


def command(book: Path, out: Path, server: FakeLLMServer, *extra: str) -> list[str]:
    return [PROMPTBATCH, "run", str(book), "--template", TEMPLATE, "-o", str(out),
            "--concurrency", "4", "--model", "openai-compatible:fake", "--base-url",
            server.base_url, *extra]


def start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_until(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def said(text: str) -> str:
    """What a user reads, with the terminal's line breaks undone."""
    return " ".join(text.split())


def stored_texts(db: Path) -> set[str]:
    try:
        with sqlite3.connect(db) as con:
            return {row[0] for row in con.execute("SELECT text FROM answers")}
    except sqlite3.Error:
        return set()


# ----------------------------------------------------------------- item 10: two runs at once

def test_a_second_run_of_the_same_output_is_refused_and_the_output_keeps_every_answer(
        tmp_path: Path) -> None:
    book, out = make_book(tmp_path / "b.xlsx", 60), tmp_path / "out.xlsx"
    gate, asked = threading.Event(), []

    def held_after_eight(prompt: str) -> str:  # the first run stays mid-run until released
        asked.append(prompt)
        if len(asked) > 8:
            gate.wait(60)
        return f"Answer: {prompt}"

    with FakeLLMServer(FakeLLMConfig(answer=held_after_eight)) as server:
        first = start(command(book, out, server))
        wait_until(lambda: len(asked) > 8)
        second = subprocess.run(command(book, out, server), capture_output=True, text=True,
                                timeout=120)
        gate.set()
        first.communicate(timeout=120)
    assert second.returncode == 2, second.stderr
    message = said(second.stderr)
    assert f"Another promptbatch run (pid {first.pid}, started " in message
    assert f"is writing {out}. Wait until it ends" in message
    assert "Traceback" not in second.stderr
    assert first.returncode == 0
    assert len(server.prompts) == 60 == len(set(server.prompts))  # nothing paid twice
    assert answers(out) == expected(60)
    assert not out.with_name(f".{out.name}.lock").exists()


def test_two_runs_of_books_with_the_same_prompts_pay_each_prompt_once(tmp_path: Path) -> None:
    books = [make_book(tmp_path / f"{name}.xlsx", 80) for name in ("a", "b")]
    outs = [tmp_path / f"{name}.out.xlsx" for name in ("a", "b")]
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.1)) as server:
        runs = [start(command(book, out, server)) for book, out in zip(books, outs, strict=True)]
        for run in runs:
            run.communicate(timeout=180)
    assert [run.returncode for run in runs] == [0, 0]
    paid = collections.Counter(server.prompts)
    assert len(paid) == 80 and max(paid.values()) == 1
    assert answers(outs[0]) == answers(outs[1]) == expected(80)


def test_serve_sends_a_prompt_200_requests_ask_at_once_upstream_once(tmp_path: Path) -> None:
    body = {"template": "Describe {{ product }}.", "headers": ["Product"],
            "rows": [["kettle"]]}

    async def ask_all(url: str) -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
            return await asyncio.gather(*(client.post("/v1/complete", json=body, headers=AUTH)
                                          for _ in range(200)))

    with FakeLLMServer(FakeLLMConfig(latency_median_s=1.0, latency_sigma=0.0)) as llm, \
            running(make_app(llm, tmp_path)) as url:
        replies = asyncio.run(ask_all(url))
        upstream = len(llm.prompts)
    assert [r.status_code for r in replies] == [200] * 200
    assert {r.json()["answers"][0] for r in replies} == {"Answer: Describe kettle."}
    assert upstream == 1


# -------------------------------------------------------------- item 12: Ctrl-C, killed saves

def test_ctrl_c_says_what_is_kept_and_a_rerun_continues(tmp_path: Path,
                                                        isolated_home: Path) -> None:
    book, out = make_book(tmp_path / "b.xlsx", 60), tmp_path / "out.xlsx"
    db = isolated_home / "answers.sqlite3"
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.3)) as server:
        run = start(command(book, out, server))
        wait_until(lambda: len(stored_texts(db)) >= 10)
        run.send_signal(signal.SIGINT)
        _, err = run.communicate(timeout=60)
        kept = [a for a in answers(out) if a]
        first = len(server.prompts)
        again = subprocess.run(command(book, out, server), capture_output=True, text=True,
                               timeout=120)
        resent = server.prompts[first:]
    assert run.returncode == 130
    assert "Traceback" not in err
    message = said(err)
    assert (f"Stopped (Ctrl-C). {len(kept)} answers are kept in {out} and the cache; "
            f"{60 - len(kept)} prompts have none yet. Run the same command again to continue: "
            "it sends only those.") in message
    assert 10 <= len(kept) < 60 and set(kept) <= set(expected(60))
    assert again.returncode == 0, again.stderr
    assert not {f"Answer: {p}" for p in resent} & set(kept)  # no kept answer paid twice
    assert answers(out) == expected(60)


def test_a_run_killed_mid_save_leaves_nothing_the_next_run_does_not_clear(
        tmp_path: Path, isolated_home: Path) -> None:
    book, out = make_book(tmp_path / "b.xlsx", 60), tmp_path / "out.xlsx"
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    ours = [out.with_name(f".{out.name}.pb{gone.pid}.k3j4h5g6.tmp"),  # its writer is dead
            out.with_name(f".{out.name}.x7y8z9w0.tmp")]  # an older version's, 2 hours old
    fresh = out.with_name(f".{out.name}.zzzzzzzz.tmp")  # an older version may be saving it
    users = [tmp_path / f".{out.name}.my notes.tmp", tmp_path / f"{out.name}.tmp",
             tmp_path / f".other.xlsx.pb{gone.pid}.k3j4h5g6.tmp"]
    for path in ours + [fresh] + users:
        path.write_bytes(b"PK partial save")
    os.utime(ours[1], (time.time() - 7200, time.time() - 7200))
    db = isolated_home / "answers.sqlite3"
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.4)) as server:
        run = start(command(book, out, server, "--concurrency", "8"))
        wait_until(lambda: len(stored_texts(db)) >= 10)
        run.send_signal(signal.SIGKILL)
        run.wait()
        paid_before = stored_texts(db)
        first = len(server.prompts)
        again = subprocess.run(command(book, out, server), capture_output=True, text=True,
                               timeout=120)
        resent = server.prompts[first:]
    assert again.returncode == 0, again.stderr  # the dead run's lock and claims held nothing
    assert not {f"Answer: {p}" for p in resent} & paid_before
    assert answers(out) == expected(60)
    assert not any(path.exists() for path in ours)
    assert fresh.exists() and all(path.exists() for path in users)
    assert sorted(p.name for p in tmp_path.glob(f".{out.name}.pb*")) == []


def test_an_early_stop_never_leaves_fewer_answers_in_the_output_than_it_found(
        tmp_path: Path, isolated_home: Path) -> None:
    book, out = make_book(tmp_path / "b.xlsx", 40), tmp_path / "out.xlsx"
    with FakeLLMServer(FakeLLMConfig()) as server:
        assert subprocess.run(command(book, out, server), timeout=120).returncode == 0
    assert answers(out) == expected(40)
    (isolated_home / "answers.sqlite3").unlink()  # the answers live in the output only now
    db = isolated_home / "answers.sqlite3"
    second = FakeLLMConfig(latency_median_s=0.2, answer=lambda p: f"Again: {p}")
    with FakeLLMServer(second) as server:
        run = start(command(book, out, server, "--concurrency", "2"))
        wait_until(lambda: len(stored_texts(db)) >= 3)
        run.send_signal(signal.SIGINT)
        run.communicate(timeout=60)
    assert run.returncode == 130
    now = answers(out)
    assert all(now), now  # every row still holds an answer: the earlier one or the new one
    assert {a for a in now if str(a).startswith("Again:")}  # and the new ones did land
    assert all(a in (f"Answer: Describe item {i}.", f"Again: Describe item {i}.")
               for i, a in enumerate(now))


# ------------------------------------------------------- item 11: damaged cache, full disk

def _damage(db: Path, kind: str) -> None:
    data = db.read_bytes()
    for side in (Path(f"{db}-wal"), Path(f"{db}-shm")):
        side.unlink(missing_ok=True)
    if kind == "truncated":
        db.write_bytes(data[: len(data) * 6 // 10])
    elif kind == "garbage":
        db.write_bytes(os.urandom(len(data)))
    else:
        db.unlink()
        (db / "left-here").mkdir(parents=True)


@pytest.mark.parametrize("kind", ["truncated", "garbage", "folder"])
def test_a_damaged_cache_is_moved_aside_keeping_what_can_be_read(
        tmp_path: Path, isolated_home: Path, kind: str) -> None:
    n = 300
    book, out = make_book(tmp_path / "b.xlsx", n), tmp_path / "out.xlsx"
    long = FakeLLMConfig(answer=lambda p: f"Answer: {p} " + "w" * 300)
    with FakeLLMServer(long) as server:
        fake = ["--model", "openai-compatible:fake", "--base-url", server.base_url]
        # one at a time: the same file, page for page, on every run of the test
        assert cli("run", str(book), "--template", TEMPLATE, "--concurrency", "1",
                   *fake).exit_code == 0
        db = isolated_home / "answers.sqlite3"
        _damage(db, kind)
        first = len(server.prompts)
        result = cli("run", str(book), "--template", TEMPLATE, "-o", str(out), *fake)
        paid = len(server.prompts) - first
    assert result.exit_code == 0, result.output
    message = said(result.output)
    asides = list(isolated_home.glob("answers.sqlite3.damaged-*"))
    assert len([a for a in asides if not a.name.endswith("-wal")]) == 1
    aside = next(a for a in asides if not a.name.endswith("-wal"))
    was = "was a folder, not a cache file" if kind == "folder" else "was damaged ("
    assert f"The cache {db} {was}" in message
    assert f"it was moved aside to {aside.name}, and a new cache " in message
    if kind == "truncated":
        kept = n - paid
        assert 0 < kept < n and f"holds the {kept} answers that could be read from it" in message
    else:
        assert paid == n and "starts empty: no answer could be read from it" in message
    if kind == "folder":
        assert (aside / "left-here").is_dir()  # moved, never deleted
    assert "Traceback" not in result.output
    assert [str(a).split(" w")[0] for a in answers(out)] == expected(n)
    assert cli("run", str(book), "--template", TEMPLATE, "-o", str(out), *fake).exit_code == 0


def _on_a_tiny_disk(home: Path, size: str, args: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``args`` with PROMPTBATCH_HOME on a tmpfs of ``size`` mounted at ``home``, in a
    mount namespace of its own (the mount dies with the process; root, or an unprivileged
    user namespace)."""
    home.mkdir(parents=True, exist_ok=True)
    unshare = ["unshare", "-m"] if os.geteuid() == 0 else ["unshare", "-rm"]
    script = 'mount -t tmpfs -o size="$0" tmpfs "$1" && shift && exec "$@"'
    return subprocess.run([*unshare, "sh", "-c", script, size, str(home), *args],
                          capture_output=True, text=True, timeout=180,
                          env={**os.environ, "PROMPTBATCH_HOME": str(home)})


def test_a_full_disk_under_the_cache_keeps_every_answer_in_the_output(tmp_path: Path) -> None:
    home = tmp_path / "full"
    book, out = make_book(tmp_path / "b.xlsx", 40), tmp_path / "out.xlsx"
    with FakeLLMServer(FakeLLMConfig()) as server:
        run = _on_a_tiny_disk(home, "160k", command(book, out, server, "--concurrency", "2"))
        paid = len(server.prompts)
    assert run.returncode == 0, run.stderr
    message = said(run.stderr)
    assert "Traceback" not in run.stderr
    assert "answers were not cached (database or disk is full in " in message
    assert f"{home}/answers.sqlite3): they are in the output, but a rerun pays for them " \
           "again." in message
    assert f"Free space or fix permissions in {home}, or set PROMPTBATCH_HOME" in message
    unsaved = int(message.split(" answers were not cached")[0].split()[-1])
    assert 0 < unsaved < 40
    assert paid == 40 and answers(out) == expected(40)


def test_a_disk_too_full_to_open_the_cache_still_answers_every_row(tmp_path: Path) -> None:
    home = tmp_path / "full"
    book, out = make_book(tmp_path / "b.xlsx", 10), tmp_path / "out.xlsx"
    with FakeLLMServer(FakeLLMConfig()) as server:
        run = _on_a_tiny_disk(home, "8k", command(book, out, server))
    assert run.returncode == 0, run.stderr
    message = said(run.stderr)
    assert f"Cannot use the cache {home}/answers.sqlite3 (" in message
    assert "this run keeps its answers in memory and writes them to the output" in message
    assert answers(out) == expected(10)


def test_deep_json_sent_to_serve_is_a_400_that_says_why(tmp_path: Path,
                                                        llm: FakeLLMServer) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    rows = b'{"template": "{{ a }}", "headers": ["a"], "rows": ' + b"[" * 70 + b"]" * 70 + b"}"
    with running(make_app(llm, tmp_path)) as url, httpx.Client(base_url=url,
                                                              timeout=30) as client:
        replies = [client.post("/v1/complete", content=body, headers=AUTH)
                   for body in (deep, rows)]
        fine = client.post("/v1/complete", headers=AUTH, json={
            "template": "Describe {{ a }}.", "headers": ["a"], "rows": [["lamp"]]})
    assert [r.status_code for r in replies] == [400, 400]
    assert replies[0].json() == {"error": "The request nests JSON 100000 levels deep; at most "
                                          "64 are allowed (rows are a list of lists of cells)."}
    assert "nests JSON 71 levels deep" in replies[1].json()["error"]
    assert fine.status_code == 200 and fine.json()["answers"] == ["Answer: Describe lamp."]
