"""Any server that speaks OpenAI's chat completions: OpenAI, Ollama, vLLM, llama.cpp."""

from __future__ import annotations

from typing import Any

from .base import Completion, Params
from .http import HTTPProvider
from .retry import Retryable


class OpenAICompatible(HTTPProvider):
    """POST {base_url}/chat/completions, one prompt as one user message."""

    path = "/chat/completions"

    async def complete(self, prompt: str, params: Params) -> Completion:
        return await self.send(chat_payload(self.model, prompt, params), parse_chat_completion)


def chat_payload(model: str, prompt: str, params: Params) -> dict[str, Any]:
    """The chat completions body for one prompt (also one line of a Batch API file)."""
    messages = [{"role": "system", "content": params.system}] if params.system else []
    messages.append({"role": "user", "content": prompt})
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if params.temperature is not None:
        payload["temperature"] = params.temperature
    if params.max_tokens is not None:
        payload["max_tokens"] = params.max_tokens
    return payload


def parse_chat_completion(body: dict[str, Any]) -> Completion:
    """Text, usage and finish reason; an empty or odd body is worth a retry, not a crash."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise Retryable("the server answered with no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    if not isinstance(content, str):
        raise Retryable("the server's answer has no message content")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        text=content,
        prompt_tokens=int(usage.get("prompt_tokens") or 0),
        completion_tokens=int(usage.get("completion_tokens") or 0),
        finish_reason=choices[0].get("finish_reason"),
    )
