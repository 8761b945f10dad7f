"""Several prompt columns in one sheet, a template using another column's answers."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import openpyxl

from tests.conftest import SAMPLES, cli, fake_model
from tests.fakes.llm_server import FakeLLMServer


def sent(server: FakeLLMServer) -> list[str]:
    """The prompts that reached the server, in arrival order."""
    return [str(r["json"]["messages"][-1]["content"]) for r in server.requests
            if r["path"].endswith("/chat/completions")]


def values(path: Path, sheet: str = "Feedback") -> list[list[Any]]:
    return [list(r) for r in openpyxl.load_workbook(path)[sheet].iter_rows(values_only=True)]


def feedback(tmp_path: Path) -> Path:
    return Path(shutil.copy(SAMPLES / "customer_feedback.xlsx", tmp_path / "f.xlsx"))


def answer(prompt: str) -> str:
    """Summaries say which feedback they read; replies quote the summary they were given."""
    if prompt.startswith("Summarize"):
        return "S<" + prompt.split(": ", 1)[1][:12] + ">"
    return "R<" + prompt.split(": ", 1)[1] + ">"


def test_templates_row_chains_reply_after_summary(tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.config.answer = answer
    llm.config.latency_median_s = 0.05
    book = feedback(tmp_path)
    result = cli("run", str(book), "-o", str(tmp_path / "out.xlsx"), "--concurrency", "2",
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    rows = values(tmp_path / "out.xlsx")
    assert rows[1] == ["Customer", "Feedback", "summary", "reply", "sentiment", "urgent", "score"]
    for _, text, summary, reply, *_ in rows[2:8]:
        assert summary == "S<" + text[:12] + ">"
        assert reply == "R<" + summary + ">"  # the reply read this row's own summary
    prompts = sent(llm)
    assert len(prompts) == 18  # summary, reply and triage for each of 6 rows
    replies = [i for i, p in enumerate(prompts) if p.startswith("Write")]
    summaries = [i for i, p in enumerate(prompts) if p.startswith("Summarize")]
    assert replies[0] < summaries[-1], "a row's reply waits only for its own summary"

    again = cli("run", str(tmp_path / "out.xlsx"), "--rerun", "all", *fake_model(llm))
    assert again.exit_code == 0, again.output
    assert len(sent(llm)) == 18, "the rerun finds both steps of every row in the cache"


def test_conf_templates_and_a_failed_summary(tmp_path: Path, llm: FakeLLMServer) -> None:
    """template.NAME keys add prompt columns; a failed answer fails what uses it, and a
    rerun repairs both."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    for row in [["Name"], ["mug"], ["cap"]]:
        ws.append(row)
    conf = wb.create_sheet("promptbatch.conf")
    conf.append(["template.Colour", "Colour of {{ name }}"])
    conf.append(["template.Poem", "Poem on {{ name }} in {{ colour }}"])
    conf.append(["retries", 1])
    book = tmp_path / "c.xlsx"
    wb.save(book)
    llm.config.fault_for = lambda p: "500" if p == "Colour of cap" else None
    first = cli("run", str(book), "-o", str(book), *fake_model(llm))
    assert first.exit_code == 1
    rows = values(book, "S")
    assert rows[0] == ["Name", "colour", "poem"]
    assert rows[1] == ["mug", "Answer: Colour of mug",
                       "Answer: Poem on mug in Answer: Colour of mug"]
    assert rows[2][1].startswith("#ERROR: HTTP 500")
    assert rows[2][2] == "#ERROR: uses the answer in 'S'!B3, which failed; a rerun retries both"
    assert sorted(sent(llm)) == ["Colour of cap", "Colour of mug",
                                 "Poem on mug in Answer: Colour of mug"]

    llm.config.fault_for = None
    cleared = openpyxl.load_workbook(book)
    cleared["S"]["C3"] = None
    cleared.save(book)
    kept = cli("run", str(book), "-o", str(book), "--rerun", "empty", *fake_model(llm))
    assert kept.exit_code == 1, kept.output
    assert values(book, "S")[2][2] == rows[2][2], "a failure kept is no answer to build on"
    assert len(sent(llm)) == 3, "--rerun empty keeps the failed colour and sends no poem on it"
    second = cli("run", str(book), "-o", str(book), *fake_model(llm))
    assert second.exit_code == 0, second.output
    assert values(book, "S")[2] == ["cap", "Answer: Colour of cap",
                                    "Answer: Poem on cap in Answer: Colour of cap"]
    assert sent(llm)[3:] == ["Colour of cap", "Poem on cap in Answer: Colour of cap"]


def test_kept_answers_feed_the_next_step(tmp_path: Path, llm: FakeLLMServer) -> None:
    """A summary already in the sheet is used as it is; only the missing replies are sent."""
    book = feedback(tmp_path)
    wb = openpyxl.load_workbook(book)
    wb["Feedback"]["C3"] = "typed by hand"
    wb.save(book)
    result = cli("run", str(book), "-o", str(book), *fake_model(llm))
    assert result.exit_code == 0, result.output
    prompts = sent(llm)
    assert "Write a one-sentence reply to Ana, whose feedback was: typed by hand" in prompts
    assert len(prompts) == 17 and values(book)[2][2] == "typed by hand"


def test_cycle_is_refused_before_any_call(tmp_path: Path, llm: FakeLLMServer) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    for row in [["Templates", "{{ b }} again", "{{ a }} again"], ["Name", "a", "b"], ["x"]]:
        ws.append(row)
    book = tmp_path / "cycle.xlsx"
    wb.save(book)
    result = cli("run", str(book), *fake_model(llm))
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "use each other's answers in a circle: 'a' ('S'!B1) -> 'b' ('S'!C1) -> 'a'" in text
    assert sent(llm) == []


def test_preview_shows_each_step_and_estimates_the_later_prompts(
        tmp_path: Path, llm: FakeLLMServer) -> None:
    result = cli("preview", str(feedback(tmp_path)), *fake_model(llm))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "summary: template 'Feedback'!C1" in text
    assert "reply: template 'Feedback'!D1, uses the answers of 'summary'" in text
    assert "18 to send (12 distinct prompts now, 6 once the answers they use are back)" in text
    assert sent(llm) == []
