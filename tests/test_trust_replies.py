"""Issue 12, items 3 and 8: every byte a model server sends back is untrusted.

End to end with the real CLI (in-process, or as a subprocess where today's code would hang)
and the real `serve` app, against the loopback fakes and their hostile faults: a reply that
quotes the API key, one that drips, one that never ends, a server that answers 429 forever,
JSON nested 100,000 deep, bytes that are not UTF-8, usage counts that are not counts, Batch
API results files that are huge or speak of requests never sent.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openpyxl
import pytest

from promptbatch_sheets import server
from promptbatch_sheets.settings import Settings, resolve
from tests.conftest import cli, fake_model
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer
from tests.fakes.llm_server import FakeLLMServer, reflection
from tests.test_server import AUTH, TOKEN, running

KEY = "sk-proj-Rf7QmZ2xWc9LpT4vNbKyH3sJd6GaEuXo5TqW"
"""Mixed case and long, like a real key: no 8 characters of it occur by chance in a hex
cache key, a timestamp or a prompt."""
PROMPTBATCH = str(Path(sys.executable).parent / "promptbatch")
SLOW_RUN_S = 150
"""A subprocess run that takes longer than this has not bounded its time (today's code needs
10 minutes to hours for these); generous, for a loaded machine."""


def fragments(key: str = KEY) -> set[str]:
    return {key[i:i + 8] for i in range(len(key) - 7)}


def leaks(data: str | bytes) -> list[str]:
    """The 8-character runs of the key found in ``data``."""
    raw = data.encode() if isinstance(data, str) else data
    return sorted(f for f in fragments() if f.encode() in raw)


SCRUBBED = ("You sent 'Bearer ***'. Key: ***. Incorrect API key provided: ***...***; the "
            "middle reads ***.")
"""The fake's reflection of the key, as it must land."""


def stored(home: Path) -> bytes:
    """Every byte of the files under ``home``: the cache, its journal and write-ahead files."""
    return b"".join(p.read_bytes() for p in sorted(home.rglob("*")) if p.is_file())


def xlsx_bytes(path: Path) -> bytes:
    """A workbook's parts, uncompressed: a key in a cell is plain text in one of them."""
    with zipfile.ZipFile(path) as book:
        return b"".join(book.read(name) for name in book.namelist())


def write_csv(path: Path, values: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["q"], *([v] for v in values)])
    return path


