"""What every request to ``promptbatch serve`` shares: the model, the cache, one provider, and
the bearer token that guards them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .. import runner, userconfig
from ..engine import RowResult
from ..inflight import InFlight
from ..plan import Plan
from ..providers import Provider, require_model
from ..runner import Prepared
from ..settings import Settings
from ..store import Store
from ..surfaces.base import Surface

TOKEN_FILE = "serve-token"


def token_path() -> Path:
    """``$PROMPTBATCH_HOME/serve-token``, else beside the user config file."""
    home = os.environ.get("PROMPTBATCH_HOME")
    folder = Path(home) if home else userconfig.config_path().parent
    return folder / TOKEN_FILE


def load_token(path: Path | None = None) -> tuple[str, bool]:
    """The bearer token and whether it was just made; the file is readable by its owner only."""
    path = path or token_path()
    if path.is_file():
        os.chmod(path, 0o600)
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(token + "\n")
    return token, True


@dataclass
class Tally:
    """What one request's answers came to, and which prompts have none yet."""

    answered: int = 0
    cached: int = 0
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    """Tokens of the answers the model gave for this request (none for cached ones)."""
    settled: set[tuple[int, int]] = field(default_factory=set)
    """(row, step) of every prompt settled, with an answer or an error."""

    def add(self, result: RowResult) -> None:
        self.settled.add((result.row, result.step))
        if result.completion is not None and not result.cached:
            self.prompt_tokens += result.completion.prompt_tokens
            self.completion_tokens += result.completion.completion_tokens
        if result.cached:
            self.cached += 1
        elif result.ok:
            self.answered += 1
        else:
            self.failed += 1

    def pending(self, plan: Plan) -> list[int]:
        """Rows with a prompt not settled within the wait (its answer is stored when it
        comes: asking again gets it from the cache)."""
        asked = {(j.row, j.step) for j in plan.jobs}
        asked.update((row, step) for row, steps in plan.waiting.items() for step in steps)
        return sorted({row for row, _ in asked - self.settled})

    def counts(self, plan: Plan) -> dict[str, int]:
        """The counts a reply carries; refused prompts count as failed."""
        return {"answered": self.answered, "cached": self.cached,
                "failed": self.failed + len(plan.refused)}


class Backend:
    """What all requests share: the model, the cache, and one provider opened on first need."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.spec = runner.model_spec(settings)
        require_model(self.spec)  # a missing model or key stops the server at start
        runner.api_key_for(self.spec)
        self.model = f"{self.spec.provider}:{self.spec.model}"
        self.store = store
        self.in_flight = InFlight(store)
        """Prompts being answered for any request: a prompt many requests send at once is
        paid for once."""
        self._open = runner.connector(self.spec, settings)
        self._stack = AsyncExitStack()
        self._provider: Provider | None = None
        self._lock = asyncio.Lock()

    @asynccontextmanager
    async def connect(self) -> AsyncIterator[Provider]:
        """The shared provider: one connection pool (and one embedded model) for every chunk."""
        async with self._lock:
            if self._provider is None:
                self._provider = await self._stack.enter_async_context(self._open())
        yield self._provider

    async def answer(self, prepared: Prepared, surface: Surface,
                     wait: float | None) -> Tally:
        """Answer a planned sheet into ``surface`` (caught cells) through the shared
        provider and the prompts in flight, for at most ``wait`` seconds: answers that come
        later are still stored, and a request asking again gets them from the cache."""
        writer = runner.writer_for(prepared, surface)
        tally = Tally()
        job = runner.answer(prepared, writer, self.store, self.connect, on_result=tally.add,
                            shared=self.in_flight)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(job, wait)
        writer.flush()
        return tally

    async def close(self) -> None:
        self.in_flight.close()
        await self._stack.aclose()
        self._provider = None
        self.store.close()
