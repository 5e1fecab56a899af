"""What every app shares, whatever its processor: probes, introspection, auth, limits, metrics,
call records, the error mapping and the admission gate."""

from __future__ import annotations

import logging
from collections.abc import Collection
from dataclasses import dataclass, field

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from processors.base import Processor
from runtime import __version__
from runtime.admission import Admission, AdmissionMiddleware
from runtime.api.framing import json_response
from runtime.api.health import health_router, probe_paths
from runtime.api.introspection import introspection_router
from runtime.auth import TokenAuth
from runtime.body_limit import BodyLimitMiddleware
from runtime.call_log import CallLog, CallLogMiddleware
from runtime.config import RuntimeConfig
from runtime.errors import (
    HTTP_STATUS,
    ApiError,
    ErrorKind,
    bad_request,
    describe_validation_errors,
    from_exception,
)
from runtime.metrics import HttpMetricsMiddleware, Metrics
from runtime.phase import ServingStatus
from runtime.queue.workers import QueueWorkers
from runtime.tracing import Tracing, TracingMiddleware

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServingParts:
    """What the lifecycle makes before anything loads (no I/O), for every app to share."""

    config: RuntimeConfig
    status: ServingStatus
    metrics: Metrics
    admission: Admission
    call_log: CallLog | None = None
    queue: QueueWorkers | None = None  # --async: the platform routes enqueue
    tracing: Tracing = field(default_factory=Tracing)  # off unless an OTLP endpoint is given

    @classmethod
    def for_config(cls, config: RuntimeConfig, tracing: Tracing | None = None) -> ServingParts:
        """The parts `config` asks for; `tracing` replaces the OTLP exporter (tests)."""
        status, metrics = ServingStatus(), Metrics()
        # With --async, requests wait in the queue (450 when full), not in flight (429).
        max_waiting = None if config.queue.enabled else config.lifecycle.max_queue_size
        call_log = CallLog(config.call_log, config.server.token) if config.call_log.path else None
        queue = QueueWorkers.for_config(config, status, metrics) if config.queue.enabled else None
        if tracing is None:
            tracing = Tracing.for_endpoint(config.engine.traces_endpoint)
        admission = Admission(status, metrics, max_waiting)
        return cls(config, status, metrics, admission, call_log, queue, tracing)


def build_app(
    parts: ServingParts,
    processor: Processor,
    gated: list[APIRouter],
    pages: APIRouter | None = None,
    ungated: list[APIRouter] | None = None,
) -> FastAPI:
    """The app: the shared routes, `gated` (the served model's routes, behind the admission
    gate), `pages` (served without the token) and `ungated` routes, with every middleware."""
    config, status, admission = parts.config, parts.status, parts.admission
    http = config.http
    docs = not http.disable_fastapi_docs  # as vLLM's server: on unless disabled
    app = FastAPI(
        title="llm-runtime",
        version=__version__,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        openapi_url="/openapi.json" if docs else None,
        root_path=http.root_path,
    )
    app.include_router(health_router(config.server, status, admission, processor))
    app.include_router(introspection_router(config, status, admission, parts.metrics, processor))
    for router in gated:
        app.include_router(router)
    for router in [*(ungated or []), *([pages] if pages is not None else [])]:
        app.include_router(router)
    _add_error_handlers(app)
    # Starlette runs the last added middleware first: call records and HTTP metrics (which see
    # every answer), CORS (a preflight carries no token; a 401 needs CORS headers for the
    # browser to read it), body limit, auth, then admission.
    app.add_middleware(AdmissionMiddleware, admission=admission, gated=_endpoints(gated))
    server = config.server
    if server.token:
        liveness, readiness = probe_paths(server)
        open_paths = () if server.auth_health else (*liveness, *readiness, "/metrics")
        app.add_middleware(
            TokenAuth,
            token=server.token,
            open_paths=open_paths,
            open_pages=_paths([pages]) if pages is not None else (),
        )
    lifecycle = config.lifecycle
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=lifecycle.max_body_bytes,
        read_timeout=lifecycle.request_read_timeout,
    )
    if http.allowed_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(http.allowed_origins),
            allow_methods=list(http.allowed_methods),
            allow_headers=list(http.allowed_headers),
            allow_credentials=http.allow_credentials,
        )
    routes = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(HttpMetricsMiddleware, metrics=parts.metrics, routes=routes)
    if parts.call_log is not None:
        app.add_middleware(CallLogMiddleware, call_log=parts.call_log)
    if parts.tracing.tracer is not None:  # outermost: every other middleware runs in its span
        app.add_middleware(TracingMiddleware, tracer=parts.tracing.tracer, routes=routes)
    return app


def _paths(routers: Collection[APIRouter]) -> frozenset[str]:
    return frozenset(getattr(route, "path", "") for router in routers for route in router.routes)


def _endpoints(routers: Collection[APIRouter]) -> frozenset[tuple[str, str]]:
    """(path, method) of every route, "WEBSOCKET" as the method of a WebSocket route."""
    return frozenset(
        (route.path, method)
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute | APIWebSocketRoute)
        for method in (route.methods if isinstance(route, APIRoute) else ("WEBSOCKET",))
    )


def _add_error_handlers(app: FastAPI) -> None:
    async def on_api_error(request: Request, exc: Exception) -> Response:
        error = from_exception(exc)
        headers = {"Retry-After": "5"} if error.status in (429, 450, 503) else None
        return json_response(error.body(), error.status, headers)

    async def on_validation_error(request: Request, exc: Exception) -> Response:
        errors = exc.errors() if isinstance(exc, RequestValidationError) else []
        return await on_api_error(request, bad_request(describe_validation_errors(errors)))

    async def on_http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        detail = exc.detail if isinstance(exc, HTTPException) else "not found"
        # Starlette's own 404/405 and the body limit's 413: same JSON shape, status kept.
        kind = next((k for k, code in HTTP_STATUS.items() if code == status), ErrorKind.BAD_REQUEST)
        error = ApiError(kind, f"{request.method} {request.url.path}: {detail}")
        return json_response({"error": {**error.body()["error"], "code": status}}, status)

    async def on_client_gone(request: Request, exc: Exception) -> Response:
        # The client left while sending its request: not the server's fault, and nothing to
        # answer. Recorded as 499, one line, no traceback (a handler of its own keeps it from
        # Starlette's error middleware, which would log one).
        log.info(
            "%s %s: the client left before its request arrived whole",
            request.method,
            request.url.path,
        )
        error = ApiError(ErrorKind.CLIENT_CLOSED, "the client left before its request arrived")
        return json_response(error.body(), error.status)

    app.add_exception_handler(ClientDisconnect, on_client_gone)
    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_api_error)
