"""`GET /metrics` (Prometheus text) and `GET /info` (what is being served, and how)."""

from __future__ import annotations

from fastapi import APIRouter
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.responses import Response

from runtime import __version__
from runtime.admission import Admission
from runtime.api.framing import json_response
from runtime.state import SERVING_PHASES, Phase, ServingState


def introspection_router(state: ServingState, admission: Admission) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", summary="Prometheus metrics, with vLLM's names")
    async def metrics() -> Response:
        stats = state.processor.stats() if state.phase in SERVING_PHASES else None
        body = state.metrics.render(stats, admission.num_in_flight, state.phase is Phase.DRAINING)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    @router.get("/info", summary="runtime, processor, model, GPUs and config in effect")
    async def info() -> Response:
        model = None
        if state.phase in SERVING_PHASES:
            processor = state.processor.info
            model = {
                "name": processor.model_name,
                "path": processor.model_path,
                "max_context": processor.max_model_len or None,
                "dtype": processor.dtype,
            }
        return json_response(
            {
                "runtime_version": __version__,
                "phase": state.phase.value,
                "processor": state.config.processor if model is None else state.processor.info.name,
                "model": model,
                "gpus": state.host_facts.get("gpus"),
                "shared_memory": state.host_facts.get("shared_memory"),
                "config": state.config.redacted(),
            }
        )

    return router
