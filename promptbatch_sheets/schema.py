"""Structured answers: the JSON schema a reply must follow, and its fields as typed cells.

A user describes the answer either as a list of output headers (``sentiment
(positive|negative), score (number), reason``) or as a JSON schema of their own. Either way the
provider is asked for JSON (``response_format``, a forced tool, or instructions in the prompt),
and whatever comes back is checked here before it reaches a sheet: a model may still answer
with prose, fences, a wrong type or a missing field, and a cell must never pretend otherwise.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cells import CellValue
from .errors import ConfigError, SchemaMismatch

if TYPE_CHECKING:
    import jsonschema

KINDS = ("string", "number", "integer", "boolean", "enum", "json")
"""What a field holds; ``json`` is a nested object or array, written as compact JSON text."""
TYPE_WORDS = {"string": "string", "text": "string", "number": "number", "integer": "integer",
              "int": "integer", "boolean": "boolean", "bool": "boolean"}
"""The types a field list may name in parentheses; a list of choices makes an enum."""
FIELDS_EXAMPLE = "sentiment (positive|negative|neutral), score (number), reason"
REPAIR_REPLY_LIMIT = 2_000
"""How much of an invalid reply goes back in the repair prompt: enough to see the mistake,
not a second bill for a reply that rambled."""
MAX_REASONS = 3
"""Problems named per invalid reply: enough for the repair retry, short enough for a cell."""
_FENCE = re.compile(r"```(?:json|JSON)?\s*\n?(.*?)```", re.DOTALL)


def _jsonschema() -> Any:
    """jsonschema, imported on first use: a run without structured answers never loads it."""
    import jsonschema
    import jsonschema.exceptions

    return jsonschema


@dataclass(frozen=True)
class Field:
    """One output column of a structured answer."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class Schema:
    """The fields, in column order, and the JSON schema sent to the model and checked."""

    fields: tuple[Field, ...]
    json_schema: dict[str, Any] = field(hash=False)

    @classmethod
    def from_fields(cls, spec: str, origin: str) -> Schema:
        """``name (type), name (a|b|c), name``: untyped names are strings; every field is
        required and no other is allowed, so the schema is strict for every provider."""
        fields = tuple(_parse_field(part, i, origin)
                       for i, part in enumerate(_split_top_level(spec, origin), 1))
        if not fields:
            raise ConfigError(f"{origin}: the list of fields is empty. Write it like: "
                              f"{FIELDS_EXAMPLE}")
        _refuse_duplicates([f.name for f in fields], origin)
        return cls(fields, {
            "type": "object",
            "properties": {f.name: _property(f) for f in fields},
            "required": [f.name for f in fields],
            "additionalProperties": False,
        })

    @classmethod
    def from_json(cls, text: str, origin: str) -> Schema:
        """A user's JSON schema; its top level must be an object with properties, one per
        column. An OpenAI-style wrapper (``{"name": ..., "schema": {...}}``) is unwrapped."""
        try:
            value = json.loads(text)
        except ValueError as exc:
            raise ConfigError(f"{origin}: the schema is not valid JSON ({exc}).") from None
        if isinstance(value, dict) and "properties" not in value and isinstance(
                value.get("schema"), dict):
            value = value["schema"]
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: the schema must be a JSON object "
                              '({"type": "object", "properties": {...}}).')
        try:
            _jsonschema().validators.validator_for(value).check_schema(value)
        except _jsonschema().SchemaError as exc:
            raise ConfigError(f"{origin}: the schema is not a valid JSON schema: "
                              f"{exc.message}.") from None
        props = value.get("properties")
        if value.get("type", "object") != "object" or not isinstance(props, dict) or not props:
            raise ConfigError(f"{origin}: the schema's top level must be an object with "
                              'properties, one per output column: {"type": "object", '
                              '"properties": {"score": {"type": "number"}}}.')
        return cls(tuple(_field_of(name, prop) for name, prop in props.items()), value)

    def text(self) -> str:
        """Compact JSON for ``Params.schema`` and so for the cache key. Keys keep their
        order rather than being sorted: models write fields in schema order, and a
        ``reason`` before a ``score`` is a different (often better) request than after it."""
        return json.dumps(self.json_schema, separators=(",", ":"), ensure_ascii=False)

    def instructions(self) -> str:
        """For servers that take neither ``response_format`` nor tools: the schema in words."""
        return prompt_instructions(self.json_schema)

    @cached_property
    def _validator(self) -> Any:
        kind = _jsonschema().validators.validator_for(self.json_schema)
        return kind(self.json_schema, format_checker=kind.FORMAT_CHECKER)

    def check(self, reply: str) -> dict[str, Any]:
        """The reply's JSON object, if it follows the schema; else ``SchemaMismatch``.

        Values are not coerced: ``"3"`` where a number is asked for is refused, not read as
        3, because the single repair retry fixes it at the source and a guess could be wrong
        (``"3-4"``, ``"3,5"``). An integer is a number, as JSON Schema says.
        """
        value = extract_object(reply)
        errors = list(self._validator.iter_errors(value))
        if errors:
            first = _jsonschema().exceptions.best_match(errors)
            reasons = dict.fromkeys(describe(e) for e in [first, *errors])
            raise SchemaMismatch("; ".join(list(reasons)[:MAX_REASONS]))
        return value

    def cells(self, values: dict[str, Any]) -> list[CellValue]:
        """One cell per field, in field order; a missing optional field is an empty cell."""
        return [cell_value(values.get(f.name), f.kind) for f in self.fields]


