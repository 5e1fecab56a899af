"""Liveness and readiness probes (PROTOCOLS §6), with the aliases other servers use."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from runtime.api.framing import json_response
from runtime.state import Phase, ServingState

LIVENESS_PATHS = ("/health", "/v1/health/live", "/v2/health/live")
READINESS_PATHS = ("/ready", "/v1/health/ready", "/v2/health/ready")


def health_router(state: ServingState) -> APIRouter:
    router = APIRouter()

    async def live() -> Response:
        if state.phase is Phase.FAILED:
            return json_response({"status": "dead"}, 503)
        try:
            await state.processor.check_health()
        except Exception as exc:
            return json_response({"status": "dead", "reason": str(exc)}, 503)
        return json_response({"status": "alive", "phase": state.phase.value})

    async def ready() -> Response:
        if state.is_ready:
            return json_response({"status": "ready"})
        return json_response({"status": "not ready", "phase": state.phase.value}, 503)

    for path in LIVENESS_PATHS:
        router.add_api_route(path, live, methods=["GET"], summary="liveness")
    for path in READINESS_PATHS:
        router.add_api_route(path, ready, methods=["GET"], summary="readiness")
    return router
