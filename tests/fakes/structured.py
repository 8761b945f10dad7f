"""Deterministic JSON that follows a JSON schema, for the fake LLM server's structured answers.

Values depend on the prompt only, so a test can predict them: the first enum choice (or the
``const``), ``len(prompt)`` for integers, ``len(prompt) / 4`` for numbers (both clamped into
``minimum``/``maximum``), ``true`` for booleans, ``"text: <start of the prompt>"`` for strings,
one item for arrays, every property for objects (optional ones too), the first ``anyOf`` branch.
"""

from __future__ import annotations

from typing import Any


def value_for(schema: Any, prompt: str, defs: dict[str, Any] | None = None) -> Any:
    """A value valid against ``schema`` (the subset structured outputs use)."""
    if not isinstance(schema, dict):
        return None
    defs = defs if defs is not None else {**schema.get("definitions", {}),
                                         **schema.get("$defs", {})}
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return value_for(defs.get(ref.rsplit("/", 1)[-1]), prompt, defs)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    if schema.get("anyOf"):
        return value_for(schema["anyOf"][0], prompt, defs)
    kind = schema.get("type", "object" if "properties" in schema else "string")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object":
        return {name: value_for(sub, prompt, defs)
                for name, sub in schema.get("properties", {}).items()}
    if kind == "array":
        return [value_for(schema.get("items", {}), prompt, defs)] * max(1, schema.get(
            "minItems", 1))
    if kind in ("integer", "number"):
        raw = len(prompt) if kind == "integer" else len(prompt) / 4
        low, high = schema.get("minimum", raw), schema.get("maximum", raw)
        return min(max(raw, low), high)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return "text: " + prompt[:30]
