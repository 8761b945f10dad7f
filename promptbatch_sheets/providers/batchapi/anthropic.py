"""Anthropic's Message Batches: one POST of requests, polled, results read from results_url.

Each request's params are ``messages_payload``, the body a realtime run sends, and each
succeeded message goes through ``parse_message``: a batch answer is a realtime answer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import ProviderError
from ..anthropic import ANTHROPIC_VERSION, messages_payload, parse_message
from ..base import Params
from ..reply import label
from ..retry import Retryable
from . import BatchClient, Outcome, Remote, counts, dumps, error_reason, ident

MAX_REQUESTS = 100_000
"""Requests per batch (Anthropic's limit)."""
MAX_BYTES = 256 * 1024 * 1024
_OPEN, _CLOSE = b'{"requests":[', b"]}"
UNANSWERED = {
    "expired": "the batch expired before this request ran (expired)",
    "canceled": "the batch was canceled before this request ran (canceled)",
}


class AnthropicBatch(BatchClient):
    """POST {base}/v1/messages/batches, GET {base}/v1/messages/batches/ID, GET results_url."""

    def auth_headers(self, api_key: str | None) -> dict[str, str]:
        return {"x-api-key": api_key or "", "anthropic-version": ANTHROPIC_VERSION}

    @property
    def max_requests(self) -> int:
        return MAX_REQUESTS

    @property
    def max_bytes(self) -> int:
        return MAX_BYTES - len(_OPEN) - len(_CLOSE)

    def encode(self, custom_id: str, prompt: str, params: Params) -> bytes:
        return dumps({"custom_id": custom_id,
                      "params": messages_payload(self.model, prompt, params)})

    def create(self, requests: Sequence[bytes]) -> str:
        body = _OPEN + b",".join(requests) + _CLOSE
        what = "Creating the message batch"
        batch = self.call(what, "POST", f"{self.base_url}/v1/messages/batches", content=body,
                          headers={"content-type": "application/json"})
        return ident(batch.get("id"), what)

    def poll(self, batch_id: str) -> Remote:
        body = self.call(f"Checking batch {batch_id}", "GET",
                         f"{self.base_url}/v1/messages/batches/{batch_id}")
        status = label(body.get("processing_status")) or "unknown"
        url = body.get("results_url")
        return Remote(status, status == "ended", counts(body.get("request_counts")), None,
                      (str(url),) if url else ())

    def results(self, remote: Remote) -> Iterator[tuple[str, Outcome]]:
        for url in remote.results:
            self.check_same_server(url)
            yield from self.read_results("Downloading the batch results", url, _outcome)


def _outcome(line: dict[str, Any]) -> Outcome:
    result = line.get("result")
    kind = result.get("type") if isinstance(result, dict) else None
    if kind == "succeeded" and isinstance(result, dict):
        try:
            return parse_message(result.get("message") or {})
        except (Retryable, ProviderError) as exc:
            return str(exc)
    if kind == "errored" and isinstance(result, dict):
        return error_reason(result.get("error"), "the request errored")
    return UNANSWERED.get(str(kind), f"no answer ({label(kind)})")
