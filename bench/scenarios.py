"""The scenarios of issues 4 and 15. Each runs promptbatch with no flags (what a user gets),
then hand-tuned, then its peers (the openai SDK + a semaphore, promptfoo), every client
against a fresh server with the same seed, so all see the same latencies and limits."""

from __future__ import annotations

import math
import os
import re
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import runner
from .data import fixed_prompt_chars, write_csv
from .servers import FakeServer, FakeSpec, LlmockServer, Server, ServerStats

NO_FLAGS = "promptbatch, no flags"
PEER_SECONDS = 25.0
"""A peer that keeps few requests in flight answers a share of the rows, sized to take about
this long at its concurrency: its rate is the same, and the benchmark stays under an hour."""


@dataclass
class Result:
    """One line of the results table (rates in rows per real second)."""

    scenario: str
    client: str
    rep: int
    rows: int
    time_scale: float
    rows_per_s: float
    ceiling: float | None
    ratio: float | None
    requests: int | None
    count_429: int | None
    failed: int | None
    p50: float | None
    p95: float | None
    peak_rss_mb: float
    queue_wait: float | None = None
    """Median wait in the server's queue, in the scenario's own (unscaled) seconds."""
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    load: str = field(default_factory=lambda: " ".join(f"{x:.2f}" for x in os.getloadavg()))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Scenario:
    name: str
    rows: int
    spec: FakeSpec | None
    """The fake server; None: llmock (S5)."""
    hand: int
    """The hand-tuned --concurrency."""
    what: str
    prompt_chars: int = 0
    max_tokens: int | None = None
    sdk_every_run: int | None = None
    """A peer run with ours every time, as the target's reference (S3: the SDK with 256)."""

    def mean_latency(self) -> float:
        """Expected real seconds of one answer (lognormal mean, time-scaled)."""
        spec = self.spec or FakeSpec(sigma=0.0)
        return spec.latency_median * math.exp(spec.sigma ** 2 / 2) / spec.time_scale

    def tokens_per_row(self) -> float:
        """What the fake's token bucket charges a row: prompt tokens plus max_tokens."""
        chars = max(self.prompt_chars, fixed_prompt_chars() + len("Keep it short."))
        return chars // 4 + 1 + (self.max_tokens or 15)

    def limit_rate(self, rows: int) -> float | None:
        """The provider's ceiling in real rows a second, where it publishes limits."""
        spec = self.spec
        if spec is None:
            return 3000 / 60
        rates = []
        if spec.rpm:
            rates.append(spec.rpm * spec.time_scale / 60)
        if spec.tpm:
            rates.append(spec.tpm * spec.time_scale / 60 / self.tokens_per_row())
        if spec.slots:
            rates.append(spec.slots / self.mean_latency())
        if not rates:
            return None
        rate = min(rates)
        if spec.change_after:
            after = spec.change_after[1] * spec.time_scale / 60
            half = rows / 2
            return rows / (half / rate + half / min(rate, after))
        return rate