def read_csv(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return {row[0]: row[1] for row in list(csv.reader(handle))[1:]}


def write_xlsx(path: Path, values: list[str]) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    for row in [["q"], *([v] for v in values)]:
        sheet.append(row)
    book.save(path)
    return path


def read_xlsx(path: Path) -> dict[str, str]:
    sheet = openpyxl.load_workbook(path).active
    assert sheet is not None
    return {str(q): str(a) for q, a in sheet.iter_rows(min_row=2, max_col=2, values_only=True)}


def faulty(llm: FakeLLMServer, faults: dict[str, str]) -> None:
    """Each prompt (the row's q cell) gets its fault, every time it is sent."""
    llm.config.fault_for = faults.get


def chat_calls(llm: FakeLLMServer, prompt: str) -> int:
    return sum(1 for r in llm.requests if isinstance(r["json"], dict)
               and r["json"]["messages"][-1]["content"] == prompt)


def run_process(llm: FakeLLMServer, book: Path,
                out: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    """``promptbatch run`` of ``book`` against the fake, as a user runs it, timed (no test
    fixture speeds its retries up)."""
    started = time.monotonic()
    done = subprocess.run([PROMPTBATCH, "run", str(book), "--template", "{{ q }}", "-o",
                           str(out), *fake_model(llm)], capture_output=True, text=True,
                          env=os.environ.copy(), timeout=SLOW_RUN_S)
    return done, time.monotonic() - started


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "PROMPTBATCH_API_KEY"):
        monkeypatch.setenv(name, KEY)


def model_flags(llm: FakeLLMServer, provider: str) -> list[str]:
    if provider == "anthropic":
        return ["--model", "anthropic:claude-haiku-4-5", "--base-url", llm.root_url]
    return ["--model", "openai:gpt-4o-mini", "--base-url", llm.base_url]


# --------------------------------------------------------------------------- item 3


REFLECTING = {"answer": "reflect", "refusal": "reflect:in=refusal",
              "denied": "reflect:status=401", "flaky": "reflect:status=500"}


@pytest.mark.parametrize(("provider", "kind"), [("openai", "xlsx"), ("anthropic", "csv")])
def test_a_reflected_key_reaches_no_cell_cache_or_terminal(
    tmp_path: Path, llm: FakeLLMServer, keyed: None, isolated_home: Path, provider: str,
    kind: str,
) -> None:
    """A proxy that echoes the key in its answers, refusals and error bodies: the answer is
    kept with the key (and every 8-character run of it) replaced, everywhere it lands."""
    faulty(llm, REFLECTING)
    values = list(REFLECTING)
    book = (write_xlsx if kind == "xlsx" else write_csv)(tmp_path / f"in.{kind}", values)
    out = tmp_path / f"out.{kind}"
    result = cli("run", str(book), "--template", "{{ q }}", "-o", str(out),
                 *model_flags(llm, provider))
    assert result.exit_code == 1, result.output  # denied and flaky failed

    assert any(KEY in str(r["headers"]) for r in llm.requests)  # the key did go out
    cells = read_xlsx(out) if kind == "xlsx" else read_csv(out)
    scrubbed = SCRUBBED.replace("Bearer ***", "***") if provider == "anthropic" else SCRUBBED
    assert cells["answer"] == scrubbed
    assert cells["denied"] == f"#ERROR: HTTP 401 (the server refused the API key): {scrubbed}"
    assert cells["flaky"] == f"#ERROR: HTTP 500: {scrubbed} (gave up after 6 attempts)"
    if provider == "openai":
        assert cells["refusal"] == f"#ERROR: the model refused: {scrubbed}"
    written = xlsx_bytes(out) if kind == "xlsx" else out.read_bytes()
    assert leaks(written) == []
    assert leaks(stored(isolated_home)) == []
    assert leaks(result.stdout) == [] and leaks(result.stderr) == []


def test_serve_scrubs_a_reflected_key(tmp_path: Path, llm: FakeLLMServer, keyed: None) -> None:
    faulty(llm, REFLECTING)
    settings = Settings(model="openai-compatible:fake", base_url=llm.base_url)
    rows = {"template": "{{ q }}", "headers": ["q"], "rows": [[v] for v in REFLECTING]}
    with running(server.create_app(TOKEN, settings, tmp_path / "a.sqlite3")) as url:
        reply = httpx.post(f"{url}/v1/complete", json=rows, headers=AUTH, timeout=60)
    assert reply.status_code == 200
    answers = reply.json()["answers"]
    assert answers[0] == SCRUBBED
    assert answers[2] == f"#ERROR: HTTP 401 (the server refused the API key): {SCRUBBED}"
    assert leaks(reply.content) == []
    assert leaks(stored(tmp_path)) == []  # the cache, its -wal file, everything


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batch_results_that_quote_the_key_are_scrubbed(
    tmp_path: Path, keyed: None, isolated_home: Path, provider: str,
) -> None:
    config = FakeBatchConfig(complete_after_s=0, answer=lambda prompt: reflection(KEY),
                             outcome=lambda prompt: "error" if prompt == "denied" else "ok",
                             error_message=reflection(KEY))
    book = write_csv(tmp_path / "in.csv", ["answer", "denied"])
    out = tmp_path / "out.csv"
    with FakeBatchServer(config) as fake:
        base = fake.base_url if provider == "openai" else fake.root_url
        flags = ["--model", f"{provider}:{'gpt-4o-mini' if provider == 'openai' else 'x'}",
                 "--base-url", base]
        sent = cli("run", str(book), "--template", "{{ q }}", "--via", "batch", "-o", str(out),
                   *flags)
        collected = cli("collect", str(book), "--template", "{{ q }}", "-o", str(out), *flags)
    cells = read_csv(out)
    scrubbed = SCRUBBED.replace("Bearer ***", "***")
    assert cells["answer"] == scrubbed
    assert cells["denied"].startswith("#ERROR: Batch API: ")
    assert cells["denied"].endswith(f"{scrubbed} (invalid_request_error)")
    assert leaks(out.read_bytes()) == [] and leaks(stored(isolated_home)) == []
    for result in (sent, collected):
        assert leaks(result.output) == []


# --------------------------------------------------------------------------- item 8


def test_a_dripping_server_is_cut_at_the_timeout(tmp_path: Path, llm: FakeLLMServer,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """A byte a second keeps every read alive; the deadline is for the whole request."""
    monkeypatch.setenv("PROMPTBATCH_TIMEOUT", "3")
    monkeypatch.setenv("PROMPTBATCH_RETRIES", "2")
    faulty(llm, {"slow": "drip:s=1,n=600"})
    book = write_csv(tmp_path / "in.csv", ["slow", "fine"])
    out = tmp_path / "out.csv"
    done, seconds = run_process(llm, book, out)
    assert done.returncode == 1, done.stderr
    assert seconds < 60
    cells = read_csv(out)
    assert cells["fine"] == "Answer: fine"
    assert cells["slow"] == ("#ERROR: the server did not send its whole reply within 3 s "
                             "(gave up after 2 attempts)")


def test_a_huge_reply_is_refused_without_reading_it_all(tmp_path: Path,
                                                        llm: FakeLLMServer) -> None:
    faulty(llm, {"big": "huge:mb=50", "bomb": "gzip:mb=100"})
    book = write_csv(tmp_path / "in.csv", ["big", "bomb", "fine"])
    out = tmp_path / "out.csv"
    result = cli("run", str(book), "--template", "{{ q }}", "-o", str(out),
                 *fake_model(llm))
    assert result.exit_code == 1, result.output
    cells = read_csv(out)
    assert cells["fine"] == "Answer: fine"
    for name in ("big", "bomb"):
        assert cells[name] == ("#ERROR: the reply is over 4 MB, far longer than any answer; "
                               "it was not read further")
        assert chat_calls(llm, name) == 1  # an answer that long was paid for: not asked again
    (big,) = [r for r in llm.requests if r["fault"] == "huge:mb=50"]
    assert big["sent"] < 30 * 1024 * 1024  # the client stopped reading
    assert out.stat().st_size < 100_000
    assert "the reply is over 4 MB" in result.output


def test_a_server_that_refuses_the_rate_forever_ends_the_run(
    tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """429 with retry-after: 20 on every request: today one request per 20 s for hours. A
    row gives up once its waits would pass the timeout setting, and once rows give up one
    after another with nothing answered, the rest are not sent: the run ends in about one
    wait."""
    monkeypatch.setenv("PROMPTBATCH_TIMEOUT", "30")
    llm.config.fault_for = lambda prompt: "429:s=20"
    values = [f"row {n}" for n in range(30)]
    book = write_csv(tmp_path / "in.csv", values)
    out = tmp_path / "out.csv"
    done, seconds = run_process(llm, book, out)
    assert done.returncode == 1, done.stderr
    assert seconds < 120
    cells = read_csv(out)
    assert all(c.startswith("#ERROR: HTTP 429") or c.startswith("#ERROR: not sent")
               for c in cells.values()), cells
    assert len(llm.requests) <= 2 * len(values)  # no row sent more than twice
    made = re.search(r"requests\W+([\d,]+) \(([\d,]+) retries\)", done.stderr)
    assert made is not None and sum(int(n) for n in made.groups()) == len(llm.requests)
    summary = " ".join(done.stderr.split())
    assert "The provider refused 30 rows for its rate limit" in summary
    assert "Run the same command again later" in summary


def test_one_sheets_failed_rows_do_not_fail_another_sheets_rows(
    tmp_path: Path, llm: FakeLLMServer, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """serve's provider is every sheet's: rows that gave up one after another open the
    breaker, but the next request's first row goes as a probe, and when it is answered the
    rest go too (nothing is failed unsent while the server answers)."""
    monkeypatch.setenv("PROMPTBATCH_RETRIES", "1")
    faulty(llm, {f"bad {n}": "500" for n in range(4)})
    settings = resolve({"model": "openai-compatible:fake", "base_url": llm.base_url}, {})
    with running(server.create_app(TOKEN, settings, tmp_path / "a.sqlite3")) as url:
        def ask(values: list[str]) -> list[str]:
            rows = {"template": "{{ q }}", "headers": ["q"], "rows": [[v] for v in values]}
            reply = httpx.post(f"{url}/v1/complete", json=rows, headers=AUTH, timeout=60)
            assert reply.status_code == 200, reply.text
            return [str(a) for a in reply.json()["answers"]]

        assert all(a.startswith("#ERROR: HTTP 500") for a in ask([f"bad {n}" for n in range(4)]))
        assert ask([f"good {n}" for n in range(6)]) == [f"Answer: good {n}" for n in range(6)]


def test_a_quota_429_is_not_retried(tmp_path: Path, llm: FakeLLMServer) -> None:
    faulty(llm, {"broke": "quota"})
    book = write_csv(tmp_path / "in.csv", ["broke"])
    out = tmp_path / "out.csv"
    result = cli("run", str(book), "--template", "{{ q }}", "-o", str(out),
                 *fake_model(llm))
    assert result.exit_code == 1
    assert read_csv(out)["broke"] == ("#ERROR: HTTP 429: You exceeded your current quota, "
                                      "please check your plan and billing details.")
    assert chat_calls(llm, "broke") == 1


HOSTILE = {"deep": "deep:n=100000", "text": "hostile", "error": "hostile:status=400",
           "usage": "usage:prompt=-5,completion=1e30",
           "typed": 'usage:prompt="abc",completion=[1]', "headers": "headers:kb=200"}


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_hostile_bodies_each_end_in_a_clear_cell(tmp_path: Path, llm: FakeLLMServer,
                                                 keyed: None, provider: str,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMPTBATCH_RETRIES", "2")
    faulty(llm, HOSTILE)
    book = write_csv(tmp_path / "in.csv", [*HOSTILE, "fine"])
    out = tmp_path / "out.csv"
    result = cli("run", str(book), "--template", "{{ q }}", "-o", str(out),
                 *model_flags(llm, provider))
    assert result.exit_code == 1, result.output
    cells = read_csv(out)
    assert cells["fine"] == "Answer: fine"
    assert cells["deep"] == ("#ERROR: the server's reply nests JSON too deep to read, deeper "
                             "than any answer does")
    # the answer is kept, as text: bytes that are not UTF-8 and a lone surrogate become
    # U+FFFD, control characters and terminal escapes are dropped, markup stays literal
    assert cells["text"] == ("nul esc[2J]8;;http://127.0.0.1/xlink]8;; markup [/] [/bold] "
                             "[link=http://127.0.0.1/]x[/link] lone \ufffd \ufffd end")
    assert cells["error"].startswith("#ERROR: HTTP 400: nul esc[2J]8;;http")
    assert "[/bold]" in result.output and "\x1b" not in result.output
    assert cells["usage"] == cells["typed"] == "Counted."
    assert cells["headers"] == ("#ERROR: the reply's headers are over 100 KB; it was not read "
                                "further")
    assert chat_calls(llm, "headers") == 1
    # usage counts below 0 or past any real request are bounded before they reach the cost
    used = re.search(r"tokens\W+([\d,]+) in, ([\d,]+) out", result.output)
    assert used is not None, result.output
    assert all(int(n.replace(",", "")) <= 2_000_000 for n in used.groups())


STRUCTURED = {"braces": "{ " * 150_000, "deep": "[" * 100_000}
"""Replies to a structured step: 300 KB of braces (each a failed parse, today each costing a
count of every line before it), and JSON too deep for the parser."""


@pytest.mark.parametrize("reply", list(STRUCTURED))
def test_a_hostile_structured_reply_fails_its_row_quickly(tmp_path: Path, llm: FakeLLMServer,
                                                          reply: str) -> None:
    llm.config.structured_answer = lambda prompt, schema: STRUCTURED[reply]
    book = write_csv(tmp_path / "in.csv", [reply])
    out = tmp_path / "out.csv"
    started = time.monotonic()
    result = cli("run", str(book), "--template", "{{ q }}", "-o", str(out), "--fields",
                 "score (number)", *fake_model(llm))
    assert time.monotonic() - started < 10
    assert result.exit_code == 1, result.output
    reason = ("the reply's JSON object is incomplete or malformed" if reply == "braces"
              else "the reply nests JSON too deep to read")
    with out.open(newline="", encoding="utf-8") as handle:
        (row,) = list(csv.reader(handle))[1:]
    assert row[1] == f"#ERROR: the reply did not fit the fields, twice: {reason}"


# --------------------------------------------------------------------------- Batch API


def line(custom_id: str, text: str) -> bytes:
    body = {"status_code": 200, "body": {"choices": [{"message": {"content": text},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 1, "completion_tokens": 1}}}
    return json.dumps({"custom_id": custom_id, "response": body}).encode() + b"\n"


def with_strays(content: bytes) -> Iterator[bytes]:
    """Lines for requests never sent, then the real results, the first made far longer than
    any answer."""
    for n in range(10):
        yield line(f"stray-{n}", "planted answer")
    first, rest = content.split(b"\n", 1)
    big = json.loads(first)
    big["response"]["body"]["choices"][0]["message"]["content"] = "x" * (5 * 1024 * 1024)
    yield json.dumps(big).encode() + b"\n" + rest


def strays_forever(content: bytes) -> Iterator[bytes]:
    n = 0
    while True:
        n += 1
        yield line(f"stray-{n}", "planted answer") * 100


def then_strays_forever(content: bytes) -> Iterator[bytes]:
    yield content
    yield from strays_forever(content)


def batch_run(tmp_path: Path, config: FakeBatchConfig) -> tuple[dict[str, str], str, float]:
    """Send three rows through the Batch API, then collect them: the cells, the collect's
    output, its seconds."""
    book = write_csv(tmp_path / "in.csv", ["a", "b", "c"])
    out = tmp_path / "out.csv"
    with FakeBatchServer(config) as fake:
        flags = ["--template", "{{ q }}", "-o", str(out), "--model", "openai:gpt-4o-mini",
                 "--base-url", fake.base_url]
        sent = cli("run", str(book), "--via", "batch", *flags)
        assert sent.exit_code == 0, sent.output
        started = time.monotonic()
        collected = cli("collect", str(book), *flags)
        seconds = time.monotonic() - started
    return read_csv(out), collected.output, seconds


def test_batch_results_are_bounded(tmp_path: Path, keyed: None) -> None:
    """A results line over the size cap fails its own request; lines for requests never
    sent are not answers."""
    cells, output, _ = batch_run(tmp_path, FakeBatchConfig(complete_after_s=0,
                                                           tamper=with_strays))
    failed = [q for q, c in cells.items() if c.startswith("#ERROR")]
    assert len(failed) == 1, cells
    assert cells[failed[0]] == ("#ERROR: Batch API: its result is over 4 MB, far longer than "
                                "any answer")
    assert {q: c for q, c in cells.items() if q not in failed} == {
        q: f"Answer: {q}" for q in "abc" if q not in failed}
    assert "planted" not in output


@pytest.mark.parametrize("after", [True, False])
def test_a_results_file_that_never_ends_is_cut(tmp_path: Path, keyed: None,
                                               after: bool) -> None:
    """Reading stops once every request has its line, or once the file has given more lines
    for nothing than the job has requests."""
    tamper = then_strays_forever if after else strays_forever
    cells, _, seconds = batch_run(tmp_path, FakeBatchConfig(complete_after_s=0, tamper=tamper))
    assert seconds < 60
    if after:
        assert cells == {q: f"Answer: {q}" for q in "abc"}
    else:
        assert set(cells.values()) == {
            "#ERROR: Batch API: its results file went on with lines for requests this job "
            "never sent; reading stopped before this request's line"}
