"""Anthropic's Messages API: POST {base}/v1/messages with x-api-key and anthropic-version."""

from __future__ import annotations

from typing import Any

from .base import Completion, Params
from .http import HTTPProvider
from .retry import Retryable

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
"""The Messages API requires max_tokens; this is used when the user sets none."""


class AnthropicMessages(HTTPProvider):
    """POST {base_url}/v1/messages; the key goes in x-api-key, not a bearer token."""

    path = "/v1/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-api-key": api_key or "", "anthropic-version": ANTHROPIC_VERSION}

    async def complete(self, prompt: str, params: Params) -> Completion:
        return await self.send(messages_payload(self.model, prompt, params), parse_message)


def messages_payload(model: str, prompt: str, params: Params) -> dict[str, Any]:
    """The Messages API body for one prompt (also the ``params`` of a Message Batches
    request)."""
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
    }
    if params.system:
        payload["system"] = params.system
    if params.temperature is not None:
        payload["temperature"] = params.temperature
    return payload


def parse_message(body: dict[str, Any]) -> Completion:
    """Join the text blocks; no content at all is worth a retry."""
    blocks = body.get("content")
    if not isinstance(blocks, list) or not blocks:
        raise Retryable("the server answered with no content")
    text = "".join(str(b.get("text", "")) for b in blocks
                   if isinstance(b, dict) and b.get("type") == "text")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        text=text,
        prompt_tokens=int(usage.get("input_tokens") or 0),
        completion_tokens=int(usage.get("output_tokens") or 0),
        finish_reason=body.get("stop_reason"),
    )
