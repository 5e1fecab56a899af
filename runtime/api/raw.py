"""Raw bodies in, raw bodies out: `POST /` and `/api/predict/<name>` for custom processors."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from processors.base import RawProcessor
from runtime.api.disconnect import unless_disconnected
from runtime.errors import ApiError, ErrorKind
from runtime.state import ServingState


def raw_router(state: ServingState, processor: RawProcessor) -> APIRouter:
    router = APIRouter()
    timeout = state.config.lifecycle.request_timeout

    async def predict(request: Request) -> Response:
        state.require_ready()
        body = await request.body()
        try:
            work = asyncio.wait_for(processor.process(body), timeout)
            data, status = await unless_disconnected(request, work)
        except TimeoutError:
            # The user's thread cannot be stopped; its answer, when it comes, is dropped.
            raise ApiError(
                ErrorKind.TIMEOUT,
                f"the processor took longer than the request timeout of {timeout:g} s",
            ) from None
        return Response(data, status, media_type="application/octet-stream")

    for path in state.config.server.platform_paths:
        router.add_api_route(
            path,
            predict,
            methods=["POST"],
            summary="the custom processor: request body in, its answer out",
        )
    return router
