"""The realtime engine: dedupe, cache, a bounded pool of requests, one result per row.

It knows rows only as ``RowJob(row, prompt)``: no spreadsheet, no HTTP. Identical prompts are
sent once; answers already in the store cost nothing; each fresh answer is stored the moment
it arrives, so a crash or Ctrl-C loses nothing that was paid for.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from .budget import Budget
from .errors import ProviderError, SchemaMismatch
from .estimate import Estimate, request_chars, tokens
from .inflight import InFlight, Outcome, sharing
from .limits import CAP
from .plan import ERROR_PREFIX, RowJob
from .providers import Completion, Params, Provider
from .request import Requests
from .schema import Schema, repair_prompt
from .store import Store


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
    cut: int = 0
    """Answers (new or cached) that stopped at max_tokens: partial, though not failed."""
    rate_limited: int = 0
    """Failed rows the provider kept refusing for its rate limit (HTTP 429)."""
    requests: int = 0
    retries: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)
    estimate: Estimate | None = None
    """What preview would have said, before sending, for the requests this run was to send
    (a budget may then hold some back): printed beside the usage so users can judge it."""


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
    shared: InFlight | None = None,
    cancelled: Callable[[], bool] | None = None,
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

    ``shared`` are the prompts in flight that this run shares with others (a server's
    requests); without it the run shares only with other processes, through the store. A
    prompt someone else is getting is waited for, never sent twice.

    ``cancelled`` is asked before each request: once it says True no request starts, the
    ones in flight finish (their answers are paid for, so kept), and the rest count as
    unsent, as a budget's do.
    """
    started = time.perf_counter()
    summary = Summary()
    step_schemas = schemas or {}
    requests = Requests(label, params, step_schemas)
    waiting: dict[str, list[RowJob]] = {}
    """Jobs by the key of their prompt, from the moment it is queued until it is answered."""
    sent: dict[str, RowJob] = {}
    """The job whose prompt and parameters go out for each key."""
    done: dict[str, Completion | str] = {}
    """This run's answers, for a later step that renders a prompt already answered."""
    queue: deque[str] = deque()

    def settle(job: RowJob, result: Completion | str, cached: bool) -> None:
        if isinstance(result, Completion):
            if cached:
                summary.cached += 1
            else:
                summary.answered += 1
            summary.cut += result.cut
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

    def admit(arrivals: Sequence[RowJob], first: bool = False) -> None:
        """Answer jobs from this run or the cache at once; queue the others' prompts."""
        fresh: dict[str, list[RowJob]] = {}
        for job in arrivals:
            key = requests.key(job)
            if key in done:
                settle(job, done[key], isinstance(done[key], Completion))
            elif key in waiting:
                waiting[key].append(job)
            else:
                fresh.setdefault(key, []).append(job)
                sent.setdefault(key, job)
        hits = store.get_many(fresh) if use_cache else {}
        for key in [k for k in hits if sent[k].step in step_schemas]:
            if not fits(step_schemas[sent[key].step], hits[key].text):
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

    def deliver(key: str, result: Completion | str, cached: bool = False) -> None:
        done[key] = result
        for job in waiting.pop(key):
            settle(job, result, cached and isinstance(result, Completion))

    async def ask(provider: Provider, prompt: str, step_params: Params,
                  reservation: float) -> Completion | str:
        """One request, its tokens counted and its budget reservation settled."""
        summary.requests += 1
        try:
            result: Completion | str = await provider.complete(prompt, step_params)
        except ProviderError as exc:
            result = str(exc)
            summary.rate_limited += exc.rate_limited
            summary.requests -= not exc.sent
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

    busy = 0
    """Keys this run waits for: its own requests, and answers others are getting."""
    in_flight = 0
    """This run's own requests under way: at most the provider's window of them."""
    sleepers: deque[asyncio.Future[None]] = deque()
    """Workers with nothing to do now. They are woken as jobs and places in the window come,
    only as many as may go: waking every worker of a 256 cap on each answer cost a fifth of
    the rate."""

    async def sleep() -> None:
        sleeper = asyncio.get_running_loop().create_future()
        sleepers.append(sleeper)
        await sleeper

    def wake(count: int | None = None) -> None:
        """Wake ``count`` sleeping workers (all of them: None)."""
        for _ in range(len(sleepers) if count is None else min(count, len(sleepers))):
            sleeper = sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)

    joined: list[tuple[asyncio.Future[Outcome], Callable[[asyncio.Future[Outcome]], None]]] = []

    def wait_for_other(key: str, future: asyncio.Future[Outcome]) -> None:
        """Someone else (this process or another) is getting ``key``: settle its jobs with
        that outcome, or queue it again if they gave up."""
        nonlocal busy
        busy += 1

        def arrived(outcome: asyncio.Future[Outcome]) -> None:
            nonlocal busy
            busy -= 1
            result = None if outcome.cancelled() else outcome.result()
            if result is None:
                queue.appendleft(key)
            else:
                deliver(key, result, cached=True)
            wake()

        future.add_done_callback(arrived)
        joined.append((future, arrived))

    fetching: set[asyncio.Future[None]] = set()
    """Requests under way. They run on if the run is cancelled, for a server whose provider
    outlives the request (``shared``); a run that closes its provider stops them first."""

    async def worker(provider: Provider) -> None:
        nonlocal busy, in_flight
        while queue or busy:
            if not queue or in_flight >= provider.window:  # a job waits here, holding no budget
                await sleep()
                continue
            if cancelled is not None and cancelled():
                return
            key = queue[0]
            other = flight.join(key, use_cache, itertools.islice(queue, 1, None))
            if other is not None:
                queue.popleft()
                wait_for_other(key, other)
                continue
            reservation = budget.reserve(tokens(sent[key].prompt)) if budget else 0.0
            if reservation is None:
                flight.finish(key, None)
                return
            queue.popleft()
            busy += 1
            in_flight += 1
            task = asyncio.ensure_future(fetch(provider, key, reservation))
            fetching.add(task)
            task.add_done_callback(fetching.discard)
            await asyncio.shield(task)
            busy -= 1
            in_flight -= 1
            if not in_flight:
                wake()  # the queue is empty, or the window was full: all may go
            elif queue:
                wake(max(1, provider.window - in_flight))

    async def fetch(provider: Provider, key: str, reservation: float) -> None:
        """Ask for ``key`` (and repair the reply), then store, settle and hand the outcome
        to whoever waits for it, in one step: an answer stored is an answer written. It runs
        on if the run is cancelled (a server request out of time), so an answer paid for is
        kept; a cancelled request lets the waiters ask."""
        job = sent[key]
        job_params = requests.params(job)
        schema = step_schemas.get(job.step)
        try:
            result = await ask(provider, job.prompt, job_params, reservation)
            if isinstance(result, Completion) and schema is not None:
                result = await repaired(provider, job.prompt, job_params, schema, result)
        except BaseException:
            flight.finish(key, None)
            raise
        if isinstance(result, Completion):
            text = job.prompt + (schema.instructions() if schema else "")
            store.put(key, label, result, request_chars(text, job_params.system), flight.owner)
        elif len(summary.errors) < 5:
            summary.errors.append(result)
        deliver(key, result)
        flight.finish(key, result)

    admit(jobs)
    if on_plan is not None:
        on_plan([waiting[k][0] for k in queue])
    with sharing(store, shared) as flight:
        try:
            if queue:
                async with connect() as provider:
                    cap = concurrency or CAP
                    workers = cap if follow else max(1, min(cap, len(queue)))
                    try:
                        await asyncio.gather(*(worker(provider) for _ in range(workers)))
                    finally:
                        if shared is None:  # the provider closes with this run: so do they
                            await _stopped(fetching)
            while busy:  # a budget stopped the workers: hear out what others are getting
                await sleep()
        finally:
            flight.abandon(queue)
            for future, arrived in joined:
                future.remove_done_callback(arrived)
    summary.unsent = sum(len(waiting[k]) for k in queue)
    summary.rows = summary.answered + summary.cached + summary.failed + summary.unsent
    summary.seconds = time.perf_counter() - started
    return summary


async def _stopped(tasks: set[asyncio.Future[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (a Ctrl-C: they cannot outlive the
    provider they use)."""
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
