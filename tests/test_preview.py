"""`promptbatch preview`: what a run would do and cost, and not one model call."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import cli, fake_model
from tests.fakes.llm_server import FakeLLMServer


def test_preview_counts_prompts_and_estimates_without_calling(
    samples: Path, llm: FakeLLMServer
) -> None:
    result = cli("preview", str(samples / "support_tickets.xlsx"), *fake_model(llm))
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "10 in the table, 2 already answered, 0 answered from cache, 8 to send" in text
    assert "prompt for row 2" in text and "Category:" in text
    assert "{{ customer_tier }}" in text and "Ticket ID" in text
    assert "No model was called" in text
    assert llm.requests == []


def test_preview_prices_a_hosted_model(samples: Path) -> None:
    result = cli("preview", str(samples / "product_descriptions.xlsx"), "--model",
                 "openai:gpt-4o-mini", "--max-tokens", "50")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "12 to send" in text and "(up to 600 at --max-tokens 50)" in text
    assert "cost $0.000" in text and "Batch API (half price" in text
    assert "defaults for openai" in text
