"""Which requests get in: readiness gating, the queue bound (429), and in-flight counting.

Counting happens here, at the HTTP level, so a request counts until its last byte is sent (a
stream included) and draining can wait for exactly that, for every API family alike. A WebSocket
connection is not a request: it is refused only while nothing is served, and each of its
messages is admitted and counted like a request by its handler.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.asgi import refuse
from runtime.errors import ApiError, ErrorKind
from runtime.state import Phase, ServingState

# Warm-up requests pass the readiness gate with this header (its value is a per-process secret).
WARM_UP_HEADER = "x-llm-runtime-warm-up"


class Admission:
    def __init__(self, state: ServingState, max_queue_size: int | None) -> None:
        self._state = state
        self._max_queue_size = max_queue_size
        self.warm_up_key = secrets.token_hex(16)
        self.num_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def limit(self) -> int | None:
        """Requests allowed in flight: the engine's running set plus the waiting queue."""
        if self._max_queue_size is None or not self._state.is_ready:
            return None
        return self._state.processor.info.max_concurrency + self._max_queue_size

    def refusal(
        self, is_warm_up: bool, with_queue: bool = True
    ) -> tuple[ApiError, dict[str, str]] | None:
        phase = self._state.phase
        if phase is not Phase.READY and not (is_warm_up and phase is Phase.WARMING_UP):
            if phase is Phase.DRAINING:
                message = "the server is shutting down; retry on another instance"
            else:
                message = f"the service is not ready: {phase.value}"
            self._state.metrics.rejections.labels("not_ready").inc()
            return ApiError(ErrorKind.UNAVAILABLE, message), {"Retry-After": "5"}
        limit = self.limit
        if with_queue and limit is not None and self.num_in_flight >= limit:
            self._state.metrics.rejections.labels("queue_full").inc()
            message = f"the server is at its limit of {limit} requests in flight; retry later"
            return ApiError(ErrorKind.OVERLOADED, message), {"Retry-After": "1"}
        return None

    @contextmanager
    def admitted(self) -> Iterator[None]:
        """Count a request in flight while the block runs."""
        self.num_in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self.num_in_flight -= 1
            if self.num_in_flight == 0:
                self._idle.set()

    async def wait_idle(self, timeout: float) -> bool:
        """True when nothing is in flight within `timeout` seconds."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


class AdmissionMiddleware:
    """Gates inference requests (every POST and WebSocket); probes and GETs pass freely."""

    def __init__(self, app: ASGIApp, admission: Admission) -> None:
        self.app = app
        self.admission = admission

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        is_inference = scope["type"] == "websocket" or (
            scope["type"] == "http" and scope["method"] == "POST"
        )
        if not is_inference:
            await self.app(scope, receive, send)
            return
        key = self.admission.warm_up_key.encode()
        is_warm_up = (WARM_UP_HEADER.encode(), key) in scope.get("headers", ())
        is_websocket = scope["type"] == "websocket"
        refusal = self.admission.refusal(is_warm_up, with_queue=not is_websocket)
        if refusal is not None:
            await refuse(scope, send, *refusal)
        elif is_websocket:
            await self.app(scope, receive, send)
        else:
            with self.admission.admitted():
                await self.app(scope, receive, send)
