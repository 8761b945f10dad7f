"""Any server that speaks OpenAI's chat completions: OpenAI, Ollama, vLLM, llama.cpp."""

from __future__ import annotations

import json
from typing import Any

from ..errors import ProviderError
from ..schema import prompt_instructions
from .base import Completion, Params, SchemaMode
from .http import HTTPProvider
from .reply import count, label, one_line, printable
from .retry import Retryable

SCHEMA_NAME = "answer"
"""The name OpenAI requires for a ``json_schema`` response format (and Anthropic for a tool)."""
STRICT_KEYWORDS = frozenset({
    "type", "properties", "required", "additionalProperties", "items", "enum", "const",
    "anyOf", "$ref", "$defs", "definitions", "description", "title", "pattern", "format",
    "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems",
    "maxItems",
})
"""The JSON Schema keywords OpenAI's strict mode accepts; a schema using any other is sent
with ``strict: false`` rather than refused with a 400."""


class OpenAICompatible(HTTPProvider):
    """POST {base_url}/chat/completions, one prompt as one user message."""

    path = "/chat/completions"

    async def complete(self, prompt: str, params: Params) -> Completion:
        payload = chat_payload(self.model, prompt, params, self.schema_mode)
        return await self.send(payload, parse_chat_completion)


def chat_payload(model: str, prompt: str, params: Params,
                 schema_mode: SchemaMode = "native") -> dict[str, Any]:
    """The chat completions body for one prompt (also one line of a Batch API file).

    With ``params.schema`` the body asks for JSON following it: ``response_format`` (mode
    ``native``), the schema appended to the prompt as instructions (``prompt``), or both.
    """
    schema = json.loads(params.schema) if params.schema else None
    if schema is not None and schema_mode != "native":
        prompt = f"{prompt}\n\n{prompt_instructions(schema)}"
    messages = [{"role": "system", "content": params.system}] if params.system else []
    messages.append({"role": "user", "content": prompt})
    payload: dict[str, Any] = {"model": model, "messages": messages}
    if params.temperature is not None:
        payload["temperature"] = params.temperature
    if params.max_tokens is not None:
        payload["max_tokens"] = params.max_tokens
    if params.seed is not None:
        payload["seed"] = params.seed
    if schema is not None and schema_mode != "prompt":
        payload["response_format"] = {"type": "json_schema", "json_schema": {
            "name": SCHEMA_NAME, "schema": schema, "strict": strict_allowed(schema)}}
    return payload


def strict_allowed(schema: Any, root: bool = True) -> bool:
    """Whether OpenAI's strict mode accepts ``schema``: only known keywords, an object at
    the root, and every object closed (``additionalProperties: false``) with every property
    required. Strict mode guarantees the shape; a schema outside it still gets JSON mode's
    best effort, and our validation catches the rest."""
    if not isinstance(schema, dict) or not STRICT_KEYWORDS.issuperset(schema):
        return False
    if root and (schema.get("type") != "object" or "anyOf" in schema):
        return False
    props = schema.get("properties")
    if schema.get("type") == "object" or props is not None:
        if schema.get("additionalProperties") is not False or not isinstance(props, dict):
            return False
        if set(schema.get("required", [])) != set(props):
            return False
    nested: list[Any] = list((props or {}).values())
    nested += list(schema.get("anyOf", [])) + list(schema.get("$defs", {}).values())
    nested += list(schema.get("definitions", {}).values())
    if "items" in schema:
        nested.append(schema["items"])
    return all(strict_allowed(s, root=False) for s in nested)


def parse_chat_completion(body: dict[str, Any]) -> Completion:
    """Text, usage and finish reason, each within bounds (``reply``); an empty or odd body
    is worth a retry, not a crash."""
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices:
        raise Retryable("the server answered with no choices")
    message = choices[0].get("message") if isinstance(choices[0], dict) else None
    content = message.get("content") if isinstance(message, dict) else None
    refusal = message.get("refusal") if isinstance(message, dict) else None
    if refusal and not content:  # structured outputs: asking again gets the same refusal
        raise ProviderError(f"the model refused: {one_line(str(refusal))}")
    if not isinstance(content, str):
        raise Retryable("the server's answer has no message content")
    usage = body.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Completion(
        text=printable(content),
        prompt_tokens=count(usage.get("prompt_tokens")),
        completion_tokens=count(usage.get("completion_tokens")),
        finish_reason=label(choices[0].get("finish_reason")),
    )
