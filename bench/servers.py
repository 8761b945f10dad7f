"""The servers under the benchmark, each in its own process: our fake and llmock."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class FakeSpec:
    """Options of ``python -m tests.fakes.llm_server``."""

    latency_median: float = 0.8
    sigma: float = 0.5
    rpm: int | None = None
    tpm: int | None = None
    time_scale: float = 1.0
    seed: int = 1
    slots: int | None = None
    change_after: tuple[int, int] | None = None
    """(answers, rpm): the request limit from then on."""
    headers: bool = True


@dataclass
class ServerStats:
    """What the server saw: answers, 429s, all requests, latency in real seconds."""

    ok: int
    count_429: int
    requests: int
    mean_latency: float | None
    p50: float | None
    p95: float | None
    span: float | None = None
    """Real seconds from the first request's arrival to the last answer: the client's time,
    measured the same way for every client."""
    arrivals: list[float] = field(default_factory=list)
    queue_waits: list[float] = field(default_factory=list)
    changed_at: float | None = None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def quantiles(values: list[float]) -> tuple[float | None, float | None, float | None]:
    """Mean, p50 and p95 of ``values`` (None when empty)."""
    if not values:
        return None, None, None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return statistics.fmean(ordered), statistics.median(ordered), p95


class Server:
    """A server subprocess; ``url`` is its OpenAI base URL (``.../v1``)."""

    def __init__(self, command: list[str], root: str, log: Path) -> None:
        self.root = root
        self.url = f"{root}/v1"
        self._log = log.open("w")
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True,
                                     env={**os.environ, "NO_COLOR": "1"})

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def stats(self) -> ServerStats:
        raise NotImplementedError


class FakeServer(Server):
    """``tests/fakes/llm_server.py`` through its CLI; counts come from ``GET /_fake/stats``."""

    def __init__(self, spec: FakeSpec, log: Path) -> None:
        cmd = [sys.executable, "-m", "tests.fakes.llm_server", "--port", "0",
               "--latency-median", str(spec.latency_median), "--sigma", str(spec.sigma),
               "--seed", str(spec.seed), "--time-scale", str(spec.time_scale),
               "--scale-ratelimit-headers"]
        if spec.rpm:
            cmd += ["--rpm", str(spec.rpm)]
        if spec.tpm:
            cmd += ["--tpm", str(spec.tpm)]
        if spec.slots:
            cmd += ["--slots", str(spec.slots)]
        if spec.change_after:
            cmd += ["--change-after", str(spec.change_after[0]),
                    "--rpm-after", str(spec.change_after[1])]
        if not spec.headers:
            cmd += ["--no-ratelimit-headers"]
        self.spec = spec
        super().__init__(cmd, "", log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http"):
            self.stop()
            raise RuntimeError(f"fake LLM server did not start: {log.read_text()[-500:]}")
        self.url = line
        self.root = line.removesuffix("/v1")

    def stats(self) -> ServerStats:
        data: dict[str, Any] = httpx.get(f"{self.root}/_fake/stats", timeout=30).json()
        scale = float(data["time_scale"])
        mean, p50, p95 = quantiles([d / scale for d in data["latencies"]])
        arrivals, finishes = data["arrivals"], data["finishes"]
        span = max(finishes) - min(arrivals) if finishes and arrivals else None
        return ServerStats(data["count_ok"], data["count_429"], data["requests"], mean, p50,
                           p95, span, arrivals, data["queue_waits"], data["changed_at"])


class LlmockServer(Server):
    """llmock (PyPI) serving OpenAI's API with a fixed latency and RPM/TPM buckets."""

    def __init__(self, log: Path, *, latency_ms: int, rpm: int, tpm: int) -> None:
        port = free_port()
        cmd = [str(BIN / "llmock"), "serve", "--host", "127.0.0.1", "--port", str(port),
               "--log-level", "warning", "--response-style", "echo",
               "--latency-ms", str(latency_ms), "--rpm", str(rpm), "--tpm", str(tpm)]
        super().__init__(cmd, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{self.root}/_llmock/scenario", timeout=1)
                return
            except httpx.TransportError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()
                    raise RuntimeError("llmock did not start") from None
                time.sleep(0.1)

    def stats(self) -> ServerStats:
        data = httpx.get(f"{self.root}/_llmock/requests", timeout=120).json()
        records = [r for r in data["requests"] if "chat/completions" in str(r.get("path"))]
        ok = [r for r in records if r.get("status") == 200]
        mean, p50, p95 = quantiles([float(r["ended_at"]) - float(r["started_at"]) for r in ok])
        span = (max(float(r["ended_at"]) for r in ok)
                - min(float(r["started_at"]) for r in records)) if ok else None
        return ServerStats(len(ok), sum(1 for r in records if r.get("status") == 429),
                           len(records), mean, p50, p95, span)

    def verdict(self) -> dict[str, Any]:
        """llmock's own judgement of how the client coped (``GET /_llmock/verdict``)."""
        result: dict[str, Any] = httpx.get(f"{self.root}/_llmock/verdict", timeout=300).json()
        return result
