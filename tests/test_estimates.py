"""Estimates a user can trust: preview's forecast against the embedded model's reported usage."""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from promptbatch_sheets.estimate import MIN_HISTORY, calibrate, estimate
from promptbatch_sheets.providers import Completion
from promptbatch_sheets.store import Store, default_path
from promptbatch_sheets.store.migrations import MIGRATIONS
from tests.conftest import cli

LOCAL = "local:smollm2-135m-instruct"
TOLERANCE = 0.25
BOOKS = [("product_descriptions.xlsx", []), ("support_tickets.xlsx", []),
         ("translation.xlsx", []),
         ("reviews.csv", ["--template-file", "sample_workbooks/reviews.prompt.txt"]),
         ("customer_feedback.xlsx", [])]


def forecast(output: str) -> tuple[int, int]:
    """(prompt, answer) tokens from preview's estimate line."""
    found = re.search(r"~([\d,]+) prompt tokens \+ ~([\d,]+) answer tokens", " ".join(
        output.split()))
    assert found, output
    return int(found[1].replace(",", "")), int(found[2].replace(",", ""))


@pytest.mark.parametrize(("name", "extra"), BOOKS, ids=[b[0] for b in BOOKS])
def test_preview_estimate_is_within_25_percent_of_the_run(
        name: str, extra: list[str], tmp_path: Path, samples: Path) -> None:
    book = tmp_path / name
    shutil.copy(samples / name, book)
    args = [str(book), *extra, "--max-tokens", "40"]  # 40 bounds the time and the rambling
    preview = cli("preview", *args)
    assert preview.exit_code == 0, preview.output
    prompt_est, answer_est = forecast(preview.output)
    run = cli("run", *args, "-o", str(tmp_path / f"out{book.suffix}"))
    assert run.exit_code == 0, run.output
    assert "(estimated" in run.output
    store = Store(default_path())
    used = store.history(LOCAL)
    store.close()
    prompt_used = sum(u[1] for u in used)
    total_used = prompt_used + sum(u[2] for u in used)
    assert abs(prompt_est - prompt_used) <= TOLERANCE * prompt_used, (prompt_est, prompt_used)
    total_est = prompt_est + answer_est
    assert abs(total_est - total_used) <= TOLERANCE * total_used, (total_est, total_used)


def fill(store: Store, rows: list[tuple[int, int, int]]) -> None:
    for n, (chars, prompt_tokens, answer_tokens) in enumerate(rows):
        store.put(f"k{n}", "ollama:m", Completion("a", prompt_tokens, answer_tokens), chars)


def test_history_calibrates_overhead_ratio_and_answer_length(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    fill(store, [(60 + 15 * n, 12 + (60 + 15 * n) // 3, 10 + n) for n in range(MIN_HISTORY)])
    store.put("other", "openai:m", Completion("a", 999, 999), 10)
    store.put("no-usage", "ollama:m", Completion("a", 0, 0), 10)
    history = store.history("ollama:m")
    store.close()
    assert len(history) == MIN_HISTORY
    fitted = calibrate("ollama:m", history)
    assert fitted.overhead == pytest.approx(12, abs=1)
    assert fitted.chars_per_token == pytest.approx(3, rel=0.02)
    assert fitted.answer(None) == pytest.approx(19.5)
    assert fitted.answer(15) == pytest.approx(sum(min(10 + n, 15) for n in range(20)) / 20)
    guess = estimate("ollama:m", ["x" * 300], None, 1, history=history)
    assert (guess.prompt_tokens, guess.completion_tokens) == (112, 20)
    assert "your last 20 answers" in guess.basis
    assert calibrate("ollama:m", history[:MIN_HISTORY - 1]).answer(None) == 60  # defaults


def test_alike_prompts_keep_the_provider_overhead(tmp_path: Path) -> None:
    store = Store(tmp_path / "c.sqlite3")
    fill(store, [(120 + n % 3, 60, 30) for n in range(MIN_HISTORY)])
    fitted = calibrate("local:x", store.history("ollama:m"))
    store.close()
    assert fitted.overhead == 30
    assert fitted.prompt_tokens(121) == pytest.approx(60, rel=0.01)


def test_a_cache_from_before_the_migration_keeps_its_answers(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version=1")
    db.execute("INSERT INTO answers VALUES ('k', 'ollama:m', 'old', 5, 6, 'stop', 0)")
    db.commit()
    db.close()
    store = Store(path)
    assert store.get_many(["k"])["k"] == Completion("old", 5, 6, "stop")
    assert store.history("ollama:m") == []  # its length is unknown, so it cannot calibrate
    store.close()


def test_batch_mode_is_half_price_where_a_batch_api_exists() -> None:
    hosted = estimate("openai:gpt-4o-mini", ["hello"] * 10, 50, 8)
    assert hosted.cost_usd and hosted.batch_cost_usd == pytest.approx(hosted.cost_usd / 2)
    assert estimate("ollama:llama3.2", ["hello"], 50, 8).batch_cost_usd is None


def preview_seconds(output: str) -> float:
    found = re.search(r"about ([\d,.]+) s\.", " ".join(output.split()))
    assert found, output
    return float(found[1].replace(",", ""))


def test_time_estimate_comes_from_the_last_run_once_there_is_one(tmp_path: Path) -> None:
    """Before any run the time is a guess, and says so; after one it is this server's speed:
    40 rows 4 at a time at 0.1 s each take about 1 s, not the guess's 10."""
    from tests.conftest import fake_model
    from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer

    first, second = tmp_path / "a.csv", tmp_path / "b.csv"
    first.write_text("n\n" + "".join(f"first {i}\n" for i in range(40)))
    second.write_text("n\n" + "".join(f"second {i}\n" for i in range(40)))
    with FakeLLMServer(FakeLLMConfig(latency_median_s=0.1)) as server:
        args = ["--template", "Say {{ n }}", "--concurrency", "4", *fake_model(server)]
        guess = cli("preview", str(second), *args)
        assert guess.exit_code == 0, guess.output
        assert "Time from a guess" in " ".join(guess.output.split())
        assert preview_seconds(guess.output) == 10.0
        assert cli("run", str(first), *args).exit_code == 0
        measured = cli("preview", str(second), *args)
    text = " ".join(measured.output.split())
    assert "Time from your last run of openai-compatible:fake" in text, text
    assert 0.5 <= preview_seconds(measured.output) <= 3.0
