"""The five scenarios of issue 4: what each runs, its ceiling and its target."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import runner
from .data import write_csv
from .servers import FakeServer, FakeSpec, LlmockServer, Server, ServerStats


@dataclass
class Result:
    """One line of the results table (rates in rows per real second)."""

    scenario: str
    rows: int
    concurrency: int
    time_scale: float
    rows_per_s: float
    ceiling: float | None
    ratio: float | None
    requests: int | None
    count_429: int | None
    retries: int | None
    p50: float | None
    p95: float | None
    latency_from: str
    peak_rss_mb: float
    target: str
    passed: bool
    when: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %Z"))
    load: str = field(default_factory=lambda: " ".join(f"{x:.2f}" for x in os.getloadavg()))
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def ceiling(concurrency: int, latency: float | None, rpm: float | None = None,
            tpm: float | None = None, tokens_per_row: float | None = None) -> float | None:
    """min(C / E[latency], RPM / 60, TPM / (60 x tokens per row)), in rows per second."""
    bounds = [concurrency / latency] if latency else []
    if rpm:
        bounds.append(rpm / 60)
    if tpm and tokens_per_row:
        bounds.append(tpm / (60 * tokens_per_row))
    return min(bounds) if bounds else None


def _tokens(text: str) -> tuple[int, int]:
    match = re.search(r"tokens\s+│?\s*([\d,]+) in, ([\d,]+) out", text)
    if not match:
        return 0, 0
    return int(match.group(1).replace(",", "")), int(match.group(2).replace(",", ""))


class Bench:
    """Where one invocation works: a temp folder, one sub-folder per scenario."""

    def __init__(self, work: Path) -> None:
        self.work = work

    def folder(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path


def _with(server: Server, body: Callable[[Server], Result]) -> Result:
    try:
        return body(server)
    finally:
        server.stop()


def limited(b: Bench, name: str, spec: FakeSpec | None, *, rows: int, concurrency: int,
            prompt_chars: int = 0, max_tokens: int | None = None, max_429: float | None = None,
            llmock_latency_ms: int = 800) -> Result:
    """S1, S2 and S5: a rate-limited server, one cold run; ``spec`` None means llmock."""
    work = b.folder(name)
    book = write_csv(work / "book.csv", rows, prompt_chars)
    rpm = spec.rpm if spec else 3000
    tpm = spec.tpm if spec else 1_000_000
    scale = spec.time_scale if spec else 1.0
    server: Server = (FakeServer(spec, work / "server.log") if spec else
                      LlmockServer(work / "server.log", latency_ms=llmock_latency_ms,
                                   rpm=rpm or 0, tpm=tpm or 0))
    extra = ("--max-tokens", str(max_tokens)) if max_tokens else ()

    def body(server: Server) -> Result:
        run = runner.promptbatch(book, server.url, work / "out.csv", work / "home", work,
                                 concurrency=concurrency, extra=extra)
        stats = server.stats()
        verdict = server.verdict() if isinstance(server, LlmockServer) else None
        tokens_in, tokens_out = _tokens(run.output)
        answered = max(1, run.answered or 0)
        per_row = tokens_in / answered + (max_tokens if max_tokens else tokens_out / answered)
        real = _real_ceiling(concurrency, stats, rpm, tpm, per_row, scale)
        achieved = rows / run.seconds if run.seconds else 0.0
        ratio = achieved / real if real else None
        share = (stats.count_429 / stats.requests) if stats.requests else 0.0
        passed = run.code == 0 and ratio is not None and ratio >= 0.90
        target = ">= 0.90 of ceiling"
        if max_429 is not None:
            passed = passed and share <= max_429
            target += f", 429s <= {max_429:.0%} of requests"
        extra_info: dict[str, Any] = {
            "tokens_per_row": round(per_row, 1), "429_share": round(share, 4),
            "server_requests": stats.requests, "client_requests": run.requests,
            "process_wall_s": round(run.wall, 2), "exit_code": run.code,
            "client_p50_p95": _round(run.latency[1:]), "rpm": rpm, "tpm": tpm,
            "sent_per_s_by_5s": runner.ramp(run.starts),
        }
        if verdict is not None:
            extra_info["llmock_verdict"] = _short_verdict(verdict)
        return Result(name, rows, concurrency, scale, achieved, real, ratio, stats.requests,
                      stats.count_429, run.retries, stats.p50, stats.p95, "server",
                      run.peak_rss_mb, target, passed, extra=extra_info)

    return _with(server, body)


def _real_ceiling(concurrency: int, stats: ServerStats, rpm: int | None, tpm: int | None,
                  per_row: float, scale: float) -> float | None:
    """The ceiling in real rows/s: simulated limits and latencies sped up by ``scale``."""
    latency = stats.mean_latency
    return ceiling(concurrency, latency, rpm * scale if rpm else None,
                   tpm * scale if tpm else None, per_row)


def _round(values: tuple[float | None, ...]) -> list[float | None]:
    return [None if v is None else round(v, 3) for v in values]


def _short_verdict(verdict: dict[str, Any]) -> dict[str, Any]:
    findings = verdict.get("findings", [])
    codes: dict[str, int] = {}
    for finding in findings:
        codes[finding["code"]] = codes.get(finding["code"], 0) + 1
    short = {k: verdict.get(k) for k in ("passed", "calls", "attempts", "faults_injected",
                                          "errors", "warnings")}
    short["finding_codes"] = codes
    if findings:
        short["first_finding"] = findings[0]
    return short


def s1(b: Bench) -> list[Result]:
    spec = FakeSpec(rpm=3000, tpm=1_000_000)
    return [limited(b, "S1", spec, rows=2000, concurrency=64, max_429=0.02)]


def s2(b: Bench) -> list[Result]:
    # 398-char prompts are 100 prompt tokens; with max_tokens 150 a request costs 250.
    spec = FakeSpec(rpm=500, tpm=30_000, time_scale=10)
    return [limited(b, "S2", spec, rows=2000, concurrency=16, prompt_chars=398,
                    max_tokens=150)]


def s5(b: Bench) -> list[Result]:
    return [limited(b, "S5", None, rows=2000, concurrency=64, max_429=0.02)]


def s3(b: Bench) -> list[Result]:
    """No limits, concurrency 256: the product against C/E[latency] and the SDK baseline.

    Each client gets a fresh server with the same seed, so both see the same latencies."""
    results = []
    for rows in (2000, 20_000):
        name = f"S3-{rows // 1000}k"
        work = b.folder(name)
        book = write_csv(work / "book.csv", rows)
        base: Result | None = None
        if runner.has_openai():
            server = FakeServer(FakeSpec(), work / "server-baseline.log")
            try:
                base = _baseline(server, book, work)
            finally:
                server.stop()
        server = FakeServer(FakeSpec(), work / "server.log")
        try:
            results.append(_s3_product(server, book, work, name, rows, base))
        finally:
            server.stop()
    return results


def _baseline(server: Server, book: Path, work: Path) -> Result:
    run = runner.baseline(book, server.url, work, 256)
    stats = server.stats()
    achieved = (run.answered or 0) / run.seconds if run.seconds else 0.0
    real = ceiling(256, stats.mean_latency)
    return Result("baseline", stats.ok, 256, 1.0, achieved, real,
                  achieved / real if real else None, stats.requests, stats.count_429, None,
                  stats.p50, stats.p95, "server", run.peak_rss_mb, "", run.code == 0,
                  extra={"client_p50_p95": _round(run.latency[1:]),
                         "process_wall_s": round(run.wall, 2),
                         "sent_per_s_by_5s": runner.ramp(run.starts)})


def _s3_product(server: Server, book: Path, work: Path, name: str, rows: int,
                base: Result | None) -> Result:
    run = runner.promptbatch(book, server.url, work / "out.csv", work / "home", work,
                             concurrency=256)
    stats = server.stats()
    achieved = rows / run.seconds if run.seconds else 0.0
    real = ceiling(256, stats.mean_latency)
    ratio = achieved / real if real else None
    vs = achieved / base.rows_per_s if base and base.rows_per_s else None
    passed = run.code == 0 and ratio is not None and ratio >= 0.85 and (vs or 0) >= 1.0
    extra: dict[str, Any] = {
        "client_p50_p95": _round(run.latency[1:]), "process_wall_s": round(run.wall, 2),
        "vs_baseline": None if vs is None else round(vs, 3), "exit_code": run.code,
        "sent_per_s_by_5s": runner.ramp(run.starts),
    }
    if base is not None:
        extra["baseline"] = base.to_dict()
    target = ">= 0.85 of C/E[lat], >= 1.0x openai SDK baseline"
    if base is None:
        target += " (baseline not run: pip install openai)"
    return Result(name, rows, 256, 1.0, achieved, real, ratio, stats.requests, stats.count_429,
                  run.retries, stats.p50, stats.p95, "server", run.peak_rss_mb, target, passed,
                  extra=extra)


def s4(b: Bench) -> list[Result]:
    """100,000 rows, instant server: peak RSS of a cold run, then a rerun from the cache."""
    work = b.folder("S4")
    rows = 100_000
    book = write_csv(work / "book.csv", rows)
    server = FakeServer(FakeSpec(latency_median=0.0, sigma=0.0), work / "server.log")

    def body(server: Server) -> Result:
        cold = runner.promptbatch(book, server.url, work / "out.csv", work / "home", work,
                                  concurrency=32, probe=False)
        warm = runner.promptbatch(book, server.url, work / "rerun.csv", work / "home", work,
                                  concurrency=32, probe=False)
        stats = server.stats()
        rerun_rate = rows / warm.wall
        engine_rate = rows / warm.seconds if warm.seconds else None
        rss = max(cold.peak_rss_mb, warm.peak_rss_mb)
        passed = (cold.code == 0 and warm.code == 0 and rss <= 400 and rerun_rate >= 20_000
                  and warm.cached == rows)
        extra = {
            "cold_rows_per_s": round(rows / cold.seconds, 1) if cold.seconds else None,
            "cold_process_wall_s": round(cold.wall, 2), "cold_peak_rss_mb": cold.peak_rss_mb,
            "rerun_process_wall_s": round(warm.wall, 2), "rerun_cli_wall_s": warm.seconds,
            "rerun_rows_per_s_end_to_end": round(rerun_rate, 1),
            "rerun_rows_per_s_engine": None if engine_rate is None else round(engine_rate, 1),
            "rerun_peak_rss_mb": warm.peak_rss_mb, "rerun_from_cache": warm.cached,
            "server_requests_total": stats.requests,
        }
        return Result("S4", rows, 32, 1.0, rerun_rate, None, None, stats.requests,
                      stats.count_429, cold.retries, None, None, "-", rss,
                      "peak RSS <= 400 MB, rerun from cache >= 20,000 rows/s (end to end)",
                      passed, extra=extra)

    return [_with(server, body)]


SCENARIOS: dict[str, Callable[[Bench], list[Result]]] = {
    "S1": s1, "S2": s2, "S3": s3, "S4": s4, "S5": s5,
}
