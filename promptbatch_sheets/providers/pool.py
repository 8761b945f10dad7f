"""HTTP clients for one run, in pools small enough to stay fast.

httpcore scans every connection of a pool each time a request starts or ends
(encode/httpx#3215); past a few dozen connections the client, not the server, becomes the
bottleneck. A run with high concurrency therefore spreads its requests over several small
pools, used in turn, each keeping its connections alive.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import httpx

CONNECTIONS_PER_CLIENT = 32


@asynccontextmanager
async def client_pool(concurrency: int, timeout: float) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Enough clients for ``concurrency`` connections, closed together at the end."""
    count = max(1, math.ceil(concurrency / CONNECTIONS_PER_CLIENT))
    size = math.ceil(concurrency / count)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    timeouts = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(timeout=timeouts,
                                                                     limits=limits))
                   for _ in range(count)]
        yield clients
