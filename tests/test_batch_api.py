"""`--via batch`, `status` and `collect` end to end, against the fake Batch APIs on 127.0.0.1."""

from __future__ import annotations

import csv
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest

from promptbatch_sheets.providers.batchapi import openai as openai_batch
from tests.conftest import SAMPLES, cli
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer
from tests.fakes.llm_server import FakeLLMServer

PRODUCTS = SAMPLES / "product_descriptions.xlsx"
KEY = "sk-test-batch-key-0123456789"


@pytest.fixture
def fake() -> Iterator[FakeBatchServer]:
    with FakeBatchServer(FakeBatchConfig(answer=lambda prompt: f"ANS {prompt}")) as server:
        yield server


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def model(fake: FakeBatchServer, provider: str) -> list[str]:
    if provider == "openai":
        return ["--model", "openai:gpt-4o-mini", "--base-url", fake.base_url]
    return ["--model", "anthropic:claude-haiku-4-5", "--base-url", fake.root_url]


def answers(path: Path) -> dict[str, str | None]:
    """Product name -> its answer cell, from the products sheet."""
    ws = openpyxl.load_workbook(path)["Products"]
    return {ws.cell(r, 1).value: ws.cell(r, 5).value for r in range(4, 16)}


def write_csv(path: Path, values: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["q"], *([v] for v in values)])
    return path


