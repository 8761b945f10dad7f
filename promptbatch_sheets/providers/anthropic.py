"""Anthropic's Messages API: POST {base}/v1/messages with x-api-key and anthropic-version."""

from __future__ import annotations

import json
from typing import Any

from .base import Completion, Params
from .http import HTTPProvider
from .reply import count, label, printable
from .retry import Retryable

ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_MAX_TOKENS = 1024
"""The Messages API requires max_tokens; this is used when the user sets none."""
TOOL_NAME = "answer"
"""The one tool a structured request offers, and forces: its input is the answer."""


class AnthropicMessages(HTTPProvider):
    """POST {base_url}/v1/messages; the key goes in x-api-key, not a bearer token."""

    path = "/v1/messages"

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-api-key": api_key or "", "anthropic-version": ANTHROPIC_VERSION}

    async def complete(self, prompt: str, params: Params) -> Completion:
        return await self.send(messages_payload(self.model, prompt, params), parse_message)


def messages_payload(model: str, prompt: str, params: Params) -> dict[str, Any]:
    """The Messages API body for one prompt (also the ``params`` of a Message Batches
    request). With ``params.schema``, one tool whose input schema is the answer's schema,
    forced with ``tool_choice``: Anthropic's way to get JSON that follows a schema. The
    Messages API takes no seed: a variation differs only by its cache key (and sampling)."""
    payload: dict[str, Any] = {
        "model": model,
        "max_tokens": params.max_tokens or DEFAULT_MAX_TOKENS,
        "messages": [{"role": "user", "content": prompt}],
    }
    if params.system:
        payload["system"] = params.system
    if params.temperature is not None:
        payload["temperature"] = params.temperature
    if params.schema:
        payload["tools"] = [{"name": TOOL_NAME, "input_schema": json.loads(params.schema),
                             "description": "Record the answer, in exactly these fields."}]
        payload["tool_choice"] = {"type": "tool", "name": TOOL_NAME}
    return payload


def parse_message(body: dict[str, Any]) -> Completion:
    """The tool call's input as JSON text if there is one (a structured answer), else the
    text blocks joined, within bounds (``reply``); no content at all is worth a retry."""
    blocks = body.get("content")
    if not isinstance(blocks, list) or not blocks:
        raise Retryable("the server answered with no content")
    blocks = [b for b in blocks if isinstance(b, dict)]
    tool = next((b for b in blocks if b.get("type") == "tool_use"), None)
    if tool is not None:
        text = json.dumps(tool.get("input"), separators=(",", ":"), ensure_ascii=False)
    else:
        text = "".join(str(b.get("text", "")) for b in blocks if b.get("type") == "text")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        text=printable(text),
        prompt_tokens=count(usage.get("input_tokens")),
        completion_tokens=count(usage.get("output_tokens")),
        finish_reason=label(body.get("stop_reason")),
    )
