"""Structured requests on the wire: what each provider sends, as the fake server receives it,
and the JSON that comes back through the provider's parser."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from promptbatch_sheets.errors import ProviderError, SchemaMismatch
from promptbatch_sheets.providers import ModelSpec, Params
from promptbatch_sheets.providers.anthropic import AnthropicMessages
from promptbatch_sheets.providers.base import SchemaMode
from promptbatch_sheets.providers.http import HTTPProvider
from promptbatch_sheets.providers.openai import (
    OpenAICompatible,
    parse_chat_completion,
    strict_allowed,
)
from promptbatch_sheets.schema import Schema
from tests.fakes.llm_server import BAD_JSON_REPLY, FakeLLMServer

REVIEW = Schema.from_fields("sentiment (positive|negative), score (number), reason, spam "
                            "(boolean), count (integer)", "test")
PROMPT = "Classify: great bottle."


def ask(server: FakeLLMServer, kind: type[HTTPProvider], params: Params,
        mode: SchemaMode = "native", prompt: str = PROMPT) -> str:
    async def go() -> str:
        async with httpx.AsyncClient() as client:
            base = server.root_url if kind is AnthropicMessages else server.base_url
            provider = kind([client], label="t", base_url=base, model="m", api_key="k",
                            schema_mode=mode)
            return (await provider.complete(prompt, params)).text

    return asyncio.run(go())


def body(server: FakeLLMServer) -> dict[str, Any]:
    sent: dict[str, Any] = server.requests[-1]["json"]
    return sent


def test_openai_sends_a_strict_json_schema_and_gets_valid_json(llm: FakeLLMServer) -> None:
    reply = ask(llm, OpenAICompatible, Params(schema=REVIEW.text()))
    assert body(llm)["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "answer", "schema": REVIEW.json_schema, "strict": True}}
    assert body(llm)["messages"] == [{"role": "user", "content": PROMPT}]
    values = REVIEW.check(reply)
    assert REVIEW.cells(values) == ["positive", len(PROMPT) / 4, "text: " + PROMPT, True,
                                    len(PROMPT)]


def test_self_hosted_servers_also_get_the_schema_in_the_prompt(llm: FakeLLMServer) -> None:
    REVIEW.check(ask(llm, OpenAICompatible, Params(schema=REVIEW.text()), "native+prompt"))
    assert body(llm)["messages"][0]["content"] == PROMPT + "\n\n" + REVIEW.instructions()
    assert "response_format" in body(llm)
    ask(llm, OpenAICompatible, Params(schema=REVIEW.text()), "prompt")
    assert body(llm)["messages"][0]["content"] == PROMPT + "\n\n" + REVIEW.instructions()
    assert "response_format" not in body(llm)


@pytest.mark.parametrize(("provider", "mode"), [
    ("openai", "native"), ("anthropic", "native"), ("ollama", "native+prompt"),
    ("openai-compatible", "native+prompt"), ("local", "native+prompt")])
def test_each_kind_of_server_has_its_schema_mode(provider: str, mode: str) -> None:
    base = "http://127.0.0.1:1/v1" if provider == "openai-compatible" else None
    assert ModelSpec.parse(f"{provider}:m" if provider != "local" else "local",
                           base).schema_mode == mode


def test_without_a_schema_nothing_changes(llm: FakeLLMServer) -> None:
    assert ask(llm, OpenAICompatible, Params(), "native+prompt") == "Answer: " + PROMPT
    assert "response_format" not in body(llm)
    assert ask(llm, AnthropicMessages, Params()) == "Answer: " + PROMPT
    assert "tools" not in body(llm) and "tool_choice" not in body(llm)


def test_anthropic_forces_one_tool_and_returns_its_input(llm: FakeLLMServer) -> None:
    reply = ask(llm, AnthropicMessages, Params(schema=REVIEW.text()))
    assert body(llm)["tools"] == [{"name": "answer", "input_schema": REVIEW.json_schema,
                                   "description": "Record the answer, in exactly these "
                                                  "fields."}]
    assert body(llm)["tool_choice"] == {"type": "tool", "name": "answer"}
    assert body(llm)["messages"] == [{"role": "user", "content": PROMPT}]
    assert json.loads(reply) == REVIEW.check(reply)


@pytest.mark.parametrize("kind", [OpenAICompatible, AnthropicMessages])
def test_badjson_fault_makes_one_reply_fail_validation(llm: FakeLLMServer,
                                                       kind: type[HTTPProvider]) -> None:
    llm.config.faults = ["badjson"]
    reply = ask(llm, kind, Params(schema=REVIEW.text()))
    assert reply == BAD_JSON_REPLY
    with pytest.raises(SchemaMismatch, match="holds no JSON object"):
        REVIEW.check(reply)
    REVIEW.check(ask(llm, kind, Params(schema=REVIEW.text())))  # the next one is fine
    assert [r["fault"] for r in llm.requests] == ["badjson", None]


def test_structured_answer_hook_chooses_the_reply(llm: FakeLLMServer) -> None:
    seen: list[dict[str, Any]] = []

    def answer(prompt: str, schema: dict[str, Any]) -> Any:
        seen.append(schema)
        return {"sentiment": "negative", "score": "high"}

    llm.config.structured_answer = answer
    reply = ask(llm, AnthropicMessages, Params(schema=REVIEW.text()))
    assert seen == [REVIEW.json_schema]
    with pytest.raises(SchemaMismatch, match="score: 'high' is not a number"):
        REVIEW.check(reply)


def test_openai_refusal_is_a_final_error() -> None:
    refused = {"choices": [{"message": {"role": "assistant", "content": None,
                                        "refusal": "I can't help with that."}}]}
    with pytest.raises(ProviderError, match="the model refused: I can't help"):
        parse_chat_completion(refused)


@pytest.mark.parametrize(("schema", "strict"), [
    (REVIEW.json_schema, True),
    ({"type": "object", "properties": {"a": {"type": "string"}}}, False),  # open object
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": [],
      "additionalProperties": False}, False),  # optional property
    ({"type": "object", "properties": {"a": {"type": "string", "minLength": 2}},
      "required": ["a"], "additionalProperties": False}, False),  # unsupported keyword
    ({"type": "object", "properties": {"a": {"type": "array", "items": {
        "type": "object", "properties": {"b": {"type": "integer"}}, "required": ["b"],
        "additionalProperties": False}}}, "required": ["a"], "additionalProperties": False},
     True),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {
        "type": "object", "properties": {"b": {"type": "integer"}}}}},
      "required": ["a"], "additionalProperties": False}, False),  # open nested object
    ({"anyOf": [{"type": "object"}]}, False),
])
def test_strict_only_where_openai_allows_it(schema: dict[str, Any], strict: bool) -> None:
    assert strict_allowed(schema) is strict
