"""`build_app(state)`: the ASGI app with every API family, auth and the error mapping."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import Response

from processors.base import RawProcessor
from runtime import __version__
from runtime.admission import Admission, AdmissionMiddleware
from runtime.api.chatllm import chatllm_router
from runtime.api.chatllm_ws import chatllm_websocket_router
from runtime.api.framing import json_response
from runtime.api.health import health_router, probe_paths
from runtime.api.introspection import introspection_router
from runtime.api.openai_chat import openai_chat_router
from runtime.api.openai_completions import completions_router
from runtime.api.queue import queue_router
from runtime.api.raw import raw_router
from runtime.api.webui import PAGE_PATHS, serves_webui, webui_router
from runtime.auth import TokenAuth
from runtime.body_limit import BodyLimitMiddleware
from runtime.call_log import CallLogMiddleware
from runtime.errors import (
    HTTP_STATUS,
    ApiError,
    ErrorKind,
    bad_request,
    describe_validation_errors,
    from_exception,
)
from runtime.metrics import HttpMetricsMiddleware
from runtime.queue import open_queue
from runtime.queue.workers import QueueWorkers
from runtime.state import ServingState


def build_app(state: ServingState) -> FastAPI:
    """The app; `app.state.admission` counts and gates the requests in flight."""
    # With --async, max_queue_size bounds the queue (450), not the requests in flight (429).
    max_waiting = None if state.config.queue.enabled else state.config.lifecycle.max_queue_size
    admission = Admission(state, max_waiting)
    if isinstance(state.processor, RawProcessor):  # a custom processor owns the platform routes
        platform = raw_router(state, state.processor)
    else:
        platform = chatllm_router(state)
    queue = None
    if state.config.queue.enabled:  # the platform routes enqueue; workers call `platform`
        handler = FastAPI(openapi_url=None)  # reached only in-process, by the workers
        handler.include_router(platform)
        _add_error_handlers(handler)
        queue = QueueWorkers(
            state, open_queue(state.config), handler, admission, state.config.queue.result_ttl
        )
    app = FastAPI(
        title="llm-runtime",
        version=__version__,
        docs_url=None,
        redoc_url=None,
        lifespan=queue.lifespan if queue else None,
    )
    app.state.serving = state
    app.state.admission = admission
    app.state.queue = queue
    app.include_router(health_router(state, admission))
    app.include_router(introspection_router(state, admission))
    app.include_router(openai_chat_router(state))
    app.include_router(completions_router(state))
    app.include_router(queue_router(state, queue, admission) if queue else platform)
    if not isinstance(state.processor, RawProcessor):  # WebSocket chat stays synchronous
        app.include_router(chatllm_websocket_router(state, admission))
    webui = serves_webui(state)
    if webui:
        app.include_router(webui_router())
    _add_error_handlers(app)
    # Starlette runs the last added middleware first: call records and HTTP metrics (which see
    # every answer), body limit, auth, then admission.
    app.add_middleware(AdmissionMiddleware, admission=admission)
    server = state.config.server
    if server.token:
        liveness, readiness = probe_paths(state)
        open_paths = () if server.auth_health else (*liveness, *readiness, "/metrics")
        open_pages = PAGE_PATHS if webui else ()
        app.add_middleware(
            TokenAuth, token=server.token, open_paths=open_paths, open_pages=open_pages
        )
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=state.config.lifecycle.max_body_bytes)
    routes = frozenset(getattr(route, "path", "") for route in app.routes)
    app.add_middleware(HttpMetricsMiddleware, metrics=state.metrics, routes=routes)
    if state.call_log is not None:
        app.add_middleware(CallLogMiddleware, call_log=state.call_log)
    return app


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

    app.add_exception_handler(ApiError, on_api_error)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(HTTPException, on_http_error)
    app.add_exception_handler(Exception, on_api_error)
