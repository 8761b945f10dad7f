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
from .inflight import InFlight, Outcome
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
the results it settles without a call (that later step, when the answer it uses failed).
It renders templates: a run that shares its event loop with others (``shared``: a server's
requests) calls it in a thread, so a slow template stalls no other request; a run alone
calls it in place, as a thread's hop for each answer cost a chained run on an instant
server a third of its rate."""


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


Result = Completion | str
"""An answer, or the reason it failed."""


@dataclass(slots=True)
class Question:
    """One distinct prompt of a run, by its answer key, from the moment it is queued."""

    job: RowJob
    """The job whose prompt, step and parameters go out."""
    waiting: list[RowJob]
    """The jobs this answer settles, until it comes."""
    result: Result | None = None
    """What came back: a later job with the same key is settled with it at once."""
    stale: bool = False
    """The store's answer did not fit the step's schema: only a newer one will do."""


class Engine:
    """One run: ``run(jobs)`` answers every job, and every job ``follow`` adds;
    ``on_result`` is called once per job, in completion order.

    ``on_plan`` hears one job per distinct prompt the cache cannot answer, before the first
    request (prompts ``follow`` adds later are not among them).

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

    def __init__(
        self,
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
    ) -> None:
        self.label = label
        self.connect = connect
        self.store = store
        self.concurrency = concurrency
        self.on_result = on_result
        self.use_cache = use_cache
        self.budget = budget
        self.on_plan = on_plan
        self.follow = follow
        self.schemas = schemas or {}
        self.shared = shared
        self.cancelled = cancelled
        self.requests = Requests(label, params, self.schemas)
        self.flight = shared if shared is not None else InFlight(store)
        self.summary = Summary()
        self.questions: dict[str, Question] = {}
        """This run's prompts by key, queued or answered (a cache hit is not kept)."""
        self.queue: deque[str] = deque()
        """Keys to send, in order."""
        self.busy = 0
        """Keys this run waits for: its own requests, answers others are getting, and
        results the follow hook has yet to hear."""
        self.in_flight = 0
        """This run's own requests under way: at most the provider's window of them."""
        self.sleepers: deque[asyncio.Future[None]] = deque()
        """Workers with nothing to do now. They are woken as jobs and places in the window
        come, only as many as may go: waking every worker of a 256 cap on each answer cost a
        fifth of the rate."""
        self.joined: list[tuple[asyncio.Future[Outcome],
                                Callable[[asyncio.Future[Outcome]], None]]] = []
        """Answers others are getting, and what hears each."""
        self.fetching: set[asyncio.Future[None]] = set()
        """Requests under way (and the follow hook's turn). They run on if the run is
        cancelled, for a server whose provider outlives the request (``shared``); a run
        that closes its provider stops them first."""
        self.heard: list[RowResult] = []
        """Results the follow hook has not heard yet."""
        self.hearing: asyncio.Future[None] | None = None
        """Done once the hook has heard ``heard`` and what it made is admitted: a request
        waits for its own results only, not for those that come while the hook runs."""
        self.following: asyncio.Task[None] | None = None
        """The task handing ``heard`` to the follow hook, while it has any."""

    async def run(self, jobs: Sequence[RowJob]) -> Summary:
        """Answer ``jobs`` (and what ``follow`` adds); what it cost and came to."""
        started = time.perf_counter()
        summary = self.summary
        try:
            self.admit(jobs)
            await self.followed()
            if self.on_plan is not None:
                self.on_plan([self.questions[k].job for k in self.queue])
            if self.queue:
                async with self.connect() as provider:
                    cap = self.concurrency or CAP
                    workers = cap if self.follow else max(1, min(cap, len(self.queue)))
                    try:
                        await asyncio.gather(*(self.work(provider) for _ in range(workers)))
                        await self.followed()  # a budget stopped the workers mid-chain
                    finally:
                        if self.shared is None:  # the provider closes with this run: so do they
                            await _stopped(self.fetching)
            while self.busy:  # a budget stopped the workers: hear out what others are getting
                await self.sleep()
        finally:
            self.flight.abandon(self.queue)
            for future, arrived in self.joined:
                future.remove_done_callback(arrived)
            if self.shared is None:
                self.flight.close()
        summary.unsent = sum(len(self.questions[k].waiting) for k in self.queue)
        summary.rows = summary.answered + summary.cached + summary.failed + summary.unsent
        summary.seconds = time.perf_counter() - started
        return summary

    def admit(self, jobs: Sequence[RowJob], first: bool = False) -> None:
        """Answer jobs from this run or the cache at once; queue the others' prompts."""
        questions = self.questions
        key_of = self.requests.key
        fresh: dict[str, Question] = {}
        for job in jobs:
            key = key_of(job)
            known = questions.get(key) or fresh.get(key)
            if known is None:
                fresh[key] = Question(job, [job])
            elif known.result is not None:
                self.settle(job, known.result, isinstance(known.result, Completion))
            else:
                known.waiting.append(job)
        hits = self.store.get_many(fresh) if self.use_cache else {}
        for key in [k for k in hits if fresh[k].job.step in self.schemas]:
            if not fits(self.schemas[fresh[key].job.step], hits[key].text):
                del hits[key]  # stored by another tool or version: ask again
                fresh[key].stale = True
        queued = []
        for key, question in fresh.items():
            if key in hits:
                for job in question.waiting:
                    self.settle(job, hits[key], True)
            else:
                questions[key] = question
                queued.append(key)
        if first:  # a row's later steps go first: rows finish, and fill the sheet, in turn
            self.queue.extendleft(reversed(queued))
        else:
            self.queue.extend(queued)

    def settle(self, job: RowJob, result: Result, cached: bool) -> None:
        """One job's result, to ``on_result`` and the follow hook."""
        summary = self.summary
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
        self.on_result(settled)
        if self.follow is None:
            return
        if self.shared is None:  # alone on its event loop: in place
            self.follow_up(self.follow(settled))
        else:
            self.hear(settled)

    def hear(self, result: RowResult) -> None:
        """Keep ``result`` for the follow hook, which a thread calls soon."""
        if not self.heard:
            self.hearing = asyncio.get_running_loop().create_future()
        self.heard.append(result)
        if self.following is None:
            self.busy += 1
            self.following = asyncio.ensure_future(self.follow_heard())
            self.fetching.add(self.following)
            self.following.add_done_callback(self.fetching.discard)

    async def follow_heard(self) -> None:
        """Hand the results heard to the follow hook in a thread, in batches, until none is
        left."""
        assert self.follow is not None
        follow = self.follow
        try:
            while self.heard:
                heard, self.heard = self.heard, []
                hearing, self.hearing = self.hearing, None
                assert hearing is not None
                try:
                    self.follow_up(await asyncio.to_thread(_followed_by, follow, heard))
                except Exception as exc:  # a bug in the hook: the run stops with it
                    hearing.set_exception(exc)
                    raise
                finally:
                    if not hearing.done():
                        hearing.set_result(None)
        finally:
            self.following = None
            self.busy -= 1
            self.wake()

    def follow_up(self, made: Iterable[RowJob | RowResult]) -> None:
        """Admit the prompts the hook made ready, first; the results it settled are final."""
        ready: list[RowJob] = []
        for item in made:
            if isinstance(item, RowJob):
                ready.append(item)
            else:
                self.summary.failed += 1
                self.on_result(item)
        if ready:
            self.admit(ready, first=True)

    async def followed(self) -> None:
        """Until the follow hook has heard every result so far (and queued what it made)."""
        if self.following is not None:
            await asyncio.shield(self.following)

    def deliver(self, key: str, result: Result, cached: bool = False) -> None:
        """Settle every job waiting for ``key``, and the later ones with its prompt."""
        question = self.questions[key]
        question.result = result
        waiting, question.waiting = question.waiting, []
        for job in waiting:
            self.settle(job, result, cached and isinstance(result, Completion))

    async def work(self, provider: Provider) -> None:
        """One worker: send the next key while the window has room; sleep otherwise."""
        queue = self.queue
        while queue or self.busy:
            if not queue or self.in_flight >= provider.window:  # a job waits, holding no budget
                await self.sleep()
                continue
            if self.cancelled is not None and self.cancelled():
                return
            key = queue[0]
            question = self.questions[key]
            other = self.flight.join(key, self.use_cache and not question.stale,
                                     itertools.islice(queue, 1, None))
            if other is not None:
                queue.popleft()
                self.wait_for_other(key, other)
                continue
            budget = self.budget
            reservation = budget.reserve(tokens(question.job.prompt)) if budget else 0.0
            if reservation is None:
                self.flight.finish(key, None)
                return
            queue.popleft()
            self.busy += 1
            self.in_flight += 1
            task = asyncio.ensure_future(self.fetch(provider, key, reservation))
            self.fetching.add(task)
            task.add_done_callback(self.fetching.discard)
            await asyncio.shield(task)
            self.busy -= 1
            self.in_flight -= 1
            if not self.in_flight:
                self.wake()  # the queue is empty, or the window was full: all may go
            elif queue:
                self.wake(max(1, provider.window - self.in_flight))

    async def sleep(self) -> None:
        sleeper = asyncio.get_running_loop().create_future()
        self.sleepers.append(sleeper)
        await sleeper

    def wake(self, count: int | None = None) -> None:
        """Wake ``count`` sleeping workers (all of them: None)."""
        sleepers = self.sleepers
        for _ in range(len(sleepers) if count is None else min(count, len(sleepers))):
            sleeper = sleepers.popleft()
            if not sleeper.done():
                sleeper.set_result(None)

    def wait_for_other(self, key: str, future: asyncio.Future[Outcome]) -> None:
        """Someone else (this process or another) is getting ``key``: settle its jobs with
        that outcome, or queue it again if they gave up."""
        self.busy += 1

        def arrived(outcome: asyncio.Future[Outcome]) -> None:
            self.busy -= 1
            result = None if outcome.cancelled() else outcome.result()
            if result is None:
                self.queue.appendleft(key)
            else:
                self.deliver(key, result, cached=True)
            self.wake()

        future.add_done_callback(arrived)
        self.joined.append((future, arrived))

    async def fetch(self, provider: Provider, key: str, reservation: float) -> None:
        """Answer ``key``, then store, settle and hand the outcome to whoever waits for it,
        in one step: an answer stored is an answer written. It runs on if the run is
        cancelled (a server request out of time), so an answer paid for is kept; a
        cancelled request lets the waiters ask."""
        job = self.questions[key].job
        params = self.requests.params(job)
        schema = self.schemas.get(job.step)
        try:
            result = await self.answer(provider, job.prompt, params, schema, reservation)
        except BaseException:
            self.flight.finish(key, None)
            raise
        if isinstance(result, Completion):
            text = job.prompt + (schema.instructions() if schema else "")
            self.store.put(key, self.label, result, request_chars(text, params.system),
                           self.flight.owner)
        elif len(self.summary.errors) < 5:
            self.summary.errors.append(result)
        self.deliver(key, result)
        self.flight.finish(key, result)
        if self.hearing is not None:  # a row's later steps are queued before its worker goes on
            await asyncio.shield(self.hearing)

    async def answer(self, provider: Provider, prompt: str, params: Params,
                     schema: Schema | None, reservation: float) -> Result:
        """The reply to ``prompt``; with ``schema``, the reply if it fits, else the answer to
        one retry that names why."""
        reply = await self.ask(provider, prompt, params, reservation)
        if schema is None or isinstance(reply, str):
            return reply
        try:
            schema.check(reply.text)
            return reply
        except SchemaMismatch as exc:
            reason = exc.reason
        retry = repair_prompt(prompt, reply.text, reason)
        again = self.budget.reserve(tokens(retry)) if self.budget else 0.0
        if again is None:
            return f"the reply did not fit the fields ({reason}); the budget left no retry"
        second = await self.ask(provider, retry, params, again)
        if isinstance(second, str):
            return second
        try:
            schema.check(second.text)
            return second
        except SchemaMismatch as twice:
            return f"the reply did not fit the fields, twice: {twice.reason}"

    async def ask(self, provider: Provider, prompt: str, params: Params,
                  reservation: float) -> Result:
        """One request, its tokens counted and its budget reservation settled."""
        summary = self.summary
        summary.requests += 1
        try:
            result: Result = await provider.complete(prompt, params)
        except ProviderError as exc:
            result = str(exc)
            summary.rate_limited += exc.rate_limited
            summary.requests -= not exc.sent
        if isinstance(result, Completion):
            summary.prompt_tokens += result.prompt_tokens
            summary.completion_tokens += result.completion_tokens
        if self.budget is not None:
            self.budget.settle(reservation, result if isinstance(result, Completion) else None)
        return result


def _followed_by(follow: Follow, results: list[RowResult]) -> list[RowJob | RowResult]:
    """What ``follow`` makes of each of ``results``, in their order."""
    return [item for result in results for item in follow(result)]


async def _stopped(tasks: set[asyncio.Future[None]]) -> None:
    """Cancel ``tasks`` and wait until each has ended (a Ctrl-C: they cannot outlive the
    provider they use)."""
    for task in list(tasks):
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
