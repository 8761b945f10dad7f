"""llmock (PyPI, MIT) as a peer no one here wrote: its OpenAI and Anthropic fakes, with chaos."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.conftest import cli

LLMOCK = Path(sys.executable).with_name("llmock")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def llmock(*flags: str) -> Iterator[str]:
    """``llmock serve`` on 127.0.0.1 with ``flags``, answers echoing the prompt; its URL."""
    port = free_port()
    proc = subprocess.Popen(
        [str(LLMOCK), "serve", "--host", "127.0.0.1", "--port", str(port), "--log-level",
         "warning", "--response-style", "echo", *flags],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/_llmock/verdict", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("llmock did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
def llmock_url() -> Iterator[str]:
    """llmock with 20% 429s and 10% 500s."""
    with llmock("--error-rate", "429=0.2", "--error-rate", "500=0.1") as url:
        yield url


def test_openai_and_anthropic_runs_survive_llmock_chaos(
    tmp_path: Path, llmock_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    book = tmp_path / "cities.csv"
    cities = ["Lisbon", "Oslo", "Quito", "Accra", "Hanoi", "Perth", "Lima", "Cork", "Fez",
              "Bern", "Riga", "Doha"]
    with book.open("w", newline="") as handle:
        csv.writer(handle).writerows([["city"]] + [[c] for c in cities])
    monkeypatch.setenv("PROMPTBATCH_API_KEY", "test-key")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "test-key")
    runs = {
        "openai": ["--model", "openai-compatible:gpt-4o-mini", "--base-url", f"{llmock_url}/v1"],
        "anthropic": ["--model", "anthropic:claude-haiku-4-5", "--base-url",
                      f"{llmock_url}/anthropic"],
    }
    for name, model in runs.items():
        out = tmp_path / f"{name}.csv"
        result = cli("run", str(book), "--template", "Name a dish from {{ city }}.",
                     "-o", str(out), *model)
        assert result.exit_code == 0, result.output
        with out.open(newline="") as handle:
            rows = list(csv.reader(handle))[1:]
        for city, answer in rows:
            assert city in answer and not answer.startswith("#ERROR")  # each on its own row
    verdict = httpx.get(f"{llmock_url}/_llmock/verdict").json()
    assert verdict["passed"], json.dumps(verdict, indent=1)
    assert verdict["faults_injected"] > 0
