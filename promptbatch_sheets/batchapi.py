"""A sheet through a provider's Batch API: submit what the cache lacks, collect it later.

Half the realtime price, answers within a day. Each request's custom_id is its answer key, so
results land in the answer cache in any order, and the sheet is then written by an ordinary
``runner.run`` that finds every answer cached and makes no request. The journal, in the same
store file, remembers jobs and their keys: a collect works after a restart or on another
machine, and a rerun never sends a key that is already on its way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import closing
from dataclasses import dataclass, replace

from . import runner
from .chain import Chain
from .engine import RowResult, Summary, fits
from .errors import BatchError, ConfigError, SchemaMismatch
from .estimate import BATCH_DISCOUNT, request_chars
from .plan import RowJob
from .providers import Completion, ModelSpec, open_batch_api, require_batch_api
from .providers.batchapi import BatchAPI, split
from .runner import Prepared
from .schema import Schema
from .store import Store
from .store.journal import Job, Journal
from .surfaces.base import Surface

SAVE_EVERY = 500
"""Answers stored per transaction while a results file streams in."""
TIMEOUT = 120.0
"""Seconds to wait on one Batch API call when no run settings say otherwise."""
STRAY_LINES = 1000
"""Lines a results file may hold for requests the job never sent, beyond one per request."""
STRAYED = ("its results file went on with lines for requests this job never sent; reading "
           "stopped before this request's line")


@dataclass(frozen=True)
class Collected:
    """What a collect wrote into the sheet, and what is still to come."""

    summary: Summary
    """The sheet write: ``cached`` rows answered, ``failed`` rows given #ERROR cells."""
    waiting: int
    """Rows whose answer is in a job still running; their cells are left as they were."""
    unsent: int
    """Rows whose prompt no job holds and the cache cannot answer."""
    jobs: list[Job]
    """The jobs holding this sheet's prompts, oldest first."""


def submit(prepared: Prepared, store: Store) -> list[Job]:
    """Send the distinct prompts neither cached nor already in a running job; returns the new
    jobs (none when there is nothing to send), split at the provider's limits."""
    check(prepared, store)
    keyed = {key: job for job, key in _keyed(prepared, store)}
    journal = Journal(store)
    cached = store.get_many(keyed)
    busy = journal.in_flight(keyed)
    todo = {k: j for k, j in keyed.items() if k not in cached and k not in busy}
    if not todo:
        return []
    _check_budget(prepared, store, list(todo.values()))
    spec = prepared.spec
    jobs: list[Job] = []
    with closing(_open(spec, prepared.settings.timeout)) as api:
        requests = [(key, api.encode(key, j.prompt, prepared.request_params(j)))
                    for key, j in todo.items()]
        for chunk in split(requests, api.max_requests, api.max_bytes):
            keys = [key for key, _ in chunk]
            batch_id = api.create([line for _, line in chunk])
            cost = runner.forecast(prepared, store, [todo[k] for k in keys]).batch_cost_usd
            job = Job(batch_id, spec.provider, spec.label, spec.base_url or "", time.time(),
                      "submitted", len(keys), {}, cost)
            journal.add(job, {k: request_chars(todo[k].prompt,
                                               prepared.request_params(todo[k]).system)
                              for k in keys})
            jobs.append(job)
    return jobs


def collect(prepared: Prepared, surface: Surface, store: Store) -> Collected:
    """Poll this sheet's running jobs, store every finished answer, then write the sheet:
    answers where they came, #ERROR cells where a request failed, nothing where one waits."""
    check(prepared, store)
    surface.ready()
    _refresh(Journal(store).jobs(_keys(prepared, store)), store, _schemas(prepared, store))
    return _write(prepared, surface, store)


