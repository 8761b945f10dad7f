"""OpenAI's Batch API: a JSONL file of chat completion requests, uploaded, then one batch.

Each line's body is ``chat_payload``, the same body a realtime run sends, and each result body
goes through ``parse_chat_completion``: a batch answer is the answer a realtime run would get.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from ...errors import ProviderError
from ..base import Params
from ..openai import chat_payload, parse_chat_completion
from ..retry import Retryable
from . import BatchClient, Outcome, Remote, dumps, error_reason

MAX_LINES = 50_000
"""Requests per input file (OpenAI's limit); tests lower it to see a run split."""
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


class OpenAIBatch(BatchClient):
    """POST {base}/files, POST {base}/batches, GET {base}/batches/ID, GET {base}/files/ID/content
    (the base URL ends in /v1, as for chat completions)."""

    @property
    def max_requests(self) -> int:
        return MAX_LINES

    @property
    def max_bytes(self) -> int:
        return MAX_BYTES

    def encode(self, custom_id: str, prompt: str, params: Params) -> bytes:
        return dumps({"custom_id": custom_id, "method": "POST", "url": ENDPOINT,
                      "body": chat_payload(self.model, prompt, params)})

    def create(self, requests: Sequence[bytes]) -> str:
        content = b"\n".join(requests) + b"\n"
        upload = self.call("Uploading the batch file", "POST", f"{self.base_url}/files",
                           data={"purpose": "batch"},
                           files={"file": ("promptbatch.jsonl", content, "application/jsonl")})
        batch = self.call("Creating the batch", "POST", f"{self.base_url}/batches",
                          json={"input_file_id": upload.get("id"), "endpoint": ENDPOINT,
                                "completion_window": "24h"})
        return str(batch["id"])

    def poll(self, batch_id: str) -> Remote:
        body = self.call(f"Checking batch {batch_id}", "GET", f"{self.base_url}/batches/{batch_id}")
        status = str(body.get("status"))
        counts = body.get("request_counts") or {}
        files = tuple(str(body[f]) for f in ("output_file_id", "error_file_id") if body.get(f))
        errors = (body.get("errors") or {}).get("data") or []
        error = self.scrub(error_reason(errors[0], status)) if errors else None
        return Remote(status, status in ENDED, {k: int(v) for k, v in counts.items()}, error,
                      files)

    def results(self, remote: Remote) -> Iterator[tuple[str, Outcome]]:
        for file_id in remote.results:
            url = f"{self.base_url}/files/{file_id}/content"
            for line in self.lines(f"Downloading results file {file_id}", url):
                yield str(line.get("custom_id")), self._outcome(line)

    def _outcome(self, line: dict[str, Any]) -> Outcome:
        response = line.get("response") or {}
        if line.get("error") or not isinstance(response, dict):
            return self.scrub(error_reason(line.get("error"), "the request failed"))
        body = response.get("body")
        status = response.get("status_code")
        if status != 200 or not isinstance(body, dict):
            return self.scrub(f"HTTP {status}: {error_reason(body, 'no answer')}")
        try:
            return parse_chat_completion(body)
        except (Retryable, ProviderError) as exc:
            return self.scrub(str(exc))
