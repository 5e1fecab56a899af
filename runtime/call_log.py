"""Call records (the platform's "save call records"): one JSON line per request and its answer.

A record begins where a call enters (the HTTP middleware below, or the WebSocket handler for
each message), is filled in by the GenerationRunner as the engine steps (request id, token
counts, time to first token, text, how it ended), and is handed over once the answer is
complete or cut short (then marked so: `finish_reason` "abort" and the error's status, 499 for
a client that left). The event loop only appends to a bounded queue; serialising, redacting and
writing happen on a background thread, which rotates the file by size as logging's
RotatingFileHandler does.
Headers are never recorded (the token travels there), and the token is redacted from the rest.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging.handlers import RotatingFileHandler
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processors.base import Step
from runtime.asgi import route_path
from runtime.config import CallLogConfig
from runtime.errors import ApiError

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 1 << 20  # of a response body kept (raw processors); generated text is whole
MAX_QUEUED = 10_000  # records waiting for the disk; beyond, records are dropped and counted
REDACTED = "<redacted>"


@dataclass
class _Output:
    """What one engine request (one choice) produced."""

    parts: list[str] = field(default_factory=list)
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    finish_reason: str | None = None


class CallRecord:
    """One call, filled in on the event loop and serialised on the writer thread."""

    def __init__(self, method: str, route: str, client: Any, request: bytes = b"") -> None:
        self.time = time.time()
        self._started = time.perf_counter()
        self.method = method
        self.route = route
        self.client = f"{client[0]}:{client[1]}" if client else None
        self.request_id: str | None = None
        self.is_generating = False  # the engine was asked: an error then cut a generation short
        self.status = 200
        self.error: ApiError | None = None
        self.ttft: float | None = None
        self.latency: float | None = None
        self._request: list[bytes] = [request] if request else []
        self._response: list[bytes] = []
        self._response_size = 0
        self._outputs: dict[str, _Output] = {}

    def add_request_body(self, chunk: bytes) -> None:
        self._request.append(chunk)

    def add_response_body(self, chunk: bytes) -> None:
        """Bytes of an answer that is not generated text (raw processors, errors)."""
        if self._outputs or self._response_size >= MAX_RESPONSE_BYTES:
            return  # generated answers are recorded as their text, not their framing
        self._response.append(chunk[: MAX_RESPONSE_BYTES - self._response_size])
        self._response_size += len(chunk)

    def note_request(self, request_id: str) -> None:
        self.is_generating = True
        if self.request_id is None:  # the API's id, before the per-choice suffixes
            self.request_id = request_id

    def note_step(self, request_id: str, step: Step) -> None:
        if self.ttft is None:
            self.ttft = time.perf_counter() - self._started
        output = self._outputs.setdefault(request_id, _Output())
        output.parts.append(step.text)
        output.num_prompt_tokens = step.num_prompt_tokens
        output.num_output_tokens = step.num_output_tokens
        output.finish_reason = step.finish_reason or output.finish_reason

    def note_error(self, error: ApiError) -> None:
        if self.error is None:  # the first cause; the choices it then cancels add nothing
            self.error = error

    def finish(self) -> None:
        self.latency = time.perf_counter() - self._started
        if self.error is not None:
            self.status = self.error.status

    def to_dict(self) -> dict[str, Any]:
        """The JSON line's content (on the writer thread: parsing bodies costs the loop nothing)."""
        outputs = list(self._outputs.values())
        response = b"".join(self._response)
        record = {
            "time": datetime.fromtimestamp(self.time, UTC).isoformat(timespec="milliseconds"),
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "client": self.client,
            "status": self.status,
            "finish_reason": "abort"
            if self.error and self.is_generating
            else _first_finish_reason(outputs),
            # Summed over the engine requests: n choices of one prompt count it n times.
            "prompt_tokens": sum(o.num_prompt_tokens for o in outputs) if outputs else None,
            "output_tokens": sum(o.num_output_tokens for o in outputs) if outputs else None,
            "latency_s": None if self.latency is None else round(self.latency, 4),
            "ttft_s": None if self.ttft is None else round(self.ttft, 4),
            "request": _body(b"".join(self._request)),
            "response": "".join(outputs[0].parts) if outputs else _text(response),
            "error": self.error.message if self.error else _error_message(response, self.status),
        }
        if len(outputs) > 1:
            record["responses"] = ["".join(o.parts) for o in outputs]
        if self._response_size > MAX_RESPONSE_BYTES:
            record["response_truncated_from_bytes"] = self._response_size
        return record


class _Unrecorded(CallRecord):
    """Where no call is being recorded: every note is dropped."""

    def __init__(self) -> None:
        pass

    def note_request(self, request_id: str) -> None:
        pass

    def note_step(self, request_id: str, step: Step) -> None:
        pass

    def note_error(self, error: ApiError) -> None:
        pass


