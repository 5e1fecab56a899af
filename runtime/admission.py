"""The one gate every request to the served model passes: readiness, the bound, counting.

Counting happens here, at the HTTP level, so a request counts until its last byte is sent (a
stream included) and draining can wait for exactly that, for every API family alike. A request
let in receives the service the lifecycle built when the model was loaded (what its route needs:
the model's info, its prompt builder, the generation runner) in `scope["state"]["service"]`.
A WebSocket connection is not a request: it is refused only while nothing is served, and each of
its messages is admitted and counted like a request by its handler.
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.asgi import refuse
from runtime.errors import ApiError, ErrorKind
from runtime.metrics import Metrics
from runtime.phase import LOADED_PHASES, Phase, ServingStatus

SERVICE_KEY = "service"


class Admission:
    def __init__(self, status: ServingStatus, metrics: Metrics, max_waiting: int | None) -> None:
        self._status = status
        self._metrics = metrics
        self._max_waiting = max_waiting
        self.limit: int | None = None  # in flight at most; set when the model is loaded
        self.service: Any = None  # what routes need; set when the model is loaded
        self.num_in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def open(self, service: Any, max_concurrency: int) -> None:
        """The model is loaded: routes get `service`; the engine runs `max_concurrency`."""
        self.service = service
        if self._max_waiting is not None:
            self.limit = max_concurrency + self._max_waiting

    def refusal(self, bounded: bool = True) -> tuple[ApiError, dict[str, str]] | None:
        """Why new work is refused now (503 unless ready, 429 beyond the bound), or None."""
        phase = self._status.phase
        if phase is not Phase.READY:
            if phase is Phase.DRAINING:
                message = "the server is shutting down; retry on another instance"
            else:
                message = f"the service is not ready: {phase.value}"
            self._metrics.rejections.labels("not_ready").inc()
            return ApiError(ErrorKind.UNAVAILABLE, message), {"Retry-After": "5"}
        if bounded and self.limit is not None and self.num_in_flight >= self.limit:
            self._metrics.rejections.labels("queue_full").inc()
            message = f"the server is at its limit of {self.limit} requests in flight; retry later"
            return ApiError(ErrorKind.OVERLOADED, message), {"Retry-After": "1"}
        return None

    def readable(self) -> tuple[ApiError, dict[str, str]] | None:
        """Why what is served cannot be read now (before the model is loaded), or None."""
        if self.service is not None and self._status.phase in LOADED_PHASES:
            return None
        message = f"the service is not ready: {self._status.phase.value}"
        return ApiError(ErrorKind.UNAVAILABLE, message), {"Retry-After": "5"}

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


def admitted_service(connection: HTTPConnection) -> Any:
    """The service the gate handed this request (a route dependency)."""
    return connection.scope["state"][SERVICE_KEY]


class AdmissionMiddleware:
    """Gates the endpoints of the served model (`gated`: (path, method) pairs, "WEBSOCKET" for
    a WebSocket route); probes, metrics and pages pass.

    Work (a POST, a WebSocket) must find the service ready and, for a POST, within the bound,
    and counts in flight while it runs; a GET only reads what is served and needs it loaded.
    """

    def __init__(
        self, app: ASGIApp, admission: Admission, gated: Collection[tuple[str, str]]
    ) -> None:
        self.app = app
        self.admission = admission
        self.gated = frozenset(gated)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        method = "WEBSOCKET" if kind == "websocket" else scope.get("method", "")
        if kind not in ("http", "websocket") or (scope["path"], method) not in self.gated:
            await self.app(scope, receive, send)
            return
        is_websocket = kind == "websocket"
        is_work = is_websocket or method == "POST"
        admission = self.admission
        refusal = admission.refusal(bounded=not is_websocket) if is_work else admission.readable()
        if refusal is not None:
            await refuse(scope, send, *refusal)
            return
        scope.setdefault("state", {})[SERVICE_KEY] = admission.service
        if is_websocket or not is_work:
            await self.app(scope, receive, send)
            return
        with admission.admitted():
            await self.app(scope, receive, send)
