"""A real HTTP fake of OpenAI's Batch API and Anthropic's Message Batches, on 127.0.0.1.

A Starlette app served by uvicorn in a background thread (OS-assigned port), following the
published formats:

* OpenAI, base URL ``{root}/v1``, ``authorization: Bearer KEY``: ``POST /v1/files`` (multipart,
  ``purpose=batch``, a JSONL file), ``POST /v1/batches`` ``{input_file_id, endpoint,
  completion_window}``, ``GET /v1/batches/{id}`` (``status``, ``request_counts {total,
  completed, failed}``, ``output_file_id``, ``error_file_id``, ``errors``),
  ``GET /v1/files/{id}/content``.
* Anthropic, base URL ``{root}``, ``x-api-key`` + ``anthropic-version``:
  ``POST /v1/messages/batches`` ``{"requests": [{custom_id, params}]}``,
  ``GET /v1/messages/batches/{id}`` (``processing_status``, ``request_counts {processing,
  succeeded, errored, canceled, expired}``, ``results_url``), ``GET .../{id}/results`` (JSONL).

Time: a batch is done ``config.complete_after_s`` seconds after it was created (0: at once),
or, when that is None, only after :meth:`FakeBatchServer.finish`. Before that an OpenAI batch
reads ``validating`` at its first poll, then ``in_progress`` (``finalizing`` in its last tenth),
with ``completed`` counts growing; an Anthropic batch reads ``in_progress``.

Each request's fate is ``config.outcome(prompt)``: ``"ok"`` (the default), ``"error"`` (an HTTP
400 line in OpenAI's error file; ``errored`` for Anthropic) or ``"expired"`` (a
``batch_expired`` line, and the OpenAI batch ends ``expired``; an ``expired`` result for
Anthropic). Result lines come back shuffled (seeded). An OpenAI input file that breaks a rule
(more than ``config.max_lines`` lines, duplicate custom_id, one model per file, the line's url)
makes the batch ``failed`` with ``errors``, as OpenAI does.
"""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.fakes.threaded import ThreadedServer

ENDPOINT = "/v1/chat/completions"
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
EXPIRED_MESSAGE = "This request could not be executed before the completion window expired."
ERROR_MESSAGE = "Invalid 'messages[0].content': the fake was told to refuse this request."


@dataclass
class FakeBatchConfig:
    complete_after_s: float | None = None
    outcome: Callable[[str], str] | None = None
    answer: Callable[[str], str] | None = None
    api_key: str | None = None
    """When set, any other key is refused with a 401 that quotes it (as a careless server
    might), so tests can check that clients scrub it."""
    max_lines: int = 50_000
    max_requests: int = 100_000
    seed: int = 7
    error_message: str = ERROR_MESSAGE
    """What the line of an ``error`` outcome says (a test makes it quote the key)."""
    tamper: Callable[[bytes], Iterable[bytes]] | None = None
    """Rewrites every results file as it is served, in chunks: lines for requests never sent,
    a line too long to keep, a file that never ends."""


@dataclass
class Batch:
    id: str
    api: str
    """``openai`` or ``anthropic``."""
    requests: list[tuple[str, dict[str, Any]]]
    """(custom_id, chat completion body or Messages params)."""
    created: float = field(default_factory=time.time)
    input_file_id: str | None = None
    problem: str | None = None
    done: bool = False
    polls: int = 0
    files: dict[str, str | None] = field(default_factory=dict)
    results: bytes | None = None


def _json(payload: Any, status: int = 200) -> Response:
    return Response(json.dumps(payload), status_code=status, media_type="application/json")


def _openai_error(message: str, status: int, type_: str = "invalid_request_error") -> Response:
    return _json({"error": {"message": message, "type": type_, "param": None, "code": None}},
                 status)


def _anthropic_error(message: str, status: int, type_: str = "invalid_request_error") -> Response:
    return _json({"type": "error", "error": {"type": type_, "message": message}}, status)


