"""Before a run: how many tokens, dollars and seconds it will take (no model call)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from functools import cache
from importlib.resources import files

CHARS_PER_TOKEN = 4.0
"""English text averages about four characters per token in GPT and Llama tokenizers."""
DEFAULT_ANSWER_TOKENS = 60
"""Assumed answer length when max_tokens is not set: a sentence or two."""
LOCAL_SECONDS_PER_TOKEN = (0.001, 0.009)
"""(prompt, answer) seconds per token of the embedded model on two cores, measured on the
demo workbook; it is CPU-bound, so time does not shrink with concurrency."""
HOSTED_LATENCY_S = 1.0
"""Typical time to a full short answer from a hosted API."""


@dataclass(frozen=True)
class Estimate:
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float | None
    """None when the model is not in the price table."""
    seconds: float


@cache
def price_table() -> dict[str, list[float]]:
    text = files("promptbatch_sheets").joinpath("prices.json").read_text(encoding="utf-8")
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def price(model: str) -> tuple[float, float] | None:
    """(input, output) USD per million tokens for ``provider:model``."""
    entry = price_table().get(model)
    return (entry[0], entry[1]) if entry else None


def tokens(text: str) -> int:
    return max(1, math.ceil(len(text) / CHARS_PER_TOKEN))


def cost(model: str, prompt_tokens: int, completion_tokens: int) -> float | None:
    rates = price(model)
    if rates is None:
        return None
    return (prompt_tokens * rates[0] + completion_tokens * rates[1]) / 1_000_000


def estimate(model: str, prompts: list[str], max_tokens: int | None,
             concurrency: int) -> Estimate:
    """Tokens from text length, cost from the price table, time from rounds of requests."""
    provider = model.partition(":")[0]
    answer = max_tokens or DEFAULT_ANSWER_TOKENS
    prompt_tokens = sum(tokens(p) for p in prompts)
    completion_tokens = answer * len(prompts)
    if provider == "local":
        seconds = (prompt_tokens * LOCAL_SECONDS_PER_TOKEN[0]
                   + completion_tokens * LOCAL_SECONDS_PER_TOKEN[1])
    else:
        seconds = math.ceil(len(prompts) / max(1, concurrency)) * HOSTED_LATENCY_S
    return Estimate(prompt_tokens, completion_tokens,
                    cost(model, prompt_tokens, completion_tokens), seconds)
