"""Anthropic's Messages API: POST {base}/v1/messages with x-api-key and anthropic-version."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from .base import Completion, Params
from .http import HTTPProvider
from .retry import Retryable, RetryPolicy

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
"""The Messages API requires max_tokens; this is used when the user sets none."""


class AnthropicMessages(HTTPProvider):
    def __init__(
        self, client: httpx.AsyncClient, *, label: str, base_url: str, model: str,
        api_key: str, policy: RetryPolicy | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> None:
        headers = {"x-api-key": api_key, "anthropic-version": ANTHROPIC_VERSION}
        super().__init__(client, label=label, url=base_url.rstrip("/") + "/v1/messages",
                         model=model, headers=headers, api_key=api_key, policy=policy,
                         on_retry=on_retry)

    async def complete(self, prompt: str, params: Params) -> Completion:
        payload: dict[str, Any] = {
            "model": self.model,
            "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
            "messages": [{"role": "user", "content": prompt}],
        }
        if params.system:
            payload["system"] = params.system
        if params.temperature is not None:
            payload["temperature"] = params.temperature
        return await self.send(payload, parse_message)


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
