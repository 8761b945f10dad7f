"""The batch runner: dedupe, cache, a bounded pool of requests, one result per row.

It knows rows only as ``RowJob(row, prompt)``: no spreadsheet, no HTTP. Identical prompts are
sent once; answers already in the store cost nothing; each fresh answer is stored the moment
it arrives, so a crash or Ctrl-C loses nothing that was paid for.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field, replace

from .budget import Budget
from .estimate import Estimate, request_chars, tokens
from .limits import CAP
from .plan import ERROR_PREFIX, RowJob
from .providers import Completion, Params, Provider, ProviderError
from .schema import Schema, SchemaMismatch, repair_prompt
from .store import Store, key_function


@dataclass(frozen=True)
class RowResult:
    """What lands in one row's answers cells for one step, and how it came to be."""

    row: int
    text: str
    ok: bool
    cached: bool
    completion: Completion | None = None
    step: int = 0


Follow = Callable[[RowResult], Iterable[RowJob | RowResult]]
"""Hears each result; returns the prompts it makes ready (a later step of the same row) and
the results it settles without a call (that later step, when the answer it uses failed)."""


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


def structured(params: Params, schema: Schema) -> Params:
    """The request parameters of a step whose answers must fit ``schema``."""
    return replace(params, schema=schema.text())


