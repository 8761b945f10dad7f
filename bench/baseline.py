"""``python -m bench.baseline CSV BASE_URL CONCURRENCY LATENCY.json [MAX_TOKENS]``: the plain
SDK baseline.

The same rows as the product (rendered with the same template), sent with the ``openai``
SDK's ``AsyncOpenAI`` and an ``asyncio.Semaphore``: no cache, no output file, nothing else.
Prints one JSON line: rows, ok, failed, seconds.
"""

from __future__ import annotations

import asyncio
import csv
import json
import sys
import time
from pathlib import Path

import jinja2

from .data import TEMPLATE


def prompts(path: Path) -> list[str]:
    """Every row of the CSV rendered with the benchmark's template."""
    template = jinja2.Environment(autoescape=False).from_string(TEMPLATE)
    with path.open(encoding="utf-8", newline="") as handle:
        return [template.render(row) for row in csv.DictReader(handle)]


async def run(rows: list[str], base_url: str, concurrency: int,
              max_tokens: int = 0) -> tuple[dict[str, float], list[tuple[float, float]]]:
    """Send every prompt; the summary and each request's ``[start, latency]``."""
    from openai import AsyncOpenAI

    client = AsyncOpenAI(base_url=base_url, api_key="x", max_retries=6, timeout=120)
    gate = asyncio.Semaphore(concurrency)
    timings: list[tuple[float, float]] = []
    failed = 0

    origin = time.perf_counter()

    async def one(prompt: str) -> None:
        nonlocal failed
        async with gate:
            started = time.perf_counter()
            try:
                await client.chat.completions.create(
                    model="bench", messages=[{"role": "user", "content": prompt}],
                    **({"max_tokens": max_tokens} if max_tokens else {}))
            except Exception:  # noqa: BLE001 - a failed row is counted, not raised
                failed += 1
            timings.append((started - origin, time.perf_counter() - started))

    started = time.perf_counter()
    await asyncio.gather(*(one(p) for p in rows))
    seconds = time.perf_counter() - started
    await client.close()
    summary = {"rows": len(rows), "ok": len(rows) - failed, "failed": failed,
               "seconds": seconds}
    return summary, timings


def main() -> None:
    path, base_url, concurrency, out = sys.argv[1:5]
    max_tokens = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    summary, timings = asyncio.run(run(prompts(Path(path)), base_url, int(concurrency),
                                       max_tokens))
    Path(out).write_text(json.dumps(timings))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
