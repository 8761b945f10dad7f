"""Shared fixtures: an isolated cache and config for every test, and the sample workbooks."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from click.testing import Result
from typer.testing import CliRunner

from promptbatch_sheets import runner
from promptbatch_sheets.cli import app
from promptbatch_sheets.providers import RetryPolicy
from tests.fakes.llm_server import FakeLLMConfig, FakeLLMServer

SAMPLES = Path(__file__).resolve().parent.parent / "sample_workbooks"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No test reads or writes the user's real cache, config or keys."""
    home = tmp_path / "home"
    monkeypatch.setenv("PROMPTBATCH_HOME", str(home))
    monkeypatch.setenv("PROMPTBATCH_CONFIG", str(home / "config.toml"))
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "PROMPTBATCH_API_KEY", "OLLAMA_HOST",
                 "PROMPTBATCH_MODEL", "PROMPTBATCH_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoff starts at 10 ms instead of 500 ms; a server's retry-after still sets the floor."""
    monkeypatch.setattr(runner, "RetryPolicy", functools.partial(RetryPolicy, base_delay=0.01))


@pytest.fixture
def samples() -> Path:
    return SAMPLES


@pytest.fixture
def llm() -> Iterator[FakeLLMServer]:
    """A fresh fake OpenAI/Anthropic server on 127.0.0.1 for one test."""
    with FakeLLMServer(FakeLLMConfig()) as server:
        yield server


def cli(*args: str) -> Result:
    """Run the promptbatch command in-process, as a user would type it."""
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


def fake_model(server: FakeLLMServer) -> list[str]:
    return ["--model", "openai-compatible:fake", "--base-url", server.base_url]


@contextmanager
def serve_process(server: FakeLLMServer) -> Iterator[tuple[subprocess.Popen[str], str, str]]:
    """``promptbatch serve`` on a free port in its own process, its model at ``server``: the
    process, the address it printed and its bearer token. Stopped (SIGTERM) on exit."""
    command = [str(Path(sys.executable).parent / "promptbatch"), "serve", "--port", "0",
               "--model", "openai-compatible:fake", "--base-url", server.base_url]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True, env=os.environ.copy())
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("PromptBatch backend listening on http://127.0.0.1:"), first
        assert first.endswith(f"(model openai-compatible:fake, answered by {server.base_url})\n")
        yield proc, first.split()[4], proc.stdout.readline().split(": ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)
