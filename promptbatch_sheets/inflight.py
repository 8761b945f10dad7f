"""Requests in flight, shared: an answer on its way is paid for once, however many ask.

Within a process (the many requests ``promptbatch serve`` answers at once) a second asker
awaits the first one's future; across processes (two runs of sheets with the same prompts)
it waits on the store's claims (store/claims.py) until the answer is stored, or the holder
gives up or dies, and then asks itself.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable

from .providers import Completion
from .store import Store
from .store.claims import BEAT_S, Claims

POLL_S = 0.25
"""How often a process waiting on another's claims looks for their answers."""
AHEAD = 16
"""Prompts claimed with the one about to be sent: the next ones of the same run, so a claim
costs a sixteenth of a commit."""

Outcome = Completion | str | None
"""An answer, a failure's reason, or None: its holder gave up (cancelled, or died), so the
waiter asks itself."""


class InFlight:
    """The prompts being answered, by key; one per store connection (a run, or a server)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._claims = Claims(store)
        self._pending: dict[str, asyncio.Future[Outcome]] = {}
        self._mine: set[str] = set()
        self._ahead: set[str] = set()
        """Claimed with an earlier key, not yet joined."""
        self._remote: dict[str, float] = {}
        """Keys another process holds -> the oldest answer that will do (0: any)."""
        self._watcher: asyncio.Task[None] | None = None

    def join(self, key: str, use_cache: bool = True,
             ahead: Iterable[str] = ()) -> asyncio.Future[Outcome] | None:
        """None if the caller now holds ``key`` (then it must ``finish`` it); else the future
        of the outcome someone else is getting. An answer stored since the caller looked in
        the cache comes back as a finished future. ``ahead`` are the keys the caller sends
        next: they are claimed too, and given up by ``abandon`` if never sent."""
        future = self._pending.get(key)
        if future is not None:
            return future
        future = asyncio.get_running_loop().create_future()
        if key in self._ahead:
            self._ahead.discard(key)
            taken: bool | None = True
        else:
            more = itertools.islice(
                (k for k in ahead if k not in self._pending and k not in self._ahead), AHEAD)
            claims = self._claims.take([key, *more], stored=use_cache)
            taken = claims.pop(key)
            self._ahead.update(k for k, mine in claims.items() if mine)
        stored = self._store.get_many([key]).get(key) if taken is None else None
        if stored is not None:
            future.set_result(stored)
            return future
        self._pending[key] = future
        if taken is not False:
            self._mine.add(key)
            self._watch()
            return None
        self._remote[key] = 0.0 if use_cache else time.time()
        self._watch()
        return future

    @property
    def owner(self) -> str:
        """Whose claims these are: an answer is stored with ``Store.put(claimed_by=owner)``,
        which ends its claim in the same transaction."""
        return self._claims.owner

    def finish(self, key: str, outcome: Outcome) -> None:
        """The holder's outcome; an answer must be in the store already (its claim ended
        with it), a failure or a cancel gives the claim up here."""
        self._mine.discard(key)
        if not isinstance(outcome, Completion):
            self._claims.release([key])
        future = self._pending.pop(key, None)
        if future is not None and not future.done():
            future.set_result(outcome)

    def abandon(self, keys: Iterable[str]) -> None:
        """Give up the claims taken ahead for ``keys``, which the caller will not send."""
        dropped = [key for key in keys if key in self._ahead]
        self._ahead.difference_update(dropped)
        self._claims.release(dropped)

    def close(self) -> None:
        """Release every claim; whoever still waits here asks for itself."""
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._claims.release_all()
        for future in self._pending.values():
            if not future.done():
                future.set_result(None)
        self._pending.clear()
        self._mine.clear()
        self._ahead.clear()
        self._remote.clear()

    def _watch(self) -> None:
        if self._watcher is None or self._watcher.done():
            self._watcher = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        """Beat for our claims; settle others' claims once answered, released or lapsed."""
        beaten = time.monotonic()
        while self._mine or self._ahead or self._remote:
            await asyncio.sleep(POLL_S)
            if (self._mine or self._ahead) and time.monotonic() - beaten >= BEAT_S:
                self._claims.beat()
                beaten = time.monotonic()
            if self._remote:
                self._settle_remote()

    def _settle_remote(self) -> None:
        held = self._claims.held(self._remote)
        ended: dict[float, list[str]] = {}
        for key in [k for k in self._remote if k not in held]:
            ended.setdefault(self._remote.pop(key), []).append(key)
        for since, keys in ended.items():
            answers = self._store.get_many(keys, since)
            for key in keys:
                future = self._pending.pop(key, None)
                if future is not None and not future.done():
                    future.set_result(answers.get(key))

