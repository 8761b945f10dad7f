"""Model providers: ``provider:model`` specs and the client that answers them.

One module per wire protocol; the embedded model is served by llama.cpp and reached through
the same OpenAI-compatible client as any other server.
"""

from __future__ import annotations

import asyncio
import difflib
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from ..errors import ConfigError
from ..limits import CAP, START, Limiter
from .base import Completion, Params, Provider, RetryPolicy, SchemaMode
from .local import MODEL_NAME, EmbeddedServer, gguf_path, slots

if TYPE_CHECKING:
    import httpx

    from .batchapi import BatchAPI

__all__ = ["Completion", "ModelSpec", "Params", "Provider", "RetryPolicy",
           "SchemaMode", "open_provider", "require_model"]


@dataclass(frozen=True)
class Kind:
    default_base_url: str | None
    key_variable: str | None
    key_required: bool
    schema_mode: SchemaMode = "native"
    """How a structured answer is asked for (see ``base.SchemaMode``)."""
    start: int = START
    """The first wave without ``--concurrency``."""


KINDS: dict[str, Kind] = {
    "openai": Kind("https://api.openai.com/v1", "OPENAI_API_KEY", True),
    "anthropic": Kind("https://api.anthropic.com", "ANTHROPIC_API_KEY", True),
    # Self-hosted servers (vLLM, llama.cpp, LM Studio, Ollama) accept response_format with a
    # json_schema, but some ignore it and a grammar alone does not tell the model what the
    # fields mean: the schema also goes into the prompt (Ollama's own advice). A server that
    # ignores both still has every reply validated.
    # Ollama serves OLLAMA_NUM_PARALLEL requests at once (1 or 4 by default) and queues the
    # rest: a first wave of 32 slow answers would wait past the timeout.
    "ollama": Kind("http://127.0.0.1:11434/v1", None, False, "native+prompt", start=4),
    "openai-compatible": Kind(None, "PROMPTBATCH_API_KEY", False, "native+prompt"),
    # llama.cpp turns response_format into a grammar, so the embedded model's replies keep
    # the schema's keys, types and enums; but SmolLM2-135M, not told what the fields are, can
    # ramble inside a string until max_tokens cuts the JSON short (2 of 8 reviews at 200
    # tokens). With the schema in the prompt too, 8 of 8 validated, in a fifth of the time.
    "local": Kind(None, None, False, "native+prompt"),
}


@dataclass(frozen=True)
class ModelSpec:
    """``provider:model`` plus the server it lives on."""

    provider: str
    model: str
    base_url: str | None

    @classmethod
    def parse(cls, text: str, base_url: str | None = None) -> ModelSpec:
        provider, colon, model = text.strip().partition(":")
        provider = provider.lower()
        if provider not in KINDS:
            guess = _close_model(provider, model) if colon else _close_model(None, provider)
            start = (f"Unknown provider {provider!r} in model {text!r}." if colon else
                     f"Model {text!r} names no provider: write it as provider:model.")
            raise ConfigError(
                f"{start} {f'Did you mean {guess}? ' if guess else ''}Use one of: "
                + ", ".join(f"{k}:MODEL" for k in KINDS if k != "local") + ", or local."
            )
        if provider == "local":
            model = model or MODEL_NAME
            if model != MODEL_NAME:
                raise ConfigError(f"The embedded model is {MODEL_NAME!r}; "
                                  f"{model!r} is not available locally.")
        elif not model:
            raise ConfigError(f"Model {text!r} names no model. Write it as {provider}:MODEL, "
                              "for example openai:gpt-4o-mini.")
        base_url = server_address(provider, base_url)
        if provider == "openai-compatible" and not base_url:
            raise ConfigError("openai-compatible needs the server's address: pass --base-url "
                              "http://HOST:PORT/v1 (or set base_url in the config).")
        if base_url is not None:
            check_base_url(base_url)
        return cls(provider, model, base_url if provider != "local" else None)

    @property
    def label(self) -> str:
        """Names the model and its server in the cache: the same prompt to another server is
        another question. A provider's own address adds nothing to the name, so the answers
        cached before the server was part of the key stay valid (keys are one-way hashes: no
        migration could re-key them)."""
        name = f"{self.provider}:{self.model}"
        return name if self.own_server else f"{name}@{self.base_url}"

    @property
    def own_server(self) -> bool:
        """Requests go to the provider's own address (or, for the embedded model, nowhere)."""
        return self.base_url is None or same_address(self.base_url,
                                                     KINDS[self.provider].default_base_url)

    @property
    def server(self) -> str:
        """Where the requests go, as preview and the run summary show it."""
        return self.base_url or "local (the embedded model on this computer)"

    @property
    def key_variable(self) -> str | None:
        return KINDS[self.provider].key_variable

    @property
    def key_required(self) -> bool:
        return KINDS[self.provider].key_required

    @property
    def schema_mode(self) -> SchemaMode:
        return KINDS[self.provider].schema_mode


FAMILIES = {"gpt-": "openai", "chatgpt-": "openai", "o1": "openai", "o3": "openai",
            "o4": "openai", "claude-": "anthropic", "llama": "ollama", "qwen": "ollama",
            "mistral": "ollama", "gemma": "ollama", "phi": "ollama", "deepseek": "ollama"}