def read_csv(path: Path) -> list[str]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row[1] for row in list(csv.reader(handle))[1:]]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_submit_status_collect_writes_every_row_on_its_own_row(
    tmp_path: Path, fake: FakeBatchServer, provider: str, isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out.xlsx"
    sent = cli("run", str(PRODUCTS), "--via", "batch", "-o", str(out), "--max-tokens", "50",
               *model(fake, provider))
    assert sent.exit_code == 0, sent.output
    (job_id,) = fake.batches
    text = " ".join(sent.output.split())
    assert f"Sent 12 requests in 1 batch job: {job_id}" in text
    assert re.search(r"Estimated cost at batch price \(half the realtime price\): \$0\.\d{4}\.",
                     text)
    assert "promptbatch collect" in text and "12 rows wait" in text
    assert set(answers(out).values()) == {None}  # the header is there, the answers not yet

    listed = cli("status")
    assert listed.exit_code == 0 and job_id in listed.output
    assert "in_progress" in listed.output or "validating" in listed.output

    # Another machine sharing the store file collects, with its own key.
    shutil.copytree(isolated_home, tmp_path / "elsewhere")
    monkeypatch.setenv("PROMPTBATCH_HOME", str(tmp_path / "elsewhere"))
    fake.finish()
    done = cli("collect", str(PRODUCTS), "-o", str(out), "--max-tokens", "50",
               *model(fake, provider))
    assert done.exit_code == 0, done.output
    assert "Every row has its answer" in done.output
    order = fake.result_order(job_id)
    assert sorted(order) == sorted(fake.sent()) and order != fake.sent()  # shuffled
    for product, answer in answers(out).items():
        assert answer is not None and answer.startswith("ANS ") and product in answer
    again = cli("status")
    assert "collected" in again.output


def test_cached_rows_and_repeated_prompts_are_not_sent(tmp_path: Path,
                                                       fake: FakeBatchServer) -> None:
    book = write_csv(tmp_path / "b.csv", ["a", "b", "a"])
    assert cli("run", str(book), "--template", "{{ q }}", "--via", "batch",
               *model(fake, "openai")).exit_code == 0
    assert fake.prompts() == ["a", "b"]  # the repeated prompt went once
    fake.finish()
    assert cli("collect", str(book), "--template", "{{ q }}", *model(fake, "openai")
               ).exit_code == 0

    bigger = write_csv(tmp_path / "b.csv", ["a", "c", "b", "d", "c"])
    result = cli("run", str(bigger), "--template", "{{ q }}", "--via", "batch",
                 *model(fake, "openai"))
    assert result.exit_code == 0, result.output
    assert fake.prompts() == ["a", "b", "c", "d"]  # only the two new prompts were sent
    assert read_csv(tmp_path / "b.promptbatch.csv") == ["ANS a", "", "ANS b", "", ""]


def test_a_rerun_while_the_job_runs_does_not_resubmit_and_later_collects(
    tmp_path: Path, fake: FakeBatchServer
) -> None:
    fake.config.complete_after_s = 1.0  # this batch advances by the clock alone
    book = write_csv(tmp_path / "b.csv", ["x", "y"])
    args = ["run", str(book), "--template", "{{ q }}", "--via", "batch",
            *model(fake, "anthropic")]
    assert cli(*args).exit_code == 0
    waiting = cli(*args)
    assert waiting.exit_code == 0, waiting.output
    assert "Nothing new to send" in waiting.output and "2 rows wait" in waiting.output
    assert len(fake.batches) == 1 and len(fake.sent()) == 2
    time.sleep(1.1)
    finished = cli(*args)
    assert finished.exit_code == 0 and "Every row has its answer" in finished.output
    assert len(fake.batches) == 1
    assert read_csv(tmp_path / "b.promptbatch.csv") == ["ANS x", "ANS y"]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_errored_and_expired_lines_become_error_cells_and_a_rerun_resends_only_them(
    tmp_path: Path, fake: FakeBatchServer, provider: str
) -> None:
    fates = {"Cloudrest Pillow": "expired", "Trailhead Water Bottle": "error"}
    fake.config.outcome = lambda prompt: next(
        (fate for name, fate in fates.items() if name in prompt), "ok")
    out = tmp_path / "out.xlsx"
    args = [str(PRODUCTS), "-o", str(out), *model(fake, provider)]
    assert cli("run", *args, "--via", "batch").exit_code == 0
    fake.finish()
    collected = cli("collect", *args)
    assert collected.exit_code == 1, collected.output
    cells = answers(out)
    assert cells["Cloudrest Pillow"].startswith("#ERROR: Batch API: ")
    assert "expired" in cells["Cloudrest Pillow"]
    assert cells["Trailhead Water Bottle"].startswith("#ERROR: Batch API: ")
    assert "refuse this request" in cells["Trailhead Water Bottle"]
    assert sum(v.startswith("ANS ") for v in cells.values() if v) == 10

    fake.config.outcome = None
    resent = cli("run", *args, "--via", "batch")
    assert resent.exit_code == 0, resent.output
    first, second = fake.batches.values()
    assert len(first.requests) == 12 and len(second.requests) == 2
    assert sorted(name for p in fake.prompts()[12:] for name in fates if name in p) == sorted(
        fates)
    fake.finish(second.id)
    assert cli("collect", *args).exit_code == 0
    assert all(v and v.startswith("ANS ") for v in answers(out).values())


def test_a_realtime_rerun_resends_the_rows_a_batch_failed(
    tmp_path: Path, fake: FakeBatchServer, llm: FakeLLMServer
) -> None:
    fake.config.outcome = lambda prompt: "expired" if prompt == "b" else "ok"
    book = write_csv(tmp_path / "b.csv", ["a", "b"])
    out = tmp_path / "b.promptbatch.csv"
    base = ["--template", "{{ q }}", "--model", "openai:gpt-4o-mini"]
    assert cli("run", str(book), *base, "--base-url", fake.base_url, "--via", "batch"
               ).exit_code == 0
    fake.finish()
    assert cli("collect", str(book), *base, "--base-url", fake.base_url).exit_code == 1
    assert read_csv(out)[1].startswith("#ERROR: Batch API:")
    realtime = cli("run", str(out), *base, "--base-url", llm.base_url, "-o", str(out))
    assert realtime.exit_code == 0, realtime.output
    assert [r["json"]["messages"][-1]["content"] for r in llm.requests] == ["b"]
    assert read_csv(out) == ["ANS a", "Answer: b"]


def test_a_big_run_is_split_at_the_line_limit(tmp_path: Path, fake: FakeBatchServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openai_batch, "MAX_LINES", 5)
    fake.config.max_lines = 5  # a file over the limit would fail, as OpenAI's do
    book = write_csv(tmp_path / "b.csv", [f"q{i}" for i in range(12)])
    args = [str(book), "--template", "{{ q }}", *model(fake, "openai")]
    sent = cli("run", *args, "--via", "batch")
    assert sent.exit_code == 0, sent.output
    assert [len(b.requests) for b in fake.batches.values()] == [5, 5, 2]
    assert "in 3 batch jobs" in sent.output
    fake.finish()
    assert cli("collect", *args).exit_code == 0
    assert read_csv(tmp_path / "b.promptbatch.csv") == [f"ANS q{i}" for i in range(12)]


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_keys_never_reach_the_store_the_output_or_a_message(
    tmp_path: Path, fake: FakeBatchServer, provider: str, isolated_home: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.config.api_key = KEY
    fake.config.outcome = lambda prompt: "error" if prompt == "b" else "ok"
    book = write_csv(tmp_path / "b.csv", ["a", "b"])
    args = [str(book), *model(fake, provider)]
    outputs = [cli("run", *args, "--template", "{{ q }}", "--via", "batch").output]
    fake.finish()
    outputs += [cli("status").output, cli("collect", *args, "--template", "{{ q }}").output]
    header = "authorization" if provider == "openai" else "x-api-key"
    assert all(KEY in r["headers"][header] for r in fake.requests)

    wrong = "sk-wrong-key-that-the-server-echoes"
    monkeypatch.setenv("OPENAI_API_KEY", wrong)
    monkeypatch.setenv("ANTHROPIC_API_KEY", wrong)
    refused = cli("run", *args, "--template", "{{ q }}!", "--via", "batch")
    assert refused.exit_code == 2 and "refused the API key" in refused.output
    assert "***" in refused.output and wrong not in refused.output
    stored = b"".join(p.read_bytes() for p in isolated_home.iterdir() if p.is_file())
    written = (tmp_path / "b.promptbatch.csv").read_text()
    for secret in (KEY, wrong):
        assert secret.encode() not in stored
        assert secret not in written and all(secret not in o for o in outputs)


def test_servers_without_a_batch_api_and_bad_combinations_get_a_clear_error(
    tmp_path: Path, fake: FakeBatchServer
) -> None:
    book = write_csv(tmp_path / "b.csv", ["a"])
    cases = {
        ("--model", "ollama:llama3.2"): "ollama:llama3.2 has no Batch API: --via batch",
        ("--model", "openai-compatible:x", "--base-url", "http://127.0.0.1:9/v1"):
            "Leave out --via batch to answer in realtime",
        (): "local:smollm2-135m-instruct has no Batch API",
        (*model(fake, "openai"), "--no-cache"): "--no-cache does not combine with --via batch",
        (*model(fake, "openai"), "--budget", "0.000001"): "Nothing was sent. Raise --budget",
    }
    for extra, message in cases.items():
        result = cli("run", str(book), "--template", "{{ q }}", "--via", "batch", *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in " ".join(result.output.split()), (extra, result.output)
    collect = cli("collect", str(book), "--template", "{{ q }}")
    assert collect.exit_code == 2 and "openai:MODEL or anthropic:MODEL" in collect.output
    assert fake.requests == []


def test_a_batch_the_server_failed_or_forgot_gives_error_cells_and_is_sent_again(
    tmp_path: Path, fake: FakeBatchServer
) -> None:
    fake.config.max_lines = 1  # OpenAI fails a file over its limit as a whole
    book = write_csv(tmp_path / "b.csv", ["a", "b"])
    args = [str(book), "--template", "{{ q }}", *model(fake, "openai")]
    assert cli("run", *args, "--via", "batch").exit_code == 0
    failed = cli("collect", *args)
    assert failed.exit_code == 1 and "more than 1 requests" in failed.output
    assert all(c.startswith("#ERROR: Batch API: The batch input file has more than 1")
               for c in read_csv(tmp_path / "b.promptbatch.csv"))

    fake.config.max_lines = 10
    assert cli("run", *args, "--via", "batch").exit_code == 0
    fake.batches.clear()  # the server lost it (or archived its results)
    lost = cli("collect", *args)
    assert lost.exit_code == 1 and "no longer has batch" in lost.output
    assert cli("run", *args, "--via", "batch").exit_code == 0
    fake.finish()
    assert cli("collect", *args).exit_code == 0
    assert read_csv(tmp_path / "b.promptbatch.csv") == ["ANS a", "ANS b"]


def test_chained_and_structured_columns_go_through_batches_round_by_round(
    tmp_path: Path, fake: FakeBatchServer
) -> None:
    """customer_feedback.xlsx: summaries and JSON triage go in the first batch; each reply
    uses its row's summary, so it goes in the next one. A triage answer that does not fit
    its fields is not cached: the next run sends it again."""
    misfits = iter(["no idea"])

    def answer(prompt: str) -> str:
        if prompt.startswith("Triage"):
            fitting = '{"sentiment": "negative", "urgent": true, "score": 2}'
            return next(misfits, fitting) if "dark mode" in prompt else fitting
        return f"ANS {prompt[:40]}"

    fake.config.answer = answer
    out = tmp_path / "out.xlsx"
    args = ["run", str(SAMPLES / "customer_feedback.xlsx"), "--via", "batch", "-o", str(out),
            *model(fake, "openai")]
    first = cli(*args)
    assert first.exit_code == 0, first.output
    (job,) = fake.batches.values()
    bodies = [body for _, body in job.requests]
    assert len(bodies) == 12
    triage = [b for b in bodies if "response_format" in b]
    assert len(triage) == 6
    assert triage[0]["response_format"]["json_schema"]["schema"]["required"] == [
        "sentiment", "urgent", "score"]

    fake.finish()
    second = cli(*args)  # collects round one, sends the replies and Dev's triage again
    assert second.exit_code == 0, second.output
    ws = openpyxl.load_workbook(out)["Feedback"]
    assert [c.value for c in ws[3]][4:] == ["negative", True, 2]
    assert ws["E6"].value is None  # Dev's triage did not fit: on its way again
    bodies = [body for _, body in list(fake.batches.values())[1].requests]
    replies = [b for b in bodies if "response_format" not in b]
    assert len(replies) == 6 and len(bodies) == 7
    assert all("whose feedback was: ANS Summarize" in b["messages"][-1]["content"]
               for b in replies)

    fake.finish()
    third = cli(*args)  # collects the rest; nothing is left to send
    assert third.exit_code == 0, third.output
    assert len(fake.batches) == 2
    ws = openpyxl.load_workbook(out)["Feedback"]
    assert all(ws.cell(r, 4).value.startswith("ANS Write a one-sentence reply")
               for r in range(3, 9))
    assert [c.value for c in ws[6]][4:] == ["negative", True, 2]