def submit_and_collect(prepared: Prepared, surface: Surface,
                       store: Store) -> tuple[list[Job], Collected]:
    """``run --via batch``: collect what is done, send what is missing, write the sheet."""
    check(prepared, store)
    surface.ready()  # before paying: the answers must have somewhere to go
    _refresh(Journal(store).jobs(_keys(prepared, store)), store, _schemas(prepared, store))
    jobs = submit(prepared, store)
    return jobs, _write(prepared, surface, store)


def status(store: Store, prepared: Prepared | None = None) -> list[Job]:
    """Every job (or those holding the sheet's prompts), the running ones polled first."""
    journal = Journal(store)
    keys = _keys(prepared, store) if prepared is not None else None
    _refresh(journal.jobs(keys), store, None)
    return journal.jobs(keys)


def check(prepared: Prepared, store: Store) -> None:
    """Refuse what a batch cannot do, naming the fix, before any call."""
    try:
        require_batch_api(prepared.spec)
    except ConfigError as exc:
        models = sorted({job.model for job in Journal(store).jobs()})
        hint = f" The journal holds batch jobs for: {', '.join(models)}." if models else ""
        raise ConfigError(f"{exc}{hint}") from None
    if not prepared.settings.use_cache:
        raise ConfigError("--no-cache does not combine with --via batch: a batch's answers "
                          "reach the sheet through the cache. Leave out --no-cache.")


def _keys(prepared: Prepared, store: Store) -> list[str]:
    return [key for _, key in _keyed(prepared, store)]


def _keyed(prepared: Prepared, store: Store) -> list[tuple[RowJob, str]]:
    """The sheet's prompts and their answer keys: the ones ready now, and the later prompt
    columns of rows whose answers they use are already cached (a chain moves one column
    further with each batch)."""
    plan, schemas = prepared.plan, prepared.schemas
    chain = Chain(plan, prepared.data.grid) if plan.waiting else None
    keyed: list[tuple[RowJob, str]] = []
    todo = list(plan.jobs)
    while todo:
        found = [(job, prepared.key(job)) for job in todo]
        keyed += found
        todo = []
        if chain is None:
            break
        hits = store.get_many(key for _, key in found)
        for job, key in found:
            answer = hits.get(key)
            if answer is None or (job.step in schemas and not fits(schemas[job.step],
                                                                   answer.text)):
                continue
            done = RowResult(job.row, answer.text, True, True, answer, job.step)
            todo += [item for item in chain(done) if isinstance(item, RowJob)]
    return keyed


def _schemas(prepared: Prepared, store: Store) -> dict[str, Schema]:
    """The schema each structured prompt's answer must fit, by answer key."""
    schemas = prepared.schemas
    return {key: schemas[job.step] for job, key in _keyed(prepared, store)
            if job.step in schemas}


def _open(spec: ModelSpec, timeout: float = TIMEOUT) -> BatchAPI:
    return open_batch_api(spec, runner.api_key_for(spec), timeout)


def _check_budget(prepared: Prepared, store: Store, jobs: list[RowJob]) -> None:
    """A batch is sent whole, so --budget must cover its worst case before it goes."""
    limit = prepared.settings.budget
    if limit is None:
        return
    runner.make_budget(prepared)  # refuses a model with no known price
    worst = (runner.forecast(prepared, store, jobs).cost_max_usd or 0.0) * BATCH_DISCOUNT
    if worst > limit:
        raise ConfigError(f"--budget ${limit:,.4f} is less than this batch could cost "
                          f"(${worst:,.4f} at batch price if every answer reaches its "
                          "maximum length). Nothing was sent. Raise --budget, lower "
                          "--max-tokens, or send fewer rows.")


