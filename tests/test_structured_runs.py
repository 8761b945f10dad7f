"""Structured answers end to end: JSON fields into typed columns, checked, repaired once."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import openpyxl

from tests.conftest import SAMPLES, cli, fake_model
from tests.fakes.llm_server import FakeLLMServer
from tests.test_run_cli import read_csv

FIELDS = "sentiment (positive|negative|neutral), rating (integer), urgent (boolean), reason"


def requests(server: FakeLLMServer) -> list[dict[str, Any]]:
    return [r["json"] for r in server.requests if r["path"].endswith(("/chat/completions",
                                                                      "/messages"))]


def verdict(prompt: str, schema: dict[str, Any]) -> dict[str, Any]:
    """An answer that depends on the review, so each row's cells can be predicted."""
    bad = "cracked" in prompt or "scratches" in prompt
    full = {"sentiment": "negative" if bad else "positive", "rating": 1 if bad else 5,
            "urgent": bad, "reason": "broken" if bad else "fine"}
    return {k: v for k, v in full.items() if k in schema["properties"]}


def reviews(tmp_path: Path) -> list[str]:
    book = shutil.copy(SAMPLES / "reviews.csv", tmp_path / "reviews.csv")
    return [str(book), "--template-file", str(SAMPLES / "reviews.prompt.txt")]


def test_fields_become_typed_columns_and_reruns_are_free(tmp_path: Path,
                                                         llm: FakeLLMServer) -> None:
    llm.config.structured_answer = verdict
    out = tmp_path / "out.xlsx"
    shutil.copy(SAMPLES / "support_tickets.xlsx", out)
    result = cli("run", *reviews(tmp_path), "--fields", FIELDS, *fake_model(llm))
    assert result.exit_code == 0, result.output
    rows = read_csv(tmp_path / "reviews.promptbatch.csv")
    assert rows[0][4:] == ["sentiment", "rating", "urgent", "reason"]
    by_id = {r[0]: r[4:] for r in rows[1:]}
    assert by_id["6"] == ["negative", "1", "TRUE", "broken"]  # "Arrived cracked ..."
    assert by_id["1"] == ["positive", "5", "FALSE", "fine"]
    body = requests(llm)[0]
    schema = body["response_format"]["json_schema"]["schema"]
    assert schema["properties"]["sentiment"]["enum"] == ["positive", "negative", "neutral"]
    assert schema["required"] == ["sentiment", "rating", "urgent", "reason"]

    again = cli("run", *reviews(tmp_path), "--fields", FIELDS, "--rerun", "all",
                *fake_model(llm))
    assert again.exit_code == 0, again.output
    assert len(requests(llm)) == 10, "every answer came from the cache"


