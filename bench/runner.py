"""Run one client in its own process and measure it from outside: wall time, peak RSS."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
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


def spawn(cmd: list[str], home: Path, log: Path, latency_file: Path | None) -> ClientRun:
    """Run ``cmd`` with PROMPTBATCH_HOME=home; peak RSS of that process alone via wait4."""
    env = {**os.environ, "PROMPTBATCH_HOME": str(home), "PROMPTBATCH_CONFIG":
           str(home / "config.toml"), "NO_COLOR": "1", "COLUMNS": "200"}
    for name in ("PROMPTBATCH_MODEL", "PROMPTBATCH_BASE_URL", "PROMPTBATCH_CONCURRENCY"):
        env.pop(name, None)
    home.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
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


def promptbatch(book: Path, url: str, out: Path, home: Path, work: Path, *, concurrency: int,
                extra: tuple[str, ...] = (), probe: bool = True) -> ClientRun:
    """``promptbatch run BOOK --model openai-compatible:bench --base-url URL ...``.

    With ``probe`` it runs through ``bench.probe`` (the same CLI, each request timed)."""
    args = ["run", str(book), "--model", "openai-compatible:bench", "--base-url", url,
            "--template", TEMPLATE, "--concurrency", str(concurrency), "-o", str(out), *extra]
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


def baseline(book: Path, url: str, work: Path, concurrency: int) -> ClientRun:
    """The ``openai`` SDK baseline (bench/baseline.py) in its own process."""
    lat = work / "baseline.latency.json"
    cmd = [PY, "-m", "bench.baseline", str(book), url, str(concurrency), str(lat)]
    run = spawn(cmd, work / "baseline-home", work / "baseline.log", lat)
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