def _refresh(jobs: Iterable[Job], store: Store, download: dict[str, Schema] | None) -> None:
    """Poll the jobs not yet collected; with ``download`` (the schemas structured answers
    must fit, by key), collect those that have ended."""
    journal = Journal(store)
    for job in jobs:
        if not job.open:
            continue
        with closing(_open(ModelSpec.parse(job.model_name, job.base_url))) as api:
            try:
                remote = api.poll(job.id)
            except BatchError as exc:
                if exc.status != 404:
                    raise
                _forget(journal, job, f"the provider no longer has batch {job.id}")
                continue
            if download is None or not remote.ended:
                journal.update(job.id, remote.status, remote.counts)
                continue
            chars = journal.prompt_chars(job.id)
            failures, seen = _download(api.results(remote), job.model, chars, store, download)
            missing = remote.error or f"the batch ended ({remote.status}) with no result for it"
            failures.update({key: missing for key in chars if key not in seen})
            journal.finish(job.id, remote.status, remote.counts, remote.error, failures)


def _forget(journal: Journal, job: Job, reason: str) -> None:
    """A batch the server does not know will never answer: close it, so its keys are
    sent again rather than waited for forever."""
    failures = dict.fromkeys(journal.prompt_chars(job.id), reason)
    journal.finish(job.id, "gone", job.counts, reason, failures)


def _download(results: Iterable[tuple[str, Completion | str]], model: str,
              chars: dict[str, int], store: Store,
              schemas: dict[str, Schema]) -> tuple[dict[str, str], set[str]]:
    """Store the answers as they stream in; return why requests failed, and the keys seen.
    A structured answer that does not fit its schema fails (a realtime rerun repairs it).

    Only lines for this job's requests count, the first for each: reading stops once every
    request has its line, or once the file has given more lines that answer nothing (stray
    or repeated) than the job has requests, so a results file that never ends cannot hold
    a collect (the requests left are failed: a rerun sends them again)."""
    failures: dict[str, str] = {}
    seen: set[str] = set()
    answers: list[tuple[str, Completion, int | None]] = []
    strays = 0
    for key, outcome in results:
        if key not in chars or key in seen:  # never trust a stray line
            strays += 1
            if strays > len(chars) + STRAY_LINES:
                failures.update(dict.fromkeys(set(chars) - seen, STRAYED))
                seen.update(chars)
                break
            continue
        seen.add(key)
        if isinstance(outcome, Completion) and key in schemas:
            outcome = _fitting(schemas[key], outcome)
        if isinstance(outcome, str):
            failures[key] = outcome
            continue
        answers.append((key, outcome, chars[key]))
        if len(answers) >= SAVE_EVERY:
            store.put_many(model, answers)
            answers = []
        if len(seen) == len(chars):
            break
    store.put_many(model, answers)
    return failures, seen


def _fitting(schema: Schema, answer: Completion) -> Completion | str:
    try:
        schema.check(answer.text)
    except SchemaMismatch as exc:
        return f"the reply did not fit the fields: {exc.reason}"
    return answer


def _write(prepared: Prepared, surface: Surface, store: Store) -> Collected:
    """The sheet from the cache and the journal, through ``runner.run`` with only the rows
    the cache answers: it makes no request. Failed prompts become refused rows."""
    keyed = _keyed(prepared, store)
    keys = [key for _, key in keyed]
    journal = Journal(store)
    cached = store.get_many(keys)
    in_flight = journal.in_flight(keys)
    failures = journal.failures(keys)
    ready: list[RowJob] = []
    refused = list(prepared.plan.refused)
    waiting = unsent = 0
    for job, key in keyed:
        if key in cached:
            ready.append(job)
        elif key in in_flight:
            waiting += 1
        elif key in failures:
            refused.append((job.row, job.step, f"Batch API: {failures[key]}"))
        else:
            unsent += 1
    # a later prompt column waits for the next run: it is sent once these answers are in
    plan = replace(prepared.plan, jobs=ready, refused=refused, waiting={}, known={})
    settings = replace(prepared.settings, use_cache=True, budget=None)
    summary = runner.run(replace(prepared, plan=plan, settings=settings), surface, store)
    return Collected(summary, waiting, unsent, journal.jobs(keys))
