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
from ..reply import label
from ..retry import Retryable
from . import BatchClient, Outcome, Remote, counts, dumps, error_reason, ident

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
        what = "Creating the batch"
        batch = self.call(what, "POST", f"{self.base_url}/batches",
                          json={"input_file_id": ident(upload.get("id"), what),
                                "endpoint": ENDPOINT, "completion_window": "24h"})
        return ident(batch.get("id"), what)

    def poll(self, batch_id: str) -> Remote:
        what = f"Checking batch {batch_id}"
        body = self.call(what, "GET", f"{self.base_url}/batches/{batch_id}")
        status = label(body.get("status")) or "unknown"
        files = tuple(ident(body[f], what) for f in ("output_file_id", "error_file_id")
                      if body.get(f))
        errors = body.get("errors")
        errors = errors.get("data") if isinstance(errors, dict) else None
        error = (self.scrub(error_reason(errors[0], status))
                 if isinstance(errors, list) and errors else None)
        return Remote(status, status in ENDED, counts(body.get("request_counts")), error, files)

    def results(self, remote: Remote) -> Iterator[tuple[str, Outcome]]:
        for file_id in remote.results:
            url = f"{self.base_url}/files/{file_id}/content"
            yield from self.read_results(f"Downloading results file {file_id}", url,
                                         _outcome)


def _outcome(line: dict[str, Any]) -> Outcome:
    response = line.get("response") or {}
    if line.get("error") or not isinstance(response, dict):
        return error_reason(line.get("error"), "the request failed")
    body = response.get("body")
    status = response.get("status_code")
    if status != 200 or not isinstance(body, dict):
        return f"HTTP {status}: {error_reason(body, 'no answer')}"
    try:
        return parse_chat_completion(body)
    except (Retryable, ProviderError) as exc:
        return str(exc)
