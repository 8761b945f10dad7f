"""The batch runner: dedupe, cache, a bounded pool of requests, one result per row.

It knows rows only as ``RowJob(row, prompt)``: no spreadsheet, no HTTP. Identical prompts are
sent once; answers already in the store cost nothing; each fresh answer is stored the moment
it arrives, so a crash or Ctrl-C loses nothing that was paid for.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from .budget import Budget
from .estimate import Estimate, request_chars, tokens
from .plan import ERROR_PREFIX, RowJob
from .providers import Completion, Params, Provider, ProviderError
from .store import Store, key_function


@dataclass(frozen=True)
class RowResult:
    """What lands in one row's output cell, and how it came to be."""

    row: int
    text: str
    ok: bool
    cached: bool
    completion: Completion | None = None


@dataclass
class Summary:
    rows: int = 0
    answered: int = 0
    cached: int = 0
    failed: int = 0
    kept: int = 0
    unsent: int = 0
    """Rows a budget stopped before they were sent; their cells stay empty."""
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    estimate: Estimate | None = None
    """What preview would have said, before sending, for the requests this run was to send
    (a budget may then hold some back): printed beside the usage so users can judge it."""


def error_text(reason: str) -> str:
    """The cell text for a failed row; a rerun sends it again."""
    return f"{ERROR_PREFIX} {reason}"


async def run_jobs(
    jobs: Sequence[RowJob],
    label: str,
    connect: Callable[[], AbstractAsyncContextManager[Provider]],
    params: Params,
    store: Store,
    *,
    concurrency: int,
    on_result: Callable[[RowResult], None],
    use_cache: bool = True,
    budget: Budget | None = None,
    on_plan: Callable[[list[str]], None] | None = None,
) -> Summary:
    """Answer every job; ``on_result`` is called once per row, in completion order.

    ``on_plan`` hears the distinct prompts the cache cannot answer, before the first request.

    ``connect`` opens the provider for ``label``; it is not called when the cache holds
    every answer, so a rerun starts no server and needs no key.
    """
    started = time.perf_counter()
    summary = Summary(rows=len(jobs))
    rows_by_key: dict[str, list[int]] = {}
    prompt_by_key: dict[str, str] = {}
    key_of = key_function(label, params)
    for job in jobs:
        key = key_of(job.prompt)
        rows_by_key.setdefault(key, []).append(job.row)
        prompt_by_key.setdefault(key, job.prompt)

    cached = store.get_many(rows_by_key) if use_cache else {}
    for key, completion in cached.items():
        for row in rows_by_key[key]:
            summary.cached += 1
            on_result(RowResult(row, completion.text, True, True, completion))

    queue = [k for k in rows_by_key if k not in cached]
    if on_plan is not None:
        on_plan([prompt_by_key[k] for k in queue])

    def deliver(key: str, result: Completion | str) -> None:
        if isinstance(result, Completion):
            store.put(key, label, result, request_chars(prompt_by_key[key], params.system))
            summary.prompt_tokens += result.prompt_tokens
            summary.completion_tokens += result.completion_tokens
        for row in rows_by_key[key]:
            if isinstance(result, Completion):
                summary.answered += 1
                on_result(RowResult(row, result.text, True, False, result))
            else:
                summary.failed += 1
                on_result(RowResult(row, error_text(result), False, False))

    async def worker(provider: Provider) -> None:
        while queue:
            key = queue[-1]
            reservation = budget.reserve(tokens(prompt_by_key[key])) if budget else 0.0
            if reservation is None:
                return
            queue.pop()
            summary.requests += 1
            try:
                result: Completion | str = await provider.complete(prompt_by_key[key], params)
            except ProviderError as exc:
                result = str(exc)
                if len(summary.errors) < 5:
                    summary.errors.append(result)
            if budget is not None:
                budget.settle(reservation, result if isinstance(result, Completion) else None)
            deliver(key, result)

    queue.reverse()  # pop() from the end keeps the sheet's order
    if queue:
        async with connect() as provider:
            workers = max(1, min(concurrency, len(queue)))
            await asyncio.gather(*(worker(provider) for _ in range(workers)))
    summary.unsent = sum(len(rows_by_key[k]) for k in queue)
    summary.seconds = time.perf_counter() - started
    return summary
