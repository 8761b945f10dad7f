"""The one interface every model provider implements, and the types that cross it."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal, Protocol

SchemaMode = Literal["native", "native+prompt", "prompt"]
"""How a server is asked for a structured answer when ``Params.schema`` is set: its own
mechanism (OpenAI ``response_format``, an Anthropic tool), that plus the schema as
instructions in the prompt, or the instructions alone. Every reply is validated either way."""


@dataclass(frozen=True)
class Params:
    """What, besides the prompt, decides an answer (and so is part of its cache key)."""

    temperature: float | None = None
    max_tokens: int | None = None
    system: str | None = None
    schema: str | None = None
    """A JSON schema (canonical JSON text) the answer must follow, or None for free text."""
    seed: int | None = None
    """The variation of a row's answer (``variations``): sent as ``seed`` where the API takes
    one (OpenAI, Ollama, llama.cpp), and part of the cache key everywhere."""


@dataclass(frozen=True)
class Completion:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None

    @property
    def cut(self) -> bool:
        """The answer stopped at max_tokens: OpenAI says ``length``, Anthropic ``max_tokens``."""
        return self.finish_reason in ("length", "max_tokens")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry a passing failure (see ``retry.with_retries``)."""

    attempts: int = 6
    base_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, server_wait: float | None) -> float:
        """Full jitter on an exponential ceiling; a server's wait is the floor, plus jitter."""
        backoff = random.uniform(0, min(self.max_delay, self.base_delay * 2**attempt))
        if server_wait is None:
            return backoff
        return min(self.max_delay, server_wait) + random.uniform(0, self.base_delay / 2)


class Provider(Protocol):
    """Sends one prompt and returns one completion, retrying what is worth retrying."""

    label: str
    """Identifies the model for the cache, e.g. ``openai:gpt-4o-mini``; never holds a key."""

    @property
    def window(self) -> int:
        """How many requests may be in flight now (the limiter's window)."""
        ...

    async def complete(self, prompt: str, params: Params) -> Completion:
        """Answer ``prompt`` or raise ProviderError."""
        ...