def test_xlsx_cells_hold_numbers_and_booleans(tmp_path: Path, llm: FakeLLMServer) -> None:
    llm.config.structured_answer = verdict
    book = shutil.copy(SAMPLES / "product_descriptions.xlsx", tmp_path / "p.xlsx")
    result = cli("run", str(book), "--fields", "rating (integer), urgent (boolean)",
                 *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(tmp_path / "p.promptbatch.xlsx")["Products"]
    assert (ws["E3"].value, ws["F3"].value) == ("rating", "urgent")
    assert (ws["E4"].value, ws["F4"].value) == (5, False)
    assert ws["E4"].data_type == "n" and ws["F4"].data_type == "b"


def test_a_reply_that_does_not_fit_is_asked_again_once(tmp_path: Path,
                                                       llm: FakeLLMServer) -> None:
    """One bad reply: the retry names the problem and its answer fills the row. Bad twice:
    the row says why, nothing is cached, and the next run asks again."""
    llm.config.structured_answer = verdict
    llm.config.fault_for = lambda p: "badjson" if "Keeps water cold" in p else None
    first = cli("run", *reviews(tmp_path), "--fields", FIELDS, *fake_model(llm))
    assert first.exit_code == 1
    rows = {r[0]: r[4:] for r in read_csv(tmp_path / "reviews.promptbatch.csv")[1:]}
    assert rows["1"] == ["#ERROR: the reply did not fit the fields, twice: the reply holds "
                         "no JSON object", "", "", ""]
    retries = [b for b in requests(llm) if "Your previous reply was" in
               b["messages"][-1]["content"]]
    assert len(retries) == 1 and "Sure! The sentiment is positive" in retries[0][
        "messages"][-1]["content"]
    assert len(requests(llm)) == 11

    calls = iter(["badjson"])
    llm.config.fault_for = lambda p: next(calls, None) if "Keeps water cold" in p else None
    second = cli("run", str(tmp_path / "reviews.promptbatch.csv"), "-o",
                 str(tmp_path / "reviews.promptbatch.csv"), "--template-file",
                 str(SAMPLES / "reviews.prompt.txt"), "--fields", FIELDS, *fake_model(llm))
    assert second.exit_code == 0, second.output
    rows = {r[0]: r[4:] for r in read_csv(tmp_path / "reviews.promptbatch.csv")[1:]}
    assert rows["1"] == ["positive", "5", "FALSE", "fine"]
    assert len(requests(llm)) == 13  # the row again, then its one repair


def test_anthropic_tool_use_and_a_schema_file(tmp_path: Path, llm: FakeLLMServer,
                                              monkeypatch: Any) -> None:
    llm.config.structured_answer = verdict
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test")
    schema = {"type": "object", "properties": {
        "sentiment": {"type": "string", "enum": ["positive", "negative", "neutral"]},
        "rating": {"type": "integer", "minimum": 1, "maximum": 5}},
        "required": ["sentiment", "rating"]}
    (tmp_path / "verdict.json").write_text(json.dumps(schema), encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = cli("run", *reviews(tmp_path), "--schema", "verdict.json", "--model",
                 "anthropic:claude-haiku-4-5", "--base-url", llm.base_url.removesuffix("/v1"))
    assert result.exit_code == 0, result.output
    body = requests(llm)[0]
    assert body["tool_choice"]["type"] == "tool"
    assert body["tools"][0]["input_schema"] == schema
    rows = read_csv(tmp_path / "reviews.promptbatch.csv")
    assert rows[0][4:] == ["sentiment", "rating"] and rows[6][4:] == ["negative", "1"]


def test_conf_fields_feed_a_chained_template(tmp_path: Path, llm: FakeLLMServer) -> None:
    """The sample's triage fields are typed cells, and another template can use them."""
    book = Path(shutil.copy(SAMPLES / "customer_feedback.xlsx", tmp_path / "f.xlsx"))
    wb = openpyxl.load_workbook(book)
    wb["promptbatch.conf"].append(["template.escalate",
                                   "{% if urgent %}Escalate {{ customer }}{% else %}Thank "
                                   "{{ customer }}{% endif %} ({{ score }})"])
    wb.save(book)
    llm.config.structured_answer = lambda p, s: {"sentiment": "negative", "urgent": "Chloe" in p
                                                 or "charged twice" in p, "score": 2}
    result = cli("run", str(book), "-o", str(book), *fake_model(llm))
    assert result.exit_code == 0, result.output
    ws = openpyxl.load_workbook(book)["Feedback"]
    assert [c.value for c in ws[2]] == ["Customer", "Feedback", "summary", "reply", "sentiment",
                                        "urgent", "score", "escalate"]
    assert [c.value for c in ws[5]][4:] == ["negative", True, 2, "Answer: Escalate Chloe (2)"]
    assert [c.value for c in ws[3]][4:] == ["negative", False, 2, "Answer: Thank Ana (2)"]


def test_bad_fields_and_unknown_prompt_names_are_refused(tmp_path: Path,
                                                          llm: FakeLLMServer) -> None:
    bad = cli("run", *reviews(tmp_path), "--fields", "score (nmber)", *fake_model(llm))
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    assert "field 'score' has the type 'nmber'" in " ".join(bad.output.split())
    book = Path(shutil.copy(SAMPLES / "customer_feedback.xlsx", tmp_path / "f.xlsx"))
    wb = openpyxl.load_workbook(book)
    wb["promptbatch.conf"].append(["fields.tweet", "text"])
    wb.save(book)
    unknown = cli("run", str(book), *fake_model(llm))
    assert unknown.exit_code == 2
    assert "describes the answers of 'tweet'" in " ".join(unknown.output.split())
    assert requests(llm) == []


def test_a_workbook_names_schema_files_only_beside_itself(tmp_path: Path,
                                                          llm: FakeLLMServer) -> None:
    """A conf sheet's schema file is read from the workbook's folder, never from elsewhere on
    the user's disk: its text would be sent to the model, perhaps to a server the workbook
    chose. A file beside the workbook still works."""
    secret = tmp_path / "private" / "secret.json"
    secret.parent.mkdir()
    secret.write_text('{"type": "object", "properties": {"pin": {"type": "string"}}}',
                      encoding="utf-8")
    folder = tmp_path / "book"
    folder.mkdir()
    (folder / "triage.json").write_text(secret.read_text(encoding="utf-8"), encoding="utf-8")
    for name in (str(secret), "../private/secret.json"):
        book = Path(shutil.copy(SAMPLES / "customer_feedback.xlsx", folder / "f.xlsx"))
        wb = openpyxl.load_workbook(book)
        wb["promptbatch.conf"].append(["schema.summary", name])
        wb.save(book)
        refused = cli("run", str(book), *fake_model(llm))
        assert refused.exit_code == 2, refused.output
        assert "names a file outside the workbook's folder" in " ".join(refused.output.split())
    assert requests(llm) == []
    wb = openpyxl.load_workbook(book)
    wb["promptbatch.conf"]["B" + str(wb["promptbatch.conf"].max_row)] = "triage.json"
    wb.save(book)
    assert cli("preview", str(book), *fake_model(llm)).exit_code == 0
