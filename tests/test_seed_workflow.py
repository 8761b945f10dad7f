"""The seed's workflow (issue 16): <system> blocks, variations per row, the seed's templates as
samples, answers exported as Markdown files. End to end through the CLI against the fake
OpenAI-compatible server on 127.0.0.1 (and its Anthropic route), and the embedded model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from promptbatch_sheets.export import file_stem
from promptbatch_sheets.providers import Params
from promptbatch_sheets.store import answer_key
from promptbatch_sheets.template import Template
from tests.conftest import SAMPLES, cli, fake_model
from tests.fakes.llm_server import FakeLLMServer
from tests.test_run_cli import read_csv, write_csv

SYSTEM_TEMPLATE = ("  <system>\nYou review products for {{ shop }}.\n</system>\n\n"
                   "Describe {{ name }} in five words.")


def chats(server: FakeLLMServer) -> list[dict[str, Any]]:
    return [r["json"] for r in server.requests if r["path"].endswith("/chat/completions")]


def book(tmp_path: Path, rows: list[list[str]], name: str = "b.csv") -> Path:
    return write_csv(tmp_path / name, rows)


PRODUCTS = [["name", "shop"], ["mug", "Acme"], ["cap", "Zeta"]]


# --------------------------------------------------------------------------- <system> blocks


def test_system_block_is_the_system_message_rendered_per_row(tmp_path: Path,
                                                             llm: FakeLLMServer) -> None:
    source = book(tmp_path, PRODUCTS)
    out = tmp_path / "out.csv"
    done = cli("run", str(source), "--template", SYSTEM_TEMPLATE, "-o", str(out),
               *fake_model(llm))
    assert done.exit_code == 0, done.output
    sent = sorted((c["messages"] for c in chats(llm)), key=lambda m: m[0]["content"])
    assert sent == [
        [{"role": "system", "content": "You review products for Acme."},
         {"role": "user", "content": "Describe mug in five words."}],
        [{"role": "system", "content": "You review products for Zeta."},
         {"role": "user", "content": "Describe cap in five words."}],
    ]
    assert [r[2] for r in read_csv(out)[1:]] == ["Answer: Describe mug in five words.",
                                             "Answer: Describe cap in five words."]
    again = cli("run", str(source), "--template", SYSTEM_TEMPLATE, "-o", str(out),
                *fake_model(llm))
    assert again.exit_code == 0 and len(chats(llm)) == 2  # the system prompt is in the key


def test_system_block_goes_to_anthropic_as_its_system_field(tmp_path: Path,
                                                            llm: FakeLLMServer,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-test")
    done = cli("run", str(book(tmp_path, PRODUCTS[:2])), "--template", SYSTEM_TEMPLATE,
               "-o", str(tmp_path / "o.csv"), "--model", "anthropic:claude-haiku-4-5",
               "--base-url", llm.root_url, "--variations", "2")
    assert done.exit_code == 0, done.output
    bodies = [r["json"] for r in llm.requests if r["path"] == "/v1/messages"]
    assert len(bodies) == 2  # two variations: two requests, neither with a seed (none exists)
    for body in bodies:
        assert body["system"] == "You review products for Acme."
        assert body["messages"] == [{"role": "user", "content": "Describe mug in five words."}]
        assert "seed" not in body


def test_system_block_and_system_setting_are_refused_naming_both(tmp_path: Path,
                                                                 llm: FakeLLMServer) -> None:
    source = book(tmp_path, PRODUCTS)
    done = cli("run", str(source), "--template", SYSTEM_TEMPLATE, "--system", "Be brief.",
               *fake_model(llm))
    assert done.exit_code == 2
    assert "The template in --template starts with a <system> block, and the system setting " \
           "(--system, PROMPTBATCH_SYSTEM or your config file) sets a system prompt too." \
           in " ".join(done.output.split())
    assert chats(llm) == [] and not (tmp_path / "b.promptbatch.csv").exists()


def test_system_setting_from_the_conf_sheet_is_named_by_its_cell(tmp_path: Path,
                                                                 llm: FakeLLMServer) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "S"
    ws.append(["Template", SYSTEM_TEMPLATE])
    ws.append([])
    ws.append(["name", "shop"])
    ws.append(["mug", "Acme"])
    conf = wb.create_sheet("promptbatch.conf")
    conf.append(["key", "value"])
    conf.append(["system", "Be brief."])
    wb.save(tmp_path / "b.xlsx")
    done = cli("run", str(tmp_path / "b.xlsx"), *fake_model(llm))
    assert done.exit_code == 2
    assert "'S'!B1 starts with a <system> block, and 'promptbatch.conf'!B2 sets a system " \
           "prompt too" in " ".join(done.output.split())


def test_templates_without_a_block_keep_their_cache_keys() -> None:
    """Answers cached before this feature stay valid: same key material as ever."""
    template = Template.parse("Describe {{ name }}.")
    assert template.system is None
    params = Params(0.2, 50, "Be brief.")
    import hashlib
    material = json.dumps({"model": "openai:gpt-4o-mini", "temperature": 0.2, "max_tokens": 50,
                           "system": "Be brief.", "prompt": "Describe mug."},
                          sort_keys=True, ensure_ascii=False)
    assert answer_key("openai:gpt-4o-mini", params, "Describe mug.") == \
        hashlib.sha256(material.encode()).hexdigest()


@pytest.mark.parametrize(("source", "message"), [
    ("<system>Be brief.", "opens a <system> block but never closes it"),
    ("<system>Be brief.</system>\n  ", "holds only a <system> block"),
    ("<system>{{ nope </system>Hi", "Template syntax error in the <system> block of T"),
])
def test_broken_system_blocks_say_what_to_fix(source: str, message: str) -> None:
    from promptbatch_sheets.errors import TemplateError
    with pytest.raises(TemplateError, match=message):
        Template.parse(source, "T")


def test_a_system_block_later_in_the_text_is_plain_prompt_text() -> None:
    template = Template.parse("Hello.\n<system>x</system>")
    assert template.system is None and template.render({}) == "Hello.\n<system>x</system>"


# --------------------------------------------------------------------------- variations


def test_variations_answer_each_row_n_times_with_seeds(tmp_path: Path,
                                                       llm: FakeLLMServer) -> None:
    source = book(tmp_path, PRODUCTS)
    out = tmp_path / "out.csv"
    llm.config.answer = lambda prompt: f"take {len(llm.prompts)}"
    done = cli("run", str(source), "--template", "Name {{ name }}.", "--variations", "3",
               "-o", str(out), *fake_model(llm))
    assert done.exit_code == 0, done.output
    rows = read_csv(out)
    assert rows[0] == ["name", "shop", "response 1", "response 2", "response 3"]
    assert len({*rows[1][2:], *rows[2][2:]}) == 6  # six requests, six answers
    seeds = sorted((c["messages"][0]["content"], c["seed"]) for c in chats(llm))
    assert seeds == [("Name cap.", 1), ("Name cap.", 2), ("Name cap.", 3),
                     ("Name mug.", 1), ("Name mug.", 2), ("Name mug.", 3)]
    # a failed variation reruns alone; the others come from the sheet as they are
    answered = rows[1][3]
    rows[1][3] = "#ERROR: HTTP 500"
    write_csv(out, rows)
    again = cli("run", str(out), "--template", "Name {{ name }}.", "--variations", "3",
                "-o", str(out), *fake_model(llm))
    assert again.exit_code == 0, again.output
    assert "from cache       │ 1" in again.output  # variation 2 of row 2: its own entry
    assert len(chats(llm)) == 6
    assert read_csv(out)[1] == [*rows[1][:3], answered, rows[1][4]]


def test_variations_with_fields_number_each_field_column(tmp_path: Path,
                                                         llm: FakeLLMServer) -> None:
    out = tmp_path / "out.csv"
    done = cli("run", str(book(tmp_path, PRODUCTS)), "--template", "Rate {{ name }}.",
               "--fields", "score (number), reason", "--variations", "2", "-o", str(out),
               *fake_model(llm))
    assert done.exit_code == 0, done.output
    assert read_csv(out)[0] == ["name", "shop", "score 1", "reason 1", "score 2", "reason 2"]
    assert all(cell != "" for row in read_csv(out)[1:] for cell in row)


def test_variations_of_chained_columns_follow_their_own_variation(tmp_path: Path,
                                                                  llm: FakeLLMServer) -> None:
    """Variation 2 of a reply is written from variation 2 of the summary it uses."""
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "F"
    ws.append(["Templates", None, "Sum {{ text }}", "Reply to {{ summary }}"])
    ws.append(["who", "text", "summary", "reply"])
    ws.append(["Ana", "slow app", None, None])
    wb.save(tmp_path / "f.xlsx")
    llm.config.answer = lambda prompt: f"<{prompt}>"
    out = tmp_path / "out.xlsx"
    done = cli("run", str(tmp_path / "f.xlsx"), "--variations", "2", "-o", str(out),
               *fake_model(llm))
    assert done.exit_code == 0, done.output
    sheet = openpyxl.load_workbook(out)["F"]
    header = [c.value for c in sheet[2]]
    assert header == ["who", "text", "summary", "reply", "summary 1", "summary 2", "reply 1",
                      "reply 2"]
    values = dict(zip(header, [c.value for c in sheet[3]], strict=True))
    assert values["summary 1"] == values["summary 2"] == "<Sum slow app>"
    assert values["reply 1"] == values["reply 2"] == "<Reply to <Sum slow app>>"
    assert {(c["messages"][0]["content"], c["seed"]) for c in chats(llm)} == {
        ("Sum slow app", 1), ("Sum slow app", 2), ("Reply to <Sum slow app>", 1),
        ("Reply to <Sum slow app>", 2)}
    assert values["summary"] is None and values["reply"] is None  # left as they were


def test_preview_counts_n_requests_a_row_and_budget_caps_them(tmp_path: Path,
                                                              llm: FakeLLMServer) -> None:
    source = book(tmp_path, PRODUCTS)
    shown = cli("preview", str(source), "--template", "Name {{ name }}.", "--variations", "3",
                *fake_model(llm))
    assert shown.exit_code == 0, shown.output
    assert "6 to send (6 distinct prompts)" in " ".join(shown.output.split())
    assert "3 variations of each answer" in shown.output
    assert shown.output.count("prompt for row") == 2  # one per row: the variations are alike


@pytest.mark.parametrize("value", ["0", "101", "x"])
def test_variations_out_of_range_are_refused(tmp_path: Path, value: str,
                                             llm: FakeLLMServer) -> None:
    done = cli("run", str(book(tmp_path, PRODUCTS)), "--template", "Name {{ name }}.",
               "--variations", value, *fake_model(llm))
    assert done.exit_code == 2 and chats(llm) == []


# --------------------------------------------------------------------------- export


def test_export_dir_writes_one_markdown_file_per_answer(tmp_path: Path,
                                                        llm: FakeLLMServer) -> None:
    rows = [["name", "shop"], ["mug", "Acme"], ["../../etc/passwd", "X"], ["CON", "Y"],
            ["mug", "Zeta"], ["", "W"]]
    folder = tmp_path / "docs"
    done = cli("run", str(book(tmp_path, rows)), "--template", "Name {{ name }} {{ shop }}.",
               "--export-dir", str(folder), "--export-name", "name",
               "-o", str(tmp_path / "o.csv"), *fake_model(llm))
    assert done.exit_code == 0, done.output
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["_CON.md", "_etc_passwd.md", "mug (2).md", "mug.md", "row 6.md"]
    assert (folder / "mug.md").read_text() == "Answer: Name mug Acme.\n"
    assert (folder / "mug (2).md").read_text() == "Answer: Name mug Zeta.\n"
    assert not (tmp_path / "etc").exists()


def test_export_dir_from_a_workbook_is_refused(tmp_path: Path, llm: FakeLLMServer) -> None:
    wb = openpyxl.Workbook()
    ws = wb.active
    ws.append(["Template", "Name {{ name }}."])
    ws.append(["name"])
    ws.append(["mug"])
    conf = wb.create_sheet("promptbatch.conf")
    conf.append(["export_dir", str(tmp_path / "elsewhere")])
    wb.save(tmp_path / "b.xlsx")
    done = cli("run", str(tmp_path / "b.xlsx"), *fake_model(llm))
    assert done.exit_code == 2
    assert "'promptbatch.conf'!B1 sets export_dir, but a workbook cannot choose where " \
           "promptbatch writes files" in " ".join(done.output.split())
    assert not (tmp_path / "elsewhere").exists() and chats(llm) == []


def test_export_name_must_be_a_column(tmp_path: Path, llm: FakeLLMServer) -> None:
    done = cli("run", str(book(tmp_path, PRODUCTS)), "--template", "Name {{ name }}.",
               "--export-dir", str(tmp_path / "d"), "--export-name", "title",
               *fake_model(llm))
    assert done.exit_code == 2 and "--export-name 'title' names no column" in done.output
    assert chats(llm) == []


@pytest.mark.parametrize(("text", "stem"), [
    ("a/b\\c", "a_b_c"), ("..", "_"), ("  .hidden", "hidden"), ("nul.txt", "_nul.txt"),
    ("x" * 300, "x" * 100), ("tab\there", "tab_here"), ("ok name", "ok name"),
])
def test_file_stems_are_safe(text: str, stem: str) -> None:
    assert file_stem(text) == stem


# --------------------------------------------------------------------------- the samples


@pytest.mark.parametrize(("sample", "header", "sections"), [
    ("ai_orchestration_strategy.xlsx", "Business Challenge", 8),
    ("ai_model_integration.xlsx", "New AI Model Name", 7),
])
def test_seed_samples_send_their_system_block_as_the_system_message(
        tmp_path: Path, llm: FakeLLMServer, sample: str, header: str, sections: int) -> None:
    source = tmp_path / sample
    shutil.copy(SAMPLES / sample, source)
    sheet = openpyxl.load_workbook(source).active
    assert sheet["A1"].value == "Template" and sheet["A3"].value == header
    assert sheet.max_row >= 13  # ten rows or more
    out = tmp_path / "out.xlsx"
    done = cli("run", str(source), "--variations", "3", "-o", str(out), *fake_model(llm))
    assert done.exit_code == 0, done.output
    bodies = chats(llm)
    assert len(bodies) == 3 * (sheet.max_row - 3)
    for body in bodies:
        system, user = body["messages"]
        assert system["role"] == "system" and "You are an" in system["content"]
        assert "<system>" not in user["content"] and user["content"].startswith("<context>")
        assert user["content"].count("**:") + user["content"].count(":**") >= sections
    written = openpyxl.load_workbook(out).active
    headers = [c.value for c in written[3]]
    assert headers[-3:] == ["response 1", "response 2", "response 3"]
    assert all(written.cell(r, c).value for r in range(4, written.max_row + 1)
               for c in range(len(headers) - 2, len(headers) + 1))


def test_readme_runs_of_the_seed_samples_on_the_embedded_model(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    """The two runs README.md shows, as it shows them (from the clone, with out/ here)."""
    monkeypatch.chdir(tmp_path)
    shutil.copytree(SAMPLES, tmp_path / "sample_workbooks")
    done = cli("run", "sample_workbooks/ai_model_integration.xlsx", "--max-tokens", "150",
               "-o", "out/ai_model_integration.answers.xlsx", "--export-dir",
               "out/integration-docs", "--export-name", "New AI Model Name")
    assert done.exit_code == 0, done.output
    docs = sorted(p.name for p in (tmp_path / "out" / "integration-docs").iterdir())
    assert len(docs) == 12 and docs[:2] == ["ChurnScore.md", "CodeReviewBot.md"]
    sheet = openpyxl.load_workbook(tmp_path / "out" / "ai_model_integration.answers.xlsx").active
    assert all(sheet.cell(r, 7).value for r in range(4, 16))

    done = cli("run", "sample_workbooks/ai_orchestration_strategy.xlsx", "--variations", "3",
               "--max-tokens", "60", "-o", "out/ai_orchestration_strategy.answers.xlsx")
    assert done.exit_code == 0, done.output
    sheet = openpyxl.load_workbook(tmp_path / "out" /
                                   "ai_orchestration_strategy.answers.xlsx").active
    assert [c.value for c in sheet[3]][5:] == ["response 1", "response 2", "response 3"]
    variations = [[sheet.cell(r, c).value for c in (6, 7, 8)] for r in range(4, 16)]
    assert all(all(v) for v in variations)
    assert sum(len(set(v)) == 3 for v in variations) >= 6  # the seeds give other answers