class Bench:
    """Where one invocation works: a temp folder, one sub-folder per scenario and run."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _round(values: tuple[float | None, ...]) -> list[float | None]:
    return [None if v is None else round(v, 3) for v in values]


def recovery(stats: ServerStats, spec: FakeSpec) -> float | None:
    """Seconds (the scenario's own) from the limit's change until every later second's sends
    stay under the new limit (10% and one request of slack)."""
    if stats.changed_at is None or not spec.change_after:
        return None
    scale = spec.time_scale
    allowed = spec.change_after[1] / 60 * 1.1 + 1
    late = [(t - stats.changed_at) * scale for t in stats.arrivals if t >= stats.changed_at]
    if not late:
        return 0.0
    bins = [0] * (int(max(late)) + 1)
    for t in late:
        bins[int(t)] += 1
    over = [i for i, n in enumerate(bins[:-1]) if n > allowed]  # the last second is partial
    return float(over[-1] + 1) if over else 0.0


def sdk_name(concurrency: int | None) -> str:
    return f"openai SDK + semaphore {concurrency}"


class Clients:
    """The clients of one scenario run: each gets a fresh server and its own folder."""

    def __init__(self, b: Bench, scenario: Scenario, rep: int) -> None:
        self.scenario = scenario
        self.rep = rep
        self.work = b.folder(f"{scenario.name}-run{rep}")

    def book(self, rows: int) -> Path:
        path = self.work / f"book-{rows}.csv"
        if not path.exists():
            write_csv(path, rows, self.scenario.prompt_chars)
        return path

    def server(self, name: str, rows: int) -> Server:
        sc = self.scenario
        log = self.work / f"server-{name}.log"
        if sc.spec is None:
            return LlmockServer(log, latency_ms=800, rpm=3000, tpm=1_000_000)
        spec = sc.spec
        if spec.change_after:  # halfway through the rows this client answers
            spec = replace(spec, change_after=(rows // 2, spec.change_after[1]))
        return FakeServer(spec, log)

    def run(self, client: str, concurrency: int | None,
            go: Callable[[Path, str, int | None], runner.ClientRun]) -> Result:
        """One client on ``rows`` rows (fewer for a peer with few requests in flight, but
        never for the scenario's reference: a shorter run weighs its ramp and its last
        answers more, and the target compares the two)."""
        sc = self.scenario
        rows = sc.rows
        rate = sc.limit_rate(sc.rows)
        reference = sc.sdk_every_run is not None and client == sdk_name(sc.sdk_every_run)
        if concurrency is not None and not client.startswith("promptbatch") and not reference:
            own = concurrency / sc.mean_latency()
            if rate is None or own < rate:
                rows = min(rows, max(100, int(PEER_SECONDS * own)))
        book = self.book(rows)
        server = self.server(re.sub(r"\W+", "-", client), rows)
        try:
            run = go(book, server.url, concurrency)
            stats = server.stats()
        finally:
            server.stop()
        seconds = stats.span or run.seconds or run.wall
        achieved = min(rows, stats.ok) / seconds if seconds else 0.0  # failed rows don't count
        ceiling = sc.limit_rate(rows) or (sc.sdk_every_run or 256) / (stats.mean_latency or 1)
        scale = sc.spec.time_scale if sc.spec else 1.0
        waits = [w * scale for w in stats.queue_waits]
        failed = run.failed if run.failed is not None else max(0, rows - stats.ok)
        extra: dict[str, Any] = {"exit_code": run.code, "process_wall_s": round(run.wall, 2),
                                 "client_p50_p95": _round(run.latency[1:]),
                                 "server_answers": stats.ok}
        if sc.spec is not None and sc.spec.change_after:
            extra["recovered_s"] = recovery(stats, sc.spec)
        return Result(sc.name, client, self.rep, rows, scale, achieved, ceiling,
                      achieved / ceiling if ceiling else None, stats.requests, stats.count_429,
                      failed, stats.p50, stats.p95, run.peak_rss_mb,
                      statistics.median(waits) if waits else None, extra=extra)

    def ours(self, concurrency: int | None) -> Result:
        sc = self.scenario
        extra = ("--max-tokens", str(sc.max_tokens)) if sc.max_tokens else ()
        name = NO_FLAGS if concurrency is None else f"promptbatch -c {concurrency}"
        home = self.work / f"home-{concurrency}"

        def go(book: Path, url: str, c: int | None) -> runner.ClientRun:
            return runner.promptbatch(book, url, self.work / f"out-{c}.csv", home, self.work,
                                      concurrency=c, extra=extra)

        return self.run(name, concurrency, go)

    def sdk(self, concurrency: int) -> Result:
        def go(book: Path, url: str, c: int | None) -> runner.ClientRun:
            return runner.baseline(book, url, self.work, c or 8, self.scenario.max_tokens)

        return self.run(sdk_name(concurrency), concurrency, go)

    def promptfoo(self, concurrency: int | None) -> Result:
        def go(book: Path, url: str, c: int | None) -> runner.ClientRun:
            return runner.promptfoo(book, url, self.work, c, self.scenario.max_tokens)

        name = "promptfoo -j 64" if concurrency else "promptfoo, default -j (4)"
        return self.run(name, concurrency or 4, go)


def fake_scenario(scenario: Scenario) -> Callable[[Bench, int, bool], list[Result]]:
    """No flags, hand-tuned, then (with ``peers``) the SDK with 8 and 64 and promptfoo."""

    def run(b: Bench, rep: int, peers: bool) -> list[Result]:
        clients = Clients(b, scenario, rep)
        results = [clients.ours(None), clients.ours(scenario.hand)]
        if scenario.sdk_every_run and runner.has_openai():
            results.append(clients.sdk(scenario.sdk_every_run))
        if peers and runner.has_openai():
            results += [clients.sdk(8), clients.sdk(64)]
        if peers and runner.has_promptfoo():
            results += [clients.promptfoo(None), clients.promptfoo(64)]
        return results

    return run


S1 = Scenario("S1", 1200, FakeSpec(rpm=3000, tpm=1_000_000, time_scale=2), 64,
              "3,000 RPM, headers, lognormal latency (median 0.8 s)")
S2 = Scenario("S2", 800, FakeSpec(rpm=500, tpm=30_000, time_scale=20), 16,
              "token-bound: 30,000 TPM, 250 tokens a request, headers", prompt_chars=398,
              max_tokens=150)
S2H = Scenario("S2h", 400, FakeSpec(rpm=500, tpm=30_000, time_scale=20, headers=False), 64,
               "token-bound, no headers: only 429 + retry-after", prompt_chars=398,
               max_tokens=150)
S3 = Scenario("S3", 20_000, FakeSpec(), 256, "no limits, no headers, 20,000 rows",
              sdk_every_run=256)
S5 = Scenario("S5", 1000, None, 64, "llmock: 3,000 RPM, 0.8 s fixed latency")
S6 = Scenario("S6", 1000, FakeSpec(latency_median=0.2, sigma=0.0, slots=4, time_scale=2), 5,
              "saturating, no headers: 4 slots x 0.2 s, a queue beyond")
S7 = Scenario("S7", 800, FakeSpec(rpm=3000, tpm=1_000_000, time_scale=2,
                                  change_after=(400, 600)), 64,
              "3,000 RPM, then 600 RPM halfway (the headers say so)")
FAKE = {s.name: s for s in (S1, S2, S2H, S3, S5, S6, S7)}


def s4(b: Bench, rep: int, peers: bool) -> list[Result]:
    """100,000 rows, instant server: peak RSS of a cold run, then a rerun from the cache."""
    results = []
    for concurrency in (None, 32):
        work = b.folder(f"S4-{concurrency}")
        rows = 100_000
        book = write_csv(work / "book.csv", rows)
        server = FakeServer(FakeSpec(latency_median=0.0, sigma=0.0), work / "server.log")
        try:
            cold = runner.promptbatch(book, server.url, work / "out.csv", work / "home", work,
                                      concurrency=concurrency, probe=False)
            warm = runner.promptbatch(book, server.url, work / "rerun.csv", work / "home", work,
                                      concurrency=concurrency, probe=False)
            stats = server.stats()
        finally:
            server.stop()
        rerun_rate = rows / warm.wall
        extra = {
            "cold_rows_per_s": round(rows / cold.seconds, 1) if cold.seconds else None,
            "cold_peak_rss_mb": round(cold.peak_rss_mb, 1),
            "rerun_process_wall_s": round(warm.wall, 2), "rerun_from_cache": warm.cached,
            "rerun_peak_rss_mb": round(warm.peak_rss_mb, 1), "exit_codes": [cold.code, warm.code],
        }
        name = NO_FLAGS if concurrency is None else f"promptbatch -c {concurrency}"
        results.append(Result("S4", name, rep, rows, 1.0, rerun_rate, None, None,
                              stats.requests, stats.count_429, cold.failed, None, None,
                              max(cold.peak_rss_mb, warm.peak_rss_mb), extra=extra))
    return results


S8_ITEMS = ["a steel water bottle", "a wool blanket", "a desk lamp", "a leather wallet",
            "a garden hose", "a camping tent", "a coffee grinder", "a yoga mat", "a bike helmet",
            "a rain jacket", "a cast iron pan", "a phone stand", "a travel pillow",
            "a kitchen scale", "a bird feeder"]


def s8(b: Bench, rep: int, peers: bool) -> list[Result]:
    """The embedded model on this machine: 15 answers of 120 tokens, at the default and at
    --concurrency 1, 2 and 4, in a turned order from run to run."""
    work = b.folder(f"S8-run{rep}")
    book = work / "book.csv"
    book.write_text("id,name,city,topic,notes\n" + "".join(
        f'{i},"{item}",here,description,"Use at least 200 words."\n'
        for i, item in enumerate(S8_ITEMS)))
    results = []
    settings: list[int | None] = [None, 1, 2, 4]
    turn = (rep - 1) % len(settings)  # another goes first in each run: the first one also
    for concurrency in settings[turn:] + settings[:turn]:  # warms the model file's pages
        home = work / f"home-{concurrency}"
        run = runner.promptbatch(book, None, work / f"out-{concurrency}.csv", home, work,
                                 concurrency=concurrency,
                                 extra=("--max-tokens", "120", "--temperature", "0"))
        seconds = run.seconds or run.wall
        name = NO_FLAGS if concurrency is None else f"promptbatch -c {concurrency}"
        results.append(Result("S8", name, rep, len(S8_ITEMS), 1.0, len(S8_ITEMS) / seconds,
                              None, None, run.requests, 0, run.failed, None, None,
                              run.peak_rss_mb, extra={"seconds": seconds, "exit_code": run.code}))
    return results


SCENARIOS: dict[str, Callable[[Bench, int, bool], list[Result]]] = {
    **{name: fake_scenario(s) for name, s in FAKE.items()}, "S4": s4, "S8": s8,
}
ORDER = ["S1", "S2", "S2h", "S3", "S4", "S5", "S6", "S7", "S8"]
ONCE = {"S4"}
"""Run once, not repeated: a memory and cache check, not a rate."""
