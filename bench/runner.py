"""Run one client in its own process and measure it from outside: wall time, peak RSS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .data import TEMPLATE
from .servers import ROOT, quantiles

PY = sys.executable


@dataclass
class ClientRun:
    """One client process: its exit code, timings, memory and what it printed."""

    code: int
    wall: float
    """Seconds from process start to exit, as seen from outside."""
    peak_rss_mb: float
    output: str
    seconds: float | None = None
    """The run's own time: the CLI summary's ``wall time`` (or the baseline's gather time)."""
    requests: int | None = None
    retries: int | None = None
    answered: int | None = None
    cached: int | None = None
    failed: int | None = None
    latencies: list[float] = field(default_factory=list)
    starts: list[float] = field(default_factory=list)
    """When each request started, in seconds from the first (``bench.probe`` runs only)."""

    @property
    def latency(self) -> tuple[float | None, float | None, float | None]:
        return quantiles(self.latencies)


PEER_TIMEOUT = 240.0
"""Seconds a peer may take: promptfoo backs off from 429s for minutes at a time."""


def spawn(cmd: list[str], home: Path, log: Path, latency_file: Path | None,
          timeout: float | None = None) -> ClientRun:
    """Run ``cmd`` with PROMPTBATCH_HOME=home; peak RSS of that process alone via wait4. One
    still running after ``timeout`` seconds is killed (exit code -9)."""
    env = {**os.environ, "PROMPTBATCH_HOME": str(home), "PROMPTBATCH_CONFIG":
           str(home / "config.toml"), "NO_COLOR": "1", "COLUMNS": "200"}
    for name in ("PROMPTBATCH_MODEL", "PROMPTBATCH_BASE_URL", "PROMPTBATCH_CONCURRENCY"):
        env.pop(name, None)
    home.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        timer = threading.Timer(timeout, proc.kill) if timeout else None
        if timer is not None:
            timer.start()
        _, status, usage = os.wait4(proc.pid, 0)
        if timer is not None:
            timer.cancel()
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    run = ClientRun(proc.returncode, wall, usage.ru_maxrss / 1024, text)
    if latency_file is not None and latency_file.exists():
        for item in json.loads(latency_file.read_text()):
            if isinstance(item, list):
                run.starts.append(item[0])
                run.latencies.append(item[1])
            else:
                run.latencies.append(item)
    return run


def ramp(starts: list[float], step: float = 5.0) -> list[float]:
    """Requests started per second in each ``step``-second slice of the run."""
    if not starts:
        return []
    counts = [0] * (int(max(starts) // step) + 1)
    for start in starts:
        counts[int(start // step)] += 1
    return [round(c / step, 1) for c in counts]


def _number(pattern: str, text: str) -> float | None:
    match = re.search(pattern, text)
    return float(match.group(1).replace(",", "")) if match else None


def promptbatch(book: Path, url: str | None, out: Path, home: Path, work: Path, *,
                concurrency: int | None, extra: tuple[str, ...] = (),
                probe: bool = True) -> ClientRun:
    """``promptbatch run BOOK --model openai-compatible:bench --base-url URL ...`` (no
    ``--concurrency`` when it is None: what a user gets with no flags; no URL: the embedded
    model).

    With ``probe`` it runs through ``bench.probe`` (the same CLI, each request timed)."""
    model = ["--model", "openai-compatible:bench", "--base-url", url] if url else []
    limit = ["--concurrency", str(concurrency)] if concurrency else []
    args = ["run", str(book), *model, "--template", TEMPLATE, *limit, "-o", str(out), *extra]
    lat = work / f"{out.stem}.latency.json"
    if probe:
        cmd = [PY, "-m", "bench.probe", str(lat), "--", *args]
    else:
        cmd = [str(Path(PY).parent / "promptbatch"), *args]
    run = spawn(cmd, home, work / f"{out.stem}.log", lat if probe else None)
    text = run.output
    run.seconds = _number(r"wall time\s+│?\s*([\d.,]+) s", text)
    run.requests = _int(_number(r"requests\s+│?\s*([\d,]+) \(", text))
    run.retries = _int(_number(r"\(([\d,]+) retries\)", text))
    run.answered = _int(_number(r"rows answered\s+│?\s*([\d,]+)", text))
    run.cached = _int(_number(r"from cache\s+│?\s*([\d,]+)", text))
    run.failed = _int(_number(r"failed\s+│?\s*([\d,]+)", text))
    return run


def _int(value: float | None) -> int | None:
    return None if value is None else int(value)


def baseline(book: Path, url: str, work: Path, concurrency: int,
             max_tokens: int | None = None) -> ClientRun:
    """The ``openai`` SDK + a semaphore (bench/baseline.py) in its own process."""
    lat = work / f"sdk-{concurrency}.latency.json"
    cmd = [PY, "-m", "bench.baseline", str(book), url, str(concurrency), str(lat),
           str(max_tokens or 0)]
    run = spawn(cmd, work / "baseline-home", work / f"sdk-{concurrency}.log", lat, PEER_TIMEOUT)
    for line in run.output.splitlines():
        if line.startswith("{"):
            data = json.loads(line)
            run.seconds = float(data["seconds"])
            run.answered = int(data["ok"])
            run.failed = int(data["failed"])
    return run


def has_openai() -> bool:
    """Whether the baseline's SDK is installed (it is not a project dependency)."""
    import importlib.util

    return importlib.util.find_spec("openai") is not None


PROMPTFOO = ROOT / "bench" / "promptfoo" / "node_modules" / ".bin" / "promptfoo"
"""Installed by ``make bench`` from bench/promptfoo/package.json (an exact pin)."""


def has_promptfoo() -> bool:
    return PROMPTFOO.exists()


def promptfoo(book: Path, url: str, work: Path, concurrency: int | None,
              max_tokens: int | None = None) -> ClientRun:
    """``promptfoo eval`` of the same rows and template, with its default ``-j`` (None) or
    ``-j N``; its cache, result database and telemetry off."""
    name = f"promptfoo-{concurrency or 'default'}"
    config = work / f"{name}.yaml"
    options = [f"      max_tokens: {max_tokens}"] if max_tokens else []
    config.write_text("\n".join([
        "prompts:", f"  - {json.dumps(TEMPLATE)}", "providers:", "  - id: openai:chat:bench",
        "    config:", f"      apiBaseUrl: {url}", "      apiKey: x", *options,
        f"tests: file://{book}", ""]))
    jobs = ["-j", str(concurrency)] if concurrency else []
    cmd = [str(PROMPTFOO), "eval", "-c", str(config), "--no-cache", "--no-write",
           "--no-progress-bar", "--no-table", *jobs, "-o", str(work / f"{name}.json")]
    home = work / "promptfoo-home"
    os.environ.update({"PROMPTFOO_DISABLE_TELEMETRY": "1", "PROMPTFOO_DISABLE_UPDATE": "1",
                       "PROMPTFOO_CACHE_ENABLED": "false",
                       "PROMPTFOO_CONFIG_DIR": str(home / "config")})
    run = spawn(cmd, home, work / f"{name}.log", None, PEER_TIMEOUT)
    out = work / f"{name}.json"
    if out.exists():
        stats = json.loads(out.read_text()).get("results", {}).get("stats", {})
        run.answered = int(stats.get("successes", 0)) + int(stats.get("failures", 0))
        run.failed = int(stats.get("errors", 0))
    return run
