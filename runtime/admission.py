"""The one gate every request to the served model passes: readiness, the bound, counting.

Counting happens here, at the HTTP level, so a request counts until its last byte is sent (a
stream included) and draining can wait for exactly that, for every API family alike. A request
let in receives the service the lifecycle built when the model was loaded (what its route needs:
the model's info, its prompt builder, the generation runner) in `scope["state"]["service"]`.
A WebSocket connection is not a request: it is refused only while nothing is served, and each of
its messages is admitted and counted like a request by its handler.

The bound counts engine requests, not HTTP requests: a request weighs what it asks of the
engine (a completions request with several prompts and `n` choices makes prompts x n engine
requests). It enters weighing 1, and its route weighs it once the body says more (`weigh`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from opentelemetry import trace
from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.asgi import refuse, route_path
from runtime.errors import ApiError, ErrorKind
from runtime.metrics import Metrics
from runtime.phase import LOADED_PHASES, Phase, ServingStatus

SERVICE_KEY = "service"
TICKET_KEY = "admission_ticket"


class Ticket:
    """One request's place in flight: what it weighs."""

    __slots__ = ("_admission", "weight")

    def __init__(self, admission: Admission) -> None:
        self._admission = admission
        self.weight = 1

    def weigh(self, weight: int) -> None:
        self._admission.weigh(self, weight)


class Admission:
    def __init__(self, status: ServingStatus, metrics: Metrics, max_waiting: int | None) -> None:
        self._status = status
        self._metrics = metrics
        self._max_waiting = max_waiting
        self.limit: int | None = None  # engine requests in flight at most; set on loading
        self.service: Any = None  # what routes need; set when the model is loaded
        self.num_in_flight = 0  # requests (HTTP, WebSocket messages, queued items)
        self.num_engine_requests = 0  # what they weigh
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
        if bounded and self.limit is not None and self.num_engine_requests >= self.limit:
            return self._full()
        return None

    def _full(self) -> tuple[ApiError, dict[str, str]]:
        self._metrics.rejections.labels("queue_full").inc()
        message = f"the server is at its limit of {self.limit} requests in flight; retry later"
        return ApiError(ErrorKind.OVERLOADED, message), {"Retry-After": "1"}

    def weigh(self, ticket: Ticket, weight: int) -> None:
        """The request holding `ticket` makes `weight` engine requests: it stays admitted if they
        fit within the bound with everything else in flight, else ApiError 429 (400 if they
        could never fit)."""
        if self.limit is not None and weight > self.limit:
            raise ApiError(
                ErrorKind.BAD_REQUEST,
                f"this request asks for {weight} completions at once (prompts x n), more than "
                f"this server runs and queues together ({self.limit}); send fewer per request",
            )
        others = self.num_engine_requests - ticket.weight
        if self.limit is not None and others + weight > self.limit:
            error, _ = self._full()
            raise error
        self.num_engine_requests = others + weight
        ticket.weight = weight

    def readable(self) -> tuple[ApiError, dict[str, str]] | None:
        """Why what is served cannot be read now (before the model is loaded), or None."""
        if self.service is not None and self._status.phase in LOADED_PHASES:
            return None
        message = f"the service is not ready: {self._status.phase.value}"
        return ApiError(ErrorKind.UNAVAILABLE, message), {"Retry-After": "5"}

    @contextmanager
    def admitted(self) -> Iterator[Ticket]:
        """Count a request in flight while the block runs."""
        ticket = Ticket(self)
        self.num_in_flight += 1
        self.num_engine_requests += ticket.weight
        self._idle.clear()
        try:
            yield ticket
        finally:
            self.num_in_flight -= 1
            self.num_engine_requests -= ticket.weight
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


def weigh(request: HTTPConnection | None, weight: int) -> None:
    """The request makes `weight` engine requests (see Admission.weigh); a request from the
    queue or the warm-up file has no ticket and nothing to weigh against."""
    if request is None or weight == 1:
        return
    ticket = request.scope.get("state", {}).get(TICKET_KEY)
    if ticket is not None:
        ticket.weigh(weight)


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
        if kind not in ("http", "websocket") or (route_path(scope), method) not in self.gated:
            await self.app(scope, receive, send)
            return
        is_websocket = kind == "websocket"
        is_work = is_websocket or method == "POST"
        admission = self.admission
        refusal = admission.refusal(bounded=not is_websocket) if is_work else admission.readable()
        span = trace.get_current_span()  # the request's span when tracing, else a no-op
        if refusal is not None:
            if span.is_recording():
                error = refusal[0]
                span.add_event("admission", {"admitted": False, "status": error.status})
            await refuse(scope, send, *refusal)
            return
        state = scope.setdefault("state", {})
        state[SERVICE_KEY] = admission.service
        if is_websocket or not is_work:
            await self.app(scope, receive, send)
            return
        with admission.admitted() as ticket:
            state[TICKET_KEY] = ticket
            if span.is_recording():
                span.add_event(
                    "admission",
                    {
                        "admitted": True,
                        "num_in_flight": admission.num_in_flight,
                        "num_engine_requests": admission.num_engine_requests,
                        "limit": admission.limit if admission.limit is not None else -1,
                    },
                )
            await self.app(scope, receive, send)
