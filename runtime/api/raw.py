"""Raw bodies in, raw bodies out: `POST /` and `/api/predict/<name>` for custom processors."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from processors.base import RawProcessor
from runtime.admission import admitted_service
from runtime.api.disconnect import unless_disconnected
from runtime.config import ServerConfig
from runtime.errors import ApiError, ErrorKind, ShuttingDown, bad_request, from_exception


class RawService:
    """A raw processor's calls: each bounded by the request timeout, and all cut short at once
    when serving ends. A user's thread cannot be stopped: its answer, when it comes, is dropped."""

    def __init__(self, processor: RawProcessor, request_timeout: float | None) -> None:
        self.processor = processor
        self.request_timeout = request_timeout
        self._cut_short: set[asyncio.Future] = set()

    async def process(self, body: bytes) -> tuple[bytes, int]:
        cut_short = asyncio.get_running_loop().create_future()
        self._cut_short.add(cut_short)
        call = asyncio.ensure_future(self.processor.process(body))
        try:
            done, _ = await asyncio.wait(
                {call, cut_short}, timeout=self.request_timeout, return_when="FIRST_COMPLETED"
            )
            if call in done:
                return call.result()
            if cut_short in done:
                raise cut_short.result()
            raise ApiError(
                ErrorKind.TIMEOUT,
                f"the processor took longer than the request timeout of {self.request_timeout:g} s",
            )
        finally:
            self._cut_short.discard(cut_short)
            if not call.done():
                call.cancel()  # its thread runs on; nobody waits for it
                with contextlib.suppress(asyncio.CancelledError):
                    await call

    def abort_all(self, reason: ApiError) -> int:
        """End every call in progress with `reason`; how many there were."""
        waiting = [future for future in self._cut_short if not future.done()]
        for future in waiting:
            future.set_result(reason)
        return len(waiting)


async def answer_raw(service: RawService, body: bytes, content_type: str) -> tuple[bytes, int]:
    """What `POST /` answers this body (queued requests are answered so). Raises ShuttingDown
    when serving ends first, so the work is not lost."""
    try:
        return await service.process(body)
    except ShuttingDown:
        raise
    except Exception as exc:
        error = from_exception(exc)
        return orjson.dumps(error.body()), error.status


# A route parameter of this type receives the service from the admission gate.
AdmittedRaw = Annotated[RawService, Depends(admitted_service)]


def raw_router(config: ServerConfig) -> APIRouter:
    router = APIRouter()

    async def predict(request: Request, service: AdmittedRaw) -> Response:
        body = await request.body()
        data, status = await unless_disconnected(request, service.process(body))
        return Response(data, status, media_type="application/octet-stream")

    for path in config.platform_paths:
        router.add_api_route(
            path,
            predict,
            methods=["POST"],
            summary="the custom processor: request body in, its answer out",
        )
    return router


def llm_routes_explained(config: ServerConfig) -> APIRouter:
    """The LLM routes of a raw app answer 400 saying where its requests go."""
    router = APIRouter()

    async def explain() -> Response:
        raise bad_request(
            "this service runs a custom processor: send the request body to POST / or "
            f"{config.platform_paths[1]}"
        )

    for path, method in LLM_ROUTES:
        router.add_api_route(path, explain, methods=[method], include_in_schema=False)
    return router


LLM_ROUTES = (
    ("/v1/models", "GET"),
    ("/v1/chat/completions", "POST"),
    ("/v1/completions", "POST"),
    ("/tokenize", "POST"),
    ("/detokenize", "POST"),
)
