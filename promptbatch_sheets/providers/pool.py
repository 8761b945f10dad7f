"""HTTP clients for one run, in pools small enough to stay fast.

httpcore scans every connection of a pool, asking each socket whether it is still alive,
each time a request starts or ends (encode/httpx#3215): the client, not the server, becomes
the bottleneck. Measured here with an instant server and 32 requests in flight: 500 rows/s in
one pool of 32, 1,030 rows/s in pools of 4. A run therefore spreads its requests over small
pools, used in turn, each keeping its connections alive and sharing one TLS context.
"""

from __future__ import annotations

import math
import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import certifi
import httpx

CONNECTIONS_PER_CLIENT = 4


@asynccontextmanager
async def client_pool(concurrency: int, timeout: float,
                      transport: httpx.AsyncBaseTransport | None = None,
                      ) -> AsyncIterator[list[httpx.AsyncClient]]:
    """Enough clients for ``concurrency`` connections, closed together at the end;
    ``transport`` replaces the network (httpx's own seam: ``httpx.MockTransport``)."""
    count = max(1, math.ceil(concurrency / CONNECTIONS_PER_CLIENT))
    size = math.ceil(concurrency / count)
    limits = httpx.Limits(max_connections=size, max_keepalive_connections=size)
    timeouts = httpx.Timeout(timeout, connect=min(timeout, 10.0))
    tls = ssl.create_default_context(cafile=certifi.where())
    async with AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(httpx.AsyncClient(timeout=timeouts,
                                                                     limits=limits, verify=tls,
                                                                     transport=transport))
                   for _ in range(count)]
        yield clients