def load_schema(*, fields: str | None, schema: str | None, origin: str,
                base_dir: Path | None = None, confined: bool = False) -> Schema | None:
    """The schema a run asks for: ``schema`` (JSON text, or a .json file relative to
    ``base_dir``) or ``fields`` (the list form); neither is free text (None).

    ``confined``: the name comes from a workbook, which is someone else's file; it may name a
    file beside the workbook, never one elsewhere on the user's disk (that file's text would
    be sent to the model)."""
    fields = fields.strip() if fields and fields.strip() else None
    schema = schema.strip() if schema and schema.strip() else None
    if fields and schema:
        raise ConfigError(f"{origin}: both fields and schema are set; keep one. fields is "
                          "the short form (name (type), ...), schema a full JSON schema.")
    if fields:
        return Schema.from_fields(fields, origin)
    if schema is None:
        return None
    if schema.startswith("{"):
        return Schema.from_json(schema, origin)
    path = _confined(schema, base_dir, origin) if confined else Path(schema).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{origin}: the schema {schema!r} is neither JSON (it does not start "
                          f"with '{{') nor a readable file ({exc}). Give the JSON itself or "
                          "the path of a .json file.") from None
    return Schema.from_json(text, f"{path} (the schema named by {origin})")


def _confined(name: str, base_dir: Path | None, origin: str) -> Path:
    """A schema file named by a workbook, refused unless it lies in the workbook's folder."""
    folder = base_dir.resolve() if base_dir is not None else None
    path = (folder / name).resolve() if folder is not None else None
    if path is None or folder is None or not path.is_relative_to(folder):
        raise ConfigError(f"{origin}: the schema {name[:80]!r} names a file outside the "
                          "workbook's folder. A workbook may name a .json file beside it, or "
                          "hold the JSON schema itself; pass --schema FILE to use another.")
    return path


def repair_prompt(prompt: str, reply: str, reason: str) -> str:
    """The one retry after an invalid reply: the same question, the reply, what was wrong."""
    shown = reply if len(reply) <= REPAIR_REPLY_LIMIT else reply[:REPAIR_REPLY_LIMIT] + " [...]"
    return (f"{prompt}\n\nYour previous reply was:\n{shown}\n\nIt is not valid: {reason}.\n"
            "Reply again with only the corrected JSON object, no other text.")


def prompt_instructions(json_schema: dict[str, Any]) -> str:
    """The schema as text appended to a prompt (shared by ``Schema.instructions`` and the
    providers, which receive only ``Params.schema``)."""
    text = json.dumps(json_schema, separators=(",", ":"), ensure_ascii=False)
    return ("Reply with only a JSON object that follows this JSON schema, with no other text "
            f"before or after it:\n{text}")


# --- reading a reply ---------------------------------------------------------------------------


def _no_constant(name: str) -> Any:
    raise SchemaMismatch(f"{name} is not a JSON number")


def extract_object(reply: str) -> dict[str, Any]:
    """The JSON object in a reply: the whole reply, a fenced block, or the first object
    found in surrounding text (small models like to say "Here is the JSON:")."""
    try:
        return _find_object(reply)
    except RecursionError:  # the server's text: it must not crash the run
        raise SchemaMismatch("the reply nests JSON too deep to read") from None


MAX_STARTS = 64
"""Braces tried as the start of an object in surrounding text. A failed parse costs a count
of the lines before it (``JSONDecodeError``), so trying every brace of a reply made of braces
would be quadratic: 160 KB of ``{ `` took 4 s, 4 MB would take most of an hour."""


