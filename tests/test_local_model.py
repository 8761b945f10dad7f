"""The embedded default: SmolLM2 served by llama.cpp on 127.0.0.1, no key, no network."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import httpx
import openpyxl
import pytest

from promptbatch_sheets.providers import ModelSpec, Params
from promptbatch_sheets.providers.local import EmbeddedServer
from promptbatch_sheets.providers.openai import OpenAICompatible
from promptbatch_sheets.schema import Schema
from tests.conftest import cli


def test_embedded_model_answers_real_prompts() -> None:
    server = EmbeddedServer(parallel=2)
    base_url = server.start()
    assert base_url.startswith("http://127.0.0.1:")

    async def ask() -> list[object]:
        async with httpx.AsyncClient(timeout=60) as client:
            model = OpenAICompatible([client], label="local", base_url=base_url, model="smollm2")
            return list(await asyncio.gather(
                model.complete("Name one colour.", Params(max_tokens=16, temperature=0)),
                model.complete("Say hello.", Params(max_tokens=16, system="Be brief."))))

    try:
        answers = asyncio.run(ask())
    finally:
        server.stop()
    for answer in answers:
        assert answer.text.strip()  # type: ignore[attr-defined]
        assert answer.prompt_tokens > 0 and 0 < answer.completion_tokens <= 16  # type: ignore[attr-defined]
        assert answer.finish_reason in ("stop", "length")  # type: ignore[attr-defined]


def test_embedded_model_follows_a_schema() -> None:
    """llama.cpp turns response_format into a grammar; with the schema in the prompt as well
    (the local kind's mode) every reply of the 135M model validates."""
    schema = Schema.from_fields("sentiment (positive|negative|neutral), score (number), "
                                "reason, spam (boolean), count (integer)", "test")
    reviews = ["Keeps water cold all day, even in a hot car.",
               "Broke after two days. Waste of money.", "BUY CHEAP WATCHES NOW!!!"]
    server = EmbeddedServer(parallel=3)
    base_url = server.start()

    async def ask() -> list[str]:
        async with httpx.AsyncClient(timeout=300) as client:
            model = OpenAICompatible([client], label="local", base_url=base_url, model="smollm2",
                                     schema_mode=ModelSpec.parse("local").schema_mode)
            params = Params(max_tokens=200, temperature=0, schema=schema.text())
            replies = await asyncio.gather(*(model.complete(f"Classify this review: {r}", params)
                                             for r in reviews))
            return [r.text for r in replies]

    try:
        replies = asyncio.run(ask())
    finally:
        server.stop()
    for reply in replies:
        cells = schema.cells(schema.check(reply))
        assert cells[0] in ("positive", "negative", "neutral")
        assert isinstance(cells[1], (int, float)) and isinstance(cells[3], bool)


def test_demo_workbook_then_free_rerun(tmp_path: Path, samples: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    book = tmp_path / "product_descriptions.xlsx"
    shutil.copy(samples / "product_descriptions.xlsx", book)
    out = tmp_path / "answers.xlsx"
    result = cli("run", str(book), "-o", str(out), "--max-tokens", "40")
    assert result.exit_code == 0, result.output
    assert "using the embedded local model" in result.output
    ws = openpyxl.load_workbook(out).active
    assert ws["E3"].value == "response"
    answers = [ws.cell(r, 5).value for r in range(4, 16)]
    assert all(isinstance(a, str) and a.strip() and not a.startswith("#ERROR") for a in answers)

    def no_server(self: EmbeddedServer) -> str:
        raise AssertionError("a rerun must not start the model")

    monkeypatch.setattr(EmbeddedServer, "start", no_server)
    again = cli("run", str(book), "-o", str(out), "--max-tokens", "40")
    assert again.exit_code == 0, again.output
    assert [openpyxl.load_workbook(out).active.cell(r, 5).value for r in range(4, 16)] == answers
    preview = cli("preview", str(book), "--max-tokens", "40")
    assert preview.exit_code == 0 and "0 to send" in preview.output
    other = tmp_path / "support_tickets.xlsx"  # the time of new rows: as fast as this machine was
    shutil.copy(samples / "support_tickets.xlsx", other)
    estimate = " ".join(cli("preview", str(other), "--max-tokens", "40").output.split())
    assert "Time from your last run here:" in estimate, estimate
