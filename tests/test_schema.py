"""Structured answers: field lists and JSON schemas in, validated replies and typed cells out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptbatch_sheets.errors import ConfigError, SchemaMismatch
from promptbatch_sheets.schema import Field, Schema, load_schema, repair_prompt
from tests.fakes.structured import value_for

SPEC = "sentiment (positive|negative|neutral), score (number), reason, spam (boolean), count (int)"
REVIEW = Schema.from_fields(SPEC, "the fields setting")
GOOD = {"sentiment": "negative", "score": 2.5, "reason": "broke", "spam": False, "count": 3}


def test_fields_become_a_strict_schema_in_header_order() -> None:
    assert REVIEW.fields == (Field("sentiment", "enum", ("positive", "negative", "neutral")),
                             Field("score", "number"), Field("reason", "string"),
                             Field("spam", "boolean"), Field("count", "integer"))
    assert REVIEW.json_schema == {
        "type": "object",
        "properties": {"sentiment": {"type": "string", "enum": ["positive", "negative",
                                                                  "neutral"]},
                       "score": {"type": "number"}, "reason": {"type": "string"},
                       "spam": {"type": "boolean"}, "count": {"type": "integer"}},
        "required": ["sentiment", "score", "reason", "spam", "count"],
        "additionalProperties": False,
    }
    assert json.loads(REVIEW.text()) == REVIEW.json_schema
    assert list(json.loads(REVIEW.text())["properties"]) == [f.name for f in REVIEW.fields]
    assert hash(REVIEW) == hash(Schema.from_fields(SPEC, "elsewhere"))


def test_header_text_is_the_name_and_commas_may_list_choices() -> None:
    schema = Schema.from_fields(" Product Name , mood (happy, sad) ", "x")
    assert schema.fields == (Field("Product Name", "string"), Field("mood", "enum",
                                                                    ("happy", "sad")))


@pytest.mark.parametrize(("spec", "message"), [
    ("", "the list of fields is empty"),
    ("score (numeric)", "has the type 'numeric', which is none of"),
    ("a, b, a", "'a' appears twice"),
    ("mood (happy|happy)", "'happy' appears twice"),
    ("score (number", "is never closed"),
    ("score) x", "do not match"),
    ("(number)", "cannot read field 1"),
    ("score (number) extra", "cannot read field 1"),
])
def test_field_list_mistakes_name_the_origin_and_the_fix(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Schema.from_fields(spec, "'Reviews'!F3")
    assert str(err.value).startswith("'Reviews'!F3: ") and message in str(err.value)


def test_a_users_json_schema_keeps_its_order_and_kinds() -> None:
    text = json.dumps({"type": "object", "properties": {
        "tags": {"type": "array", "items": {"type": "string"}},
        "label": {"enum": ["a", "b"]},
        "price": {"type": ["number", "null"]},
        "ok": {"type": "boolean"},
        "n": {"type": "integer"},
        "address": {"type": "object", "properties": {"city": {"type": "string"}}},
        "note": {"type": "string"}}, "required": ["label"]})
    schema = Schema.from_json(text, "schema.json")
    assert [(f.name, f.kind) for f in schema.fields] == [
        ("tags", "json"), ("label", "enum"), ("price", "number"), ("ok", "boolean"),
        ("n", "integer"), ("address", "json"), ("note", "string")]
    values = schema.check('{"label": "b", "tags": ["x", "y"], "address": {"city": "Oslo"}}')
    assert schema.cells(values) == ['["x","y"]', "b", "", "", "", '{"city":"Oslo"}', ""]


def test_an_openai_style_wrapper_is_unwrapped() -> None:
    inner = {"type": "object", "properties": {"a": {"type": "string"}}}
    schema = Schema.from_json(json.dumps({"name": "x", "strict": True, "schema": inner}), "s")
    assert schema.json_schema == inner


@pytest.mark.parametrize(("text", "message"), [
    ("{oops", "is not valid JSON"),
    ("[1, 2]", "must be a JSON object"),
    ('{"type": "string"}', "top level must be an object with properties"),
    ('{"type": "object", "properties": {}}', "top level must be an object with properties"),
    ('{"type": "object", "properties": {"a": {"type": "numbr"}}}', "not a valid JSON schema"),
])
def test_json_schema_mistakes(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Schema.from_json(text, "the schema setting")


def test_load_schema_takes_json_a_file_or_fields(tmp_path: Path) -> None:
    assert load_schema(fields=None, schema=None, origin="o") is None
    assert load_schema(fields="  ", schema="", origin="o") is None
    assert load_schema(fields=SPEC, schema=None, origin="o") == REVIEW
    (tmp_path / "review.json").write_text(REVIEW.text(), encoding="utf-8")
    from_file = load_schema(fields=None, schema="review.json", origin="o", base_dir=tmp_path)
    assert from_file == REVIEW
    assert load_schema(fields=None, schema=REVIEW.text(), origin="o") == REVIEW
    with pytest.raises(ConfigError, match="o: both fields and schema are set"):
        load_schema(fields=SPEC, schema=REVIEW.text(), origin="o")
    with pytest.raises(ConfigError, match="neither JSON .* nor a readable file"):
        load_schema(fields=None, schema="missing.json", origin="o", base_dir=tmp_path)
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.json \(the schema named by o\): .*not valid JSON"):
        load_schema(fields=None, schema="bad.json", origin="o", base_dir=tmp_path)


@pytest.mark.parametrize("reply", [
    json.dumps(GOOD),
    "```json\n" + json.dumps(GOOD, indent=2) + "\n```",
    "Here is the JSON you asked for:\n" + json.dumps(GOOD) + "\nHope it helps {:}",
    "```\n" + json.dumps(GOOD) + "```",
])
def test_replies_are_found_in_fences_and_prose(reply: str) -> None:
    assert REVIEW.check(reply) == GOOD
    assert REVIEW.cells(REVIEW.check(reply)) == ["negative", 2.5, "broke", False, 3]


@pytest.mark.parametrize(("reply", "reason"), [
    ("I think it is negative.", "the reply holds no JSON object"),
    ('{"sentiment": "negative", ', "the reply's JSON object is incomplete or malformed"),
    ("[1]", "the reply is JSON but not an object ([1])"),
    (json.dumps({**GOOD, "score": "high"}), "score: 'high' is not a number"),
    (json.dumps({**GOOD, "score": "3"}), "score: '3' is not a number"),
    (json.dumps({**GOOD, "count": 2.5}), "count: 2.5 is not a whole number"),
    (json.dumps({**GOOD, "spam": "no"}), "spam: 'no' is not true or false"),
    (json.dumps({**GOOD, "sentiment": "Negative"}),
     "sentiment: 'Negative' is not one of positive, negative, neutral"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "reason"}), "missing reason"),
    (json.dumps({**GOOD, "extra": 1}), "unexpected extra"),
    ('{"sentiment": "negative", "score": NaN}', "NaN is not a JSON number"),
])
def test_invalid_replies_say_why_in_a_few_words(reply: str, reason: str) -> None:
    with pytest.raises(SchemaMismatch) as err:
        REVIEW.check(reply)
    assert err.value.reason == reason


def test_several_problems_are_named_together() -> None:
    with pytest.raises(SchemaMismatch) as err:
        REVIEW.check('{"sentiment": "meh", "score": true}')
    assert err.value.reason.split("; ") == [
        "missing reason, spam, count",
        "sentiment: 'meh' is not one of positive, negative, neutral",
        "score: true is not a number"]


def test_whole_floats_fill_integer_fields_as_integers() -> None:
    cells = REVIEW.cells(REVIEW.check(json.dumps({**GOOD, "count": 4.0, "score": 7})))
    assert cells[1] == 7 and isinstance(cells[1], int)
    assert cells[4] == 4 and isinstance(cells[4], int)


def test_repair_prompt_carries_the_reply_and_the_reason() -> None:
    text = repair_prompt("Classify: great.", "It is positive!", "the reply holds no JSON object")
    assert text.startswith("Classify: great.\n\n")
    assert "It is positive!" in text and "the reply holds no JSON object" in text
    assert "only the corrected JSON object" in text
    assert len(repair_prompt("p", "x" * 50_000, "r")) < 2_500


def test_instructions_hold_the_schema() -> None:
    text = REVIEW.instructions()
    assert "only a JSON object" in text and REVIEW.text() in text


_names = st.text(st.characters(blacklist_characters="(),|", blacklist_categories=("Cs",)),
                 min_size=1, max_size=12).map(str.strip).filter(bool)
_types = st.sampled_from(["", " (number)", " (integer)", " (boolean)", " (string)",
                          " (yes|no|maybe)"])


@given(st.lists(st.tuples(_names, _types), min_size=1, max_size=8,
                unique_by=lambda t: t[0]), st.text(max_size=80))
def test_any_field_list_round_trips_and_its_fake_answers_validate(
        fields: list[tuple[str, str]], prompt: str) -> None:
    """Whatever a user writes as headers, the fake server's answer for that schema passes
    ``check`` and every cell has the type its field promises."""
    schema = Schema.from_fields(", ".join(n + t for n, t in fields), "headers")
    assert [f.name for f in schema.fields] == [n for n, _ in fields]
    answer: Any = value_for(json.loads(schema.text()), prompt)
    cells = schema.cells(schema.check("Sure:\n```json\n" + json.dumps(answer) + "\n```"))
    expected = {"number": (int, float), "integer": int, "boolean": bool, "string": str,
                "enum": str}
    for f, cell in zip(schema.fields, cells, strict=True):
        assert isinstance(cell, expected[f.kind])
        assert f.kind == "boolean" or not isinstance(cell, bool)
