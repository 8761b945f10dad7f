"""``python -m bench.probe LATENCY.json -- ARGS``: the ``promptbatch`` command, timed.

It runs the same Typer app as the ``promptbatch`` console script, with one addition: each
``httpx.AsyncClient.send`` is timed, and ``[start, duration]`` pairs (seconds since the first
request; the duration is the client-observed latency, which includes any wait for the
client's own event loop) are written to LATENCY.json at exit.
"""

from __future__ import annotations

import atexit
import json
import sys
import time
from pathlib import Path
from typing import Any

import httpx

_timings: list[tuple[float, float]] = []
_origin: list[float] = []


def _timed(send: Any) -> Any:
    async def wrapper(self: httpx.AsyncClient, *args: Any, **kwargs: Any) -> httpx.Response:
        started = time.perf_counter()
        if not _origin:
            _origin.append(started)
        try:
            response: httpx.Response = await send(self, *args, **kwargs)
            return response
        finally:
            _timings.append((started - _origin[0], time.perf_counter() - started))

    return wrapper


def main() -> None:
    out = Path(sys.argv[1])
    args = sys.argv[3:] if sys.argv[2:3] == ["--"] else sys.argv[2:]
    httpx.AsyncClient.send = _timed(httpx.AsyncClient.send)  # type: ignore[method-assign]
    atexit.register(lambda: out.write_text(json.dumps(_timings)))
    from promptbatch_sheets.cli import app

    app(args, prog_name="promptbatch")


if __name__ == "__main__":
    main()