def _rfc3339(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _prompt(body: dict[str, Any]) -> str:
    messages = body.get("messages") or [{}]
    content = messages[-1].get("content", "")
    return content if isinstance(content, str) else json.dumps(content)


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """Form fields of a multipart body: name -> (filename, bytes)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode()
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    fields: dict[str, tuple[str | None, bytes]] = {}
    for part in message.iter_parts():  # type: ignore[attr-defined]
        name = part.get_param("name", header="content-disposition")
        fields[str(name)] = (part.get_filename(), part.get_payload(decode=True) or b"")
    return fields


class FakeBatchServer(ThreadedServer):
    """Use as a context manager. ``requests`` records every call as ``{"method", "path",
    "headers"}``; ``batches`` holds every batch accepted, by id."""

    name = "fake Batch API"

    def __init__(self, config: FakeBatchConfig | None = None, port: int = 0) -> None:
        self.config = config or FakeBatchConfig()
        self.requests: list[dict[str, Any]] = []
        self.batches: dict[str, Batch] = {}
        self.files: dict[str, bytes] = {}
        self._ids = itertools.count(1)
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        super().__init__(Starlette(routes=[
            Route("/v1/files", self._upload, methods=["POST"]),
            Route("/v1/files/{id}/content", self._file_content, methods=["GET"]),
            Route("/v1/batches", self._openai_create, methods=["POST"]),
            Route("/v1/batches/{id}", self._openai_get, methods=["GET"]),
            Route("/v1/messages/batches", self._anthropic_create, methods=["POST"]),
            Route("/v1/messages/batches/{id}", self._anthropic_get, methods=["GET"]),
            Route("/v1/messages/batches/{id}/results", self._anthropic_results,
                  methods=["GET"]),
        ]), port)

    # ------------------------------------------------------------------ for tests

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def finish(self, batch_id: str | None = None) -> None:
        """Let one batch (or every batch) end at its next poll."""
        for batch in self.batches.values():
            if batch_id in (None, batch.id):
                batch.done = True

    def sent(self) -> list[str]:
        """The custom_id of every request of every accepted batch, in order sent."""
        return [cid for b in self.batches.values() if not b.problem for cid, _ in b.requests]

    def result_order(self, batch_id: str) -> list[str]:
        """The custom_ids of a finished batch in the order its results list them."""
        batch = self.batches[batch_id]
        content = batch.results if batch.api == "anthropic" else b"".join(
            self.files[f] for f in batch.files.values() if f)
        return [json.loads(line)["custom_id"] for line in (content or b"").splitlines()]

    def prompts(self) -> list[str]:
        return [_prompt(body) for b in self.batches.values() for _, body in b.requests]

    # ------------------------------------------------------------------ lifecycle

    # ------------------------------------------------------------------ shared

    def _record(self, request: Request) -> dict[str, str]:
        headers = {k.lower(): v for k, v in request.headers.items()}
        self.requests.append({"method": request.method, "path": request.url.path,
                              "headers": headers})
        return headers

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    def _progress(self, batch: Batch) -> float:
        after = self.config.complete_after_s
        if batch.done or after == 0:
            return 1.0
        if after is None:
            return 0.0
        return min(1.0, (time.time() - batch.created) / after)

    def _fate(self, body: dict[str, Any]) -> str:
        outcome = self.config.outcome
        return outcome(_prompt(body)) if outcome else "ok"

    def _reply(self, body: dict[str, Any]) -> tuple[str, int, int]:
        """Answer text, prompt tokens, completion tokens."""
        prompt = _prompt(body)
        text = self.config.answer(prompt) if self.config.answer else f"Answer: {prompt[:60]}"
        chars = sum(len(str(m.get("content", ""))) for m in body.get("messages", []))
        return text, chars // 4 + 1, len(text) // 4 + 1

    def _shuffled(self, lines: list[dict[str, Any]]) -> bytes:
        self._rng.shuffle(lines)
        return b"".join(json.dumps(line).encode() + b"\n" for line in lines)

    # ------------------------------------------------------------------ OpenAI

    def _openai_auth(self, request: Request) -> Response | None:
        headers = self._record(request)
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme != "Bearer" or not key:
            return _openai_error("You didn't provide an API key.", 401)
        if self.config.api_key is not None and key != self.config.api_key:
            return _openai_error(f"Incorrect API key provided: {key}.", 401)
        return None

    async def _upload(self, request: Request) -> Response:
        refused = self._openai_auth(request)
        if refused:
            return refused
        fields = _multipart(request.headers.get("content-type", ""), await request.body())
        if fields.get("purpose", (None, b""))[1] != b"batch" or "file" not in fields:
            return _openai_error("A multipart 'file' and purpose 'batch' are required.", 400)
        filename, content = fields["file"]
        file_id = self._new_id("file-")
        self.files[file_id] = content
        return _json({"id": file_id, "object": "file", "bytes": len(content),
                      "created_at": int(time.time()), "filename": filename,
                      "purpose": "batch"})

    async def _file_content(self, request: Request) -> Response:
        refused = self._openai_auth(request)
        if refused:
            return refused
        file_id = request.path_params["id"]
        content = self.files.get(file_id)
        if content is None:
            return _openai_error("No such File object.", 404)
        results = any(file_id in b.files.values() for b in self.batches.values())
        return self._results(content) if results else Response(
            content, media_type="application/octet-stream")

    def _results(self, content: bytes) -> Response:
        """A results file as served: as it is, or through ``config.tamper``."""
        if self.config.tamper is None:
            return Response(content, media_type="application/x-jsonl")
        return StreamingResponse(iter(self.config.tamper(content)),
                                 media_type="application/x-jsonl")

    def _check_lines(self, content: bytes) -> tuple[list[tuple[str, dict[str, Any]]], str | None]:
        requests: list[tuple[str, dict[str, Any]]] = []
        models: set[str] = set()
        lines = content.decode().splitlines()
        if len(lines) > self.config.max_lines:
            return [], f"The batch input file has more than {self.config.max_lines} requests."
        for number, text in enumerate(lines, start=1):
            line = json.loads(text)
            body = line.get("body") or {}
            models.add(str(body.get("model")))
            if line.get("method") != "POST" or line.get("url") != ENDPOINT:
                return requests, f"Line {number}: method must be POST and url {ENDPOINT}."
            if not isinstance(body.get("messages"), list) or len(models) > 1:
                return requests, f"Line {number}: one model per file, and messages required."
            if line.get("custom_id") in {cid for cid, _ in requests}:
                return requests, f"Line {number}: duplicate custom_id."
            requests.append((str(line["custom_id"]), body))
        return requests, None

    async def _openai_create(self, request: Request) -> Response:
        refused = self._openai_auth(request)
        if refused:
            return refused
        body = await request.json()
        if body.get("endpoint") != ENDPOINT or body.get("completion_window") != "24h":
            return _openai_error("endpoint and completion_window '24h' are required.", 400)
        content = self.files.get(str(body.get("input_file_id")))
        if content is None:
            return _openai_error("No such File object.", 404)
        requests, problem = self._check_lines(content)
        batch = Batch(self._new_id("batch_"), "openai", requests,
                      input_file_id=str(body["input_file_id"]), problem=problem)
        with self._lock:
            self.batches[batch.id] = batch
        return _json(self._openai_view(batch, poll=False))

    def _openai_finalize(self, batch: Batch) -> None:
        outputs: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        for custom_id, body in batch.requests:
            fate = self._fate(body)
            line: dict[str, Any] = {"id": self._new_id("batch_req_"), "custom_id": custom_id,
                                    "response": None, "error": None}
            if fate == "expired":
                line["error"] = {"code": "batch_expired", "message": EXPIRED_MESSAGE}
                errors.append(line)
                continue
            status, answer = (400, {"error": {"message": self.config.error_message,
                                              "code": None,
                                              "type": "invalid_request_error", "param": None}})
            if fate == "ok":
                text, prompt_tokens, completion_tokens = self._reply(body)
                status, answer = 200, {
                    "id": self._new_id("chatcmpl-"), "object": "chat.completion",
                    "created": int(time.time()), "model": body.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens,
                              "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}}
            line["response"] = {"status_code": status, "request_id": self._new_id("req_"),
                                "body": answer}
            (outputs if status == 200 else errors).append(line)
        for kind, lines in (("output_file_id", outputs), ("error_file_id", errors)):
            file_id = self._new_id("file-") if lines else None
            if file_id:
                self.files[file_id] = self._shuffled(lines)
            batch.files[kind] = file_id

    def _openai_view(self, batch: Batch, poll: bool = True) -> dict[str, Any]:
        total = len(batch.requests)
        progress = self._progress(batch)
        batch.polls += poll
        if batch.problem:
            status = "failed"
        elif progress >= 1:
            if not batch.files:
                self._openai_finalize(batch)
            expired = any(self._fate(b) == "expired" for _, b in batch.requests)
            status = "expired" if expired else "completed"
        elif batch.polls <= 1:
            status = "validating"
        else:
            status = "finalizing" if progress >= 0.9 else "in_progress"
        failed = sum(self._fate(b) != "ok" for _, b in batch.requests) if progress >= 1 else 0
        done = total - failed if progress >= 1 else int(progress * total)
        done = 0 if status in ("validating", "failed") else done
        errors = ({"object": "list", "data": [{"code": "invalid_request", "line": None,
                                               "message": batch.problem, "param": None}]}
                  if batch.problem else None)
        return {"id": batch.id, "object": "batch", "endpoint": ENDPOINT, "errors": errors,
                "input_file_id": batch.input_file_id, "completion_window": "24h",
                "status": status, "output_file_id": batch.files.get("output_file_id"),
                "error_file_id": batch.files.get("error_file_id"),
                "created_at": int(batch.created), "expires_at": int(batch.created) + 86400,
                "request_counts": {"total": total, "completed": done, "failed": failed},
                "metadata": None}

    async def _openai_get(self, request: Request) -> Response:
        refused = self._openai_auth(request)
        if refused:
            return refused
        batch = self.batches.get(request.path_params["id"])
        if batch is None or batch.api != "openai":
            return _openai_error("No such Batch object.", 404)
        with self._lock:
            return _json(self._openai_view(batch))

    # ------------------------------------------------------------------ Anthropic

    def _anthropic_auth(self, request: Request) -> Response | None:
        headers = self._record(request)
        key = headers.get("x-api-key")
        if not key:
            return _anthropic_error("x-api-key header is required", 401, "authentication_error")
        if self.config.api_key is not None and key != self.config.api_key:
            return _anthropic_error(f"invalid x-api-key {key}", 401, "authentication_error")
        if not headers.get("anthropic-version"):
            return _anthropic_error("anthropic-version: header is required", 400)
        return None

    async def _anthropic_create(self, request: Request) -> Response:
        refused = self._anthropic_auth(request)
        if refused:
            return refused
        items = (await request.json()).get("requests")
        if not isinstance(items, list) or not 0 < len(items) <= self.config.max_requests:
            return _anthropic_error(f"requests: 1 to {self.config.max_requests} items", 400)
        seen: set[str] = set()
        for number, item in enumerate(items):
            custom_id, params = item.get("custom_id"), item.get("params") or {}
            if not CUSTOM_ID.match(str(custom_id)) or custom_id in seen:
                return _anthropic_error(f"requests.{number}.custom_id: invalid or repeated",
                                        400)
            if not isinstance(params.get("max_tokens"), int) or not params.get("messages"):
                return _anthropic_error(f"requests.{number}.params: max_tokens and messages "
                                        "are required", 400)
            seen.add(custom_id)
        batch = Batch(self._new_id("msgbatch_"), "anthropic",
                      [(i["custom_id"], i["params"]) for i in items])
        with self._lock:
            self.batches[batch.id] = batch
        return _json(self._anthropic_view(batch))

    def _anthropic_result(self, custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
        fate = self._fate(params)
        if fate == "expired":
            return {"custom_id": custom_id, "result": {"type": "expired"}}
        if fate != "ok":
            error = {"type": "invalid_request_error", "message": self.config.error_message}
            return {"custom_id": custom_id, "result": {"type": "errored", "error": {
                "type": "error", "error": error}}}
        text, prompt_tokens, completion_tokens = self._reply(params)
        message = {"id": self._new_id("msg_"), "type": "message", "role": "assistant",
                   "model": params.get("model"), "content": [{"type": "text", "text": text}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": prompt_tokens, "output_tokens": completion_tokens}}
        return {"custom_id": custom_id, "result": {"type": "succeeded", "message": message}}

    def _anthropic_view(self, batch: Batch) -> dict[str, Any]:
        total = len(batch.requests)
        ended = self._progress(batch) >= 1
        counts = {"processing": total, "succeeded": 0, "errored": 0, "canceled": 0,
                  "expired": 0}
        if ended:
            if batch.results is None:
                batch.results = self._shuffled([self._anthropic_result(cid, params)
                                                for cid, params in batch.requests])
            fates = [self._fate(params) for _, params in batch.requests]
            counts.update(processing=0, succeeded=fates.count("ok"),
                          expired=fates.count("expired"),
                          errored=total - fates.count("ok") - fates.count("expired"))
        return {"id": batch.id, "type": "message_batch",
                "processing_status": "ended" if ended else "in_progress",
                "request_counts": counts, "created_at": _rfc3339(batch.created),
                "expires_at": _rfc3339(batch.created + 86400),
                "ended_at": _rfc3339(time.time()) if ended else None,
                "cancel_initiated_at": None, "archived_at": None,
                "results_url": (f"{self.root_url}/v1/messages/batches/{batch.id}/results"
                                if ended else None)}

    async def _anthropic_get(self, request: Request) -> Response:
        refused = self._anthropic_auth(request)
        if refused:
            return refused
        batch = self.batches.get(request.path_params["id"])
        if batch is None or batch.api != "anthropic":
            return _anthropic_error("Message batch not found", 404, "not_found_error")
        with self._lock:
            return _json(self._anthropic_view(batch))

    async def _anthropic_results(self, request: Request) -> Response:
        refused = self._anthropic_auth(request)
        if refused:
            return refused
        batch = self.batches.get(request.path_params["id"])
        if batch is None or batch.results is None:
            return _anthropic_error("Message batch results are not ready", 404,
                                    "not_found_error")
        return self._results(batch.results)


def main() -> None:
    """``python -m tests.fakes.batch_api [SECONDS [PORT]]``: serve both Batch APIs until
    Ctrl-C; batches end SECONDS after they are sent (default 30)."""
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 30.0
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    server = FakeBatchServer(FakeBatchConfig(complete_after_s=seconds), port).start()
    print(f"OpenAI base URL {server.base_url}, Anthropic base URL {server.root_url}", flush=True)
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
