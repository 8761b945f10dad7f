"""What every request to ``promptbatch serve`` shares: the model, the cache, one provider, and
the bearer token that guards them."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from .. import runner, userconfig
from ..inflight import InFlight
from ..providers import Params, Provider, require_model
from ..settings import Settings
from ..store import Store

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

    async def close(self) -> None:
        self.in_flight.close()
        await self._stack.aclose()
        self._provider = None
        self.store.close()

    def params(self, options: Mapping[str, Any]) -> Params:
        s = self.settings
        return Params(options.get("temperature", s.temperature),
                      options.get("max_tokens", s.max_tokens), options.get("system", s.system))