def fits(schema: Schema, text: str) -> bool:
    try:
        schema.check(text)
    except SchemaMismatch:
        return False
    return True


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
    concurrency: int | None,
    on_result: Callable[[RowResult], None],
    use_cache: bool = True,
    budget: Budget | None = None,
    on_plan: Callable[[list[RowJob]], None] | None = None,
    follow: Follow | None = None,
    schemas: Mapping[int, Schema] | None = None,
) -> Summary:
    """Answer every job, and every job ``follow`` adds; ``on_result`` is called once per job,
    in completion order.

    ``on_plan`` hears one job per distinct prompt the cache cannot answer, before the first request
    (prompts ``follow`` adds later are not among them).

    ``connect`` opens the provider for ``label``; it is not called when the cache holds
    every answer, so a rerun starts no server and needs no key.

    ``schemas`` are the structured steps' schemas: their answers are checked on arrival, a
    reply that does not fit is asked again once with the reason, and only answers that fit
    are stored.
    """
    started = time.perf_counter()
    summary = Summary()
    step_schemas = schemas or {}
    step_params = {step: structured(params, schema) for step, schema in step_schemas.items()}
    step_of: dict[str, int] = {}
    key_functions: dict[int, Callable[[str], str]] = {}

    def key_of(step: int) -> Callable[[str], str]:
        """Each step's key function, made once: a big rerun spends much of its time hashing."""
        if step not in key_functions:
            key_functions[step] = key_function(label, step_params.get(step, params))
        return key_functions[step]

    waiting: dict[str, list[RowJob]] = {}
    """Jobs by the key of their prompt, from the moment it is queued until it is answered."""
    prompt_by_key: dict[str, str] = {}
    done: dict[str, Completion | str] = {}
    """This run's answers, for a later step that renders a prompt already answered."""
    queue: deque[str] = deque()

    def settle(job: RowJob, result: Completion | str, cached: bool) -> None:
        if isinstance(result, Completion):
            if cached:
                summary.cached += 1
            else:
                summary.answered += 1
            settled = RowResult(job.row, result.text, True, cached, result, job.step)
        else:
            summary.failed += 1
            settled = RowResult(job.row, error_text(result), False, False, step=job.step)
        on_result(settled)
        if follow is not None:
            ready: list[RowJob] = []
            for item in follow(settled):
                if isinstance(item, RowJob):
                    ready.append(item)
                else:
                    summary.failed += 1
                    on_result(item)
            if ready:
                admit(ready, first=True)

    def admit(batch: Sequence[RowJob], first: bool = False) -> None:
        """Answer jobs from this run or the cache at once; queue the others' prompts."""
        fresh: dict[str, list[RowJob]] = {}
        for job in batch:
            key = key_of(job.step)(job.prompt)
            if key in done:
                settle(job, done[key], isinstance(done[key], Completion))
            elif key in waiting:
                waiting[key].append(job)
            else:
                fresh.setdefault(key, []).append(job)
                prompt_by_key.setdefault(key, job.prompt)
                step_of.setdefault(key, job.step)
        hits = store.get_many(fresh) if use_cache else {}
        for key in [k for k in hits if step_of[k] in step_schemas]:
            if not fits(step_schemas[step_of[key]], hits[key].text):
                del hits[key]  # stored by another tool or version: ask again
        queued = []
        for key, same in fresh.items():
            if key in hits:
                for job in same:
                    settle(job, hits[key], True)
            else:
                waiting[key] = same
                queued.append(key)
        if first:  # a row's later steps go first: rows finish, and fill the sheet, in turn
            queue.extendleft(reversed(queued))
        else:
            queue.extend(queued)

    def deliver(key: str, result: Completion | str) -> None:
        if isinstance(result, Completion):
            schema = step_schemas.get(step_of[key])
            sent = prompt_by_key[key] + (schema.instructions() if schema else "")
            store.put(key, label, result, request_chars(sent, params.system))
        done[key] = result
        for job in waiting.pop(key):
            settle(job, result, False)

    async def ask(provider: Provider, prompt: str, step_params: Params,
                  reservation: float) -> Completion | str:
        """One request, its tokens counted and its budget reservation settled."""
        summary.requests += 1
        try:
            result: Completion | str = await provider.complete(prompt, step_params)
        except ProviderError as exc:
            result = str(exc)
        if isinstance(result, Completion):
            summary.prompt_tokens += result.prompt_tokens
            summary.completion_tokens += result.completion_tokens
        if budget is not None:
            budget.settle(reservation, result if isinstance(result, Completion) else None)
        return result

    async def repaired(provider: Provider, prompt: str, step_params: Params, schema: Schema,
                       reply: Completion) -> Completion | str:
        """The reply if it fits the schema, else the answer to one retry that names why."""
        try:
            schema.check(reply.text)
            return reply
        except SchemaMismatch as exc:
            reason = exc.reason
        retry = repair_prompt(prompt, reply.text, reason)
        reservation = budget.reserve(tokens(retry)) if budget else 0.0
        if reservation is None:
            return f"the reply did not fit the fields ({reason}); the budget left no retry"
        second = await ask(provider, retry, step_params, reservation)
        if isinstance(second, str):
            return second
        try:
            schema.check(second.text)
            return second
        except SchemaMismatch as again:
            return f"the reply did not fit the fields, twice: {again.reason}"

    in_flight = 0
    changed = asyncio.Condition()
    """Workers wait here for a job or a free place in the provider's window; a finished job
    wakes only as many as may go, not all the cap's workers at once."""

    async def worker(provider: Provider) -> None:
        nonlocal in_flight
        while queue or in_flight:
            if not queue or in_flight >= provider.window:  # a job waits here, holding no budget
                async with changed:
                    await changed.wait()
                continue
            key = queue[0]
            reservation = budget.reserve(tokens(prompt_by_key[key])) if budget else 0.0
            if reservation is None:
                return
            queue.popleft()
            in_flight += 1
            step = step_of[key]
            result = await ask(provider, prompt_by_key[key], step_params.get(step, params),
                               reservation)
            if isinstance(result, Completion) and step in step_params:
                result = await repaired(provider, prompt_by_key[key], step_params[step],
                                        step_schemas[step], result)
            if isinstance(result, str) and len(summary.errors) < 5:
                summary.errors.append(result)
            deliver(key, result)
            in_flight -= 1
            async with changed:
                if not in_flight:
                    changed.notify_all()  # the queue is empty, or the window was full: go
                elif queue:
                    changed.notify(max(1, provider.window - in_flight))

    admit(jobs)
    if on_plan is not None:
        on_plan([waiting[k][0] for k in queue])
    if queue:
        async with connect() as provider:
            cap = concurrency or CAP
            workers = cap if follow else max(1, min(cap, len(queue)))
            await asyncio.gather(*(worker(provider) for _ in range(workers)))
    summary.unsent = sum(len(waiting[k]) for k in queue)
    summary.rows = summary.answered + summary.cached + summary.failed + summary.unsent
    summary.seconds = time.perf_counter() - started
    return summary