def _find_object(reply: str) -> dict[str, Any]:
    decoder = json.JSONDecoder(parse_constant=_no_constant)
    candidates = [reply.strip(), *(m.group(1).strip() for m in _FENCE.finditer(reply))]
    for text in candidates:
        try:
            value = decoder.decode(text)
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
        raise SchemaMismatch(f"the reply is JSON but not an object ({_short(value)})")
    for match in itertools.islice(re.finditer(r"\{", reply), MAX_STARTS):
        try:
            value, _ = decoder.raw_decode(reply, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(value, dict):
            return value
    raise SchemaMismatch("the reply holds no JSON object" if "{" not in reply
                         else "the reply's JSON object is incomplete or malformed")


_TYPE_WORDS = {"string": "a string", "number": "a number", "integer": "a whole number",
               "boolean": "true or false", "object": "an object", "array": "a list",
               "null": "null"}


def describe(error: jsonschema.exceptions.ValidationError) -> str:
    """A validation error in a user's words: ``score: 'high' is not a number``."""
    where = ".".join(str(p) for p in error.absolute_path)
    prefix = f"{where}: " if where else ""
    if error.validator == "type":
        wanted = error.validator_value
        words = [_TYPE_WORDS.get(str(w), str(w))
                 for w in (wanted if isinstance(wanted, list) else [wanted])]
        return f"{prefix}{_short(error.instance)} is not {' or '.join(words)}"
    if error.validator == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return f"{prefix}{_short(error.instance)} is not one of {choices}"
    if error.validator == "required":
        missing = [r for r in error.validator_value if r not in error.instance]
        return f"{prefix}missing {', '.join(missing)}"
    if error.validator == "additionalProperties":
        known = error.schema.get("properties", {})
        extra = [k for k in error.instance if k not in known]
        return f"{prefix}unexpected {', '.join(extra)}"
    return f"{prefix}{error.message}"


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def cell_value(value: Any, kind: str) -> CellValue:
    """A JSON value as a spreadsheet cell: numbers stay numbers, booleans booleans; nested
    objects and arrays become compact JSON text; null and missing an empty cell."""
    if value is None:
        return ""
    if isinstance(value, (bool, str)):
        return value
    if isinstance(value, float) and kind == "integer" and value.is_integer():
        return int(value)
    if isinstance(value, (int, float)):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# --- describing fields -------------------------------------------------------------------------


def _split_top_level(spec: str, origin: str) -> list[str]:
    """Comma-separated parts; commas inside parentheses belong to a list of choices."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(spec):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(spec[start:i])
            start = i + 1
        if depth not in (0, 1):
            raise ConfigError(f"{origin}: the parentheses in {spec!r} do not match. Write the "
                              f"fields like: {FIELDS_EXAMPLE}")
    if depth:
        raise ConfigError(f"{origin}: a '(' in {spec!r} is never closed. Write the fields "
                          f"like: {FIELDS_EXAMPLE}")
    parts.append(spec[start:])
    return [p for p in parts if p.strip()]


_FIELD = re.compile(r"^\s*(?P<name>[^()]*?)\s*(?:\((?P<type>[^()]*)\))?\s*$")


def _parse_field(part: str, number: int, origin: str) -> Field:
    match = _FIELD.match(part)
    name = match.group("name") if match else ""
    if not match or not name:
        raise ConfigError(f"{origin}: cannot read field {number}, {part.strip()!r}: write a "
                          f"name, optionally with a type in parentheses: {FIELDS_EXAMPLE}")
    typed = match.group("type")
    if typed is None:
        return Field(name, "string")
    choices = tuple(c.strip() for c in re.split(r"[|,]", typed) if c.strip())
    if len(choices) > 1:
        _refuse_duplicates(list(choices), origin, f"in the choices of {name!r}, ")
        return Field(name, "enum", choices)
    word = choices[0].lower() if choices else ""
    if word not in TYPE_WORDS:
        raise ConfigError(f"{origin}: field {name!r} has the type {typed.strip()!r}, which is "
                          "none of string, number, integer, boolean. For a fixed set of "
                          "answers list them with |, e.g. (positive|negative).")
    return Field(name, TYPE_WORDS[word])


def _refuse_duplicates(names: list[str], origin: str, where: str = "") -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise ConfigError(f"{origin}: {where}{name!r} appears twice; every name must be "
                              "unique.")
        seen.add(name)


def _property(f: Field) -> dict[str, Any]:
    if f.kind == "enum":
        return {"type": "string", "enum": list(f.choices)}
    return {"type": f.kind}


def _field_of(name: str, prop: Any) -> Field:
    """The column kind a property's schema implies; anything nested or mixed is ``json``."""
    prop = prop if isinstance(prop, dict) else {}
    enum = prop.get("enum")
    if isinstance(enum, list) and enum and all(isinstance(c, str) for c in enum):
        return Field(name, "enum", tuple(enum))
    types = prop.get("type")
    types = [types] if isinstance(types, str) else types if isinstance(types, list) else []
    concrete = [t for t in types if t != "null"]
    if len(concrete) == 1 and concrete[0] in ("string", "number", "integer", "boolean"):
        return Field(name, concrete[0])
    return Field(name, "json")
