"""`GET /metrics` (Prometheus text) and `GET /info` (what is being served, and how)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from processors.base import Processor
from runtime import __version__
from runtime.admission import Admission
from runtime.api.framing import json_response
from runtime.config import RuntimeConfig
from runtime.metrics import Metrics
from runtime.phase import LOADED_PHASES, Phase, ServingStatus


def introspection_router(
    config: RuntimeConfig,
    status: ServingStatus,
    admission: Admission,
    metrics: Metrics,
    processor: Processor,
) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics, with vLLM's names")
    async def render_metrics() -> Response:
        stats = processor.stats() if status.phase in LOADED_PHASES else None
        body = metrics.render(stats, admission.num_in_flight, status.phase is Phase.DRAINING)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @router.get("/info", summary="runtime, processor, model, GPUs and config in effect")
    async def info() -> Response:
        loaded = status.phase in LOADED_PHASES
        return json_response(
            {
                "runtime_version": __version__,
                "phase": status.phase.value,
                "processor": processor.info.name if loaded else config.processor,
                "model": processor.info.describe() if loaded else None,
                "gpus": status.host_facts.get("gpus"),
                "shared_memory": status.host_facts.get("shared_memory"),
                "config": config.redacted(),
            }
        )

    return router