"""Model names by the provider that serves them, by their start: ``gpt-4o`` is OpenAI's."""


def _close_model(provider: str | None, model: str) -> str | None:
    """What a user probably meant, as git suggests a command: the provider closest to a
    misspelt one (``opneai``), or the provider of a bare model name (``gpt-4o``)."""
    if provider is not None:
        close = difflib.get_close_matches(provider, list(KINDS), n=1, cutoff=0.6)
        if not close:
            return None
        return close[0] if close[0] == "local" else f"{close[0]}:{model or 'MODEL'}"
    name = model.lower()
    if name in KINDS:
        return name
    family = next((p for start, p in FAMILIES.items() if name.startswith(start)), None)
    return f"{family}:{model}" if family else None


def require_model(spec: ModelSpec) -> None:
    """Refuse, before anything is read or sent, a model this machine cannot serve: the
    embedded one is left out by a plain pip install (``promptbatch setup`` adds it)."""
    if spec.provider == "local":
        gguf_path()


def check_base_url(url: str) -> None:
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(f"Base URL {url!r} is not an http(s) address. "
                          "Write it like http://127.0.0.1:8000/v1.")


def server_address(provider: str, base_url: str | None) -> str | None:
    """The address requests to ``provider`` go to: ``base_url`` if given, else Ollama's
    OLLAMA_HOST, else the provider's own."""
    if provider == "ollama" and not base_url and os.environ.get("OLLAMA_HOST"):
        base_url = _ollama_url(os.environ["OLLAMA_HOST"])
    return base_url or KINDS[provider].default_base_url


def same_address(url: str, other: str | None) -> bool:
    """Two spellings of one server address: scheme and host in any case, a trailing slash."""
    if other is None:
        return False

    def plain(text: str) -> tuple[str, str, str]:
        parsed = urlparse(text.strip())
        return parsed.scheme.lower(), parsed.netloc.lower(), parsed.path.rstrip("/")

    return plain(url) == plain(other)


def _ollama_url(host: str) -> str:
    host = host if "://" in host else f"http://{host}"
    return host.rstrip("/") + "/v1"


@asynccontextmanager
async def open_provider(
    spec: ModelSpec, *, api_key: str | None, concurrency: int | None, timeout: float,
    policy: RetryPolicy, on_retry: Callable[[str], None] | None = None,
    rpm: float | None = None, tpm: float | None = None,
    on_measured: Callable[[dict[str, float]], None] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[Provider]:
    """A ready provider for one run: pooled HTTP clients, one limiter, the embedded server
    if needed. ``concurrency`` caps the window (None: ``CAP``, starting lower); ``on_measured``
    hears what the limiter measured, when the run is done; ``transport`` carries the
    requests instead of the network (``client_pool``)."""
    # The HTTP stack is imported here: a run the cache answers whole never loads it.
    from .anthropic import AnthropicMessages
    from .http import HTTPProvider
    from .openai import OpenAICompatible
    from .pool import client_pool

    if spec.provider == "local":
        server = EmbeddedServer(slots(concurrency))
        limiter = Limiter(server.parallel, rpm, tpm, adaptive=False)
    else:
        server = None
        limiter = Limiter(concurrency or CAP, rpm, tpm,
                          start=concurrency or KINDS[spec.provider].start)
    async with client_pool(limiter.cap, timeout, transport) as clients:

        def make(kind: type[HTTPProvider], base_url: str) -> HTTPProvider:
            return kind(clients, label=spec.label, base_url=base_url, model=spec.model,
                        api_key=api_key, policy=policy, on_retry=on_retry, limiter=limiter,
                        schema_mode=spec.schema_mode)

        if server is not None:
            base_url = await asyncio.to_thread(server.start)
            try:
                yield make(OpenAICompatible, base_url)
            finally:
                server.stop()
        else:
            assert spec.base_url
            yield make(AnthropicMessages if spec.provider == "anthropic" else OpenAICompatible,
                       spec.base_url)
        if on_measured is not None:
            on_measured(limiter.measured())


BATCH_APIS = ("openai", "anthropic")
"""Providers with a Batch API (half price, answers within a day)."""


def require_batch_api(spec: ModelSpec) -> None:
    """Refuse, with the fix, a model whose server has no Batch API."""
    if spec.provider not in BATCH_APIS:
        raise ConfigError(
            f"{spec.provider}:{spec.model} has no Batch API: --via batch (and collect) work with "
            "--model openai:MODEL or anthropic:MODEL. Leave out --via batch to answer in "
            "realtime, or choose one of those models.")


def open_batch_api(spec: ModelSpec, api_key: str | None, timeout: float) -> BatchAPI:
    """The Batch API client for ``spec``'s provider and server; close it when done."""
    require_batch_api(spec)
    assert spec.base_url
    from .batchapi.anthropic import AnthropicBatch  # the HTTP stack, only when a batch is due
    from .batchapi.openai import OpenAIBatch

    kind = OpenAIBatch if spec.provider == "openai" else AnthropicBatch
    return kind(spec.base_url, spec.model, api_key, timeout)