_CURRENT_CALL: ContextVar[CallRecord | None] = ContextVar("llm_runtime_call", default=None)


def current_call() -> CallRecord:
    """The call recorded in this task (the tasks it starts copy the context), or a stand-in
    that drops every note."""
    return _CURRENT_CALL.get() or _Unrecorded()


class CallLog:
    """The file, its rotation, and the thread that writes to it."""

    def __init__(self, config: CallLogConfig, token: str | None) -> None:
        if not config.path:
            raise ValueError("a call log needs a path")
        self.config = config
        self.num_dropped = 0
        self._queue: queue.Queue[CallRecord | None] = queue.Queue(MAX_QUEUED)
        self._handler: RotatingFileHandler | None = None
        self._thread: threading.Thread | None = None
        # The token as it stands in a JSON string too (escaped), wherever a client put it.
        self._secrets = (
            sorted({token, json.dumps(token, ensure_ascii=False)[1:-1]}) if token else []
        )

    def open(self) -> None:
        """Open the file (an unwritable path fails here, at start) and start the writer."""
        if self._thread is not None:
            return
        config = self.config
        path = str(config.path)
        self._handler = RotatingFileHandler(
            path,
            maxBytes=0 if is_stream(path) else config.max_bytes,
            backupCount=config.backups,
            encoding="utf-8",
        )
        self._thread = threading.Thread(target=self._write_all, name="call-log", daemon=True)
        self._thread.start()

    def record(self, call: CallRecord) -> None:
        """Hand a finished call to the writer; never blocks the event loop."""
        try:
            self._queue.put_nowait(call)
        except queue.Full:
            self.num_dropped += 1
            if self.num_dropped == 1 or self.num_dropped % 1000 == 0:
                log.warning("call log: the disk is behind, %d records dropped", self.num_dropped)

    def flush(self) -> None:
        """Wait until every record handed over so far is written (blocks: not on the loop)."""
        if self._thread is not None:
            self._queue.join()

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then stop the writer and close the file."""
        if self._thread is None or self._handler is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            log.warning("call log: the writer is stuck; records may be lost")
        self._thread.join(timeout)
        self._handler.close()
        self._thread = None

    def line(self, call: CallRecord) -> str:
        # The standard library, not orjson: a client's integers beyond 64 bits stay exact.
        text = json.dumps(call.to_dict(), ensure_ascii=False, separators=(",", ":"))
        for secret in self._secrets:
            text = text.replace(secret, REDACTED)
        return text

    def _write_all(self) -> None:
        assert self._handler is not None
        while True:
            call = self._queue.get()
            try:
                if call is None:
                    return
                line = self.line(call)
                self._handler.handle(logging.makeLogRecord({"msg": line}))
            except Exception:
                log.exception("call log: a record could not be written")
            finally:
                self._queue.task_done()


def is_stream(path: str) -> bool:
    """/dev/stdout (the log shipper's way in a container) and other non-files never rotate."""
    return path.startswith(("/dev/", "/proc/")) or (
        os.path.exists(path) and not os.path.isfile(path)
    )


@contextmanager
def recording(call_log: CallLog | None, call: CallRecord) -> Iterator[CallRecord]:
    """Make `call` the current call while the block runs, then finish and log it."""
    if call_log is None:
        yield call
        return
    reset = _CURRENT_CALL.set(call)
    try:
        yield call
    finally:
        _CURRENT_CALL.reset(reset)
        call.finish()
        call_log.record(call)


class CallLogMiddleware:
    """Records every POST: its body, its status, and the answer once its last byte is out."""

    def __init__(self, app: ASGIApp, call_log: CallLog) -> None:
        self.app = app
        self.call_log = call_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        call = CallRecord("POST", route_path(scope), scope.get("client"))
        call.status = 500  # unless an answer starts

        async def recording_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                call.add_request_body(message.get("body", b""))
            return message

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                call.status = message["status"]
            elif message["type"] == "http.response.body":
                call.add_response_body(message.get("body", b""))
            await send(message)

        with recording(self.call_log, call):
            await self.app(scope, recording_receive, recording_send)


def _first_finish_reason(outputs: list[_Output]) -> str | None:
    return next((o.finish_reason for o in outputs if o.finish_reason), None)


def _body(raw: bytes) -> Any:
    """A JSON body as JSON (so jq can reach into it), anything else as text."""
    try:
        document = json.loads(raw)  # orjson would turn integers beyond 64 bits into floats
    except (ValueError, RecursionError):
        return _text(raw)
    return document if isinstance(document, dict | list) else _text(raw)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _error_message(response: bytes, status: int) -> str | None:
    if status < 400:
        return None
    try:
        return str(orjson.loads(response)["error"]["message"])
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return _text(response) or None
