"""Liveness and readiness probes (PROTOCOLS §6), with the aliases other servers use."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from processors.base import Processor
from runtime.admission import Admission
from runtime.api.framing import json_response
from runtime.config import ServerConfig
from runtime.phase import Phase, ServingStatus

LIVENESS_PATHS = ("/health", "/v1/health/live", "/v2/health/live")
READINESS_PATHS = ("/ready", "/v1/health/ready", "/v2/health/ready")


def probe_paths(server: ServerConfig) -> tuple[list[str], list[str]]:
    """Liveness and readiness paths, with the ones the deployment renamed them to."""
    liveness, readiness = list(LIVENESS_PATHS), list(READINESS_PATHS)
    if server.liveness_path and server.liveness_path not in liveness:
        liveness.append(server.liveness_path)
    if server.readiness_path and server.readiness_path not in readiness:
        readiness.append(server.readiness_path)
    return liveness, readiness


def health_router(
    server: ServerConfig, status: ServingStatus, admission: Admission, processor: Processor
) -> APIRouter:
    router = APIRouter()

    async def live() -> Response:
        """200 while the process and its engine live (loading included); 503 once dead."""
        if status.phase is Phase.FAILED:
            return json_response({"status": "dead", "phase": status.phase.value}, 503)
        try:
            await processor.check_health()
        except Exception as exc:
            return json_response({"status": "dead", "reason": str(exc)}, 503)
        body: dict = {"status": "alive", "phase": status.phase.value}
        if status.phase in (Phase.READY, Phase.DRAINING):
            stats = processor.stats()
            body.update(
                num_in_flight=admission.num_in_flight,  # requests
                num_engine_requests=admission.num_engine_requests,  # what they weigh
                num_running=stats.num_running,
                num_waiting=stats.num_waiting,
                kv_cache_usage=stats.kv_cache_usage,
            )
        return json_response(body)

    async def ready() -> Response:
        if status.is_ready:
            return json_response({"status": "ready"})
        body = {"status": "not ready", "phase": status.phase.value}
        if status.reason:
            body["reason"] = status.reason
        return json_response(body, 503)

    liveness, readiness = probe_paths(server)
    for path in liveness:
        router.add_api_route(path, live, methods=["GET"], summary="liveness")
    for path in readiness:
        router.add_api_route(path, ready, methods=["GET"], summary="readiness")
    return router
