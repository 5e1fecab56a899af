"""Bytes on the wire: JSON bodies, SSE events, NUL-delimited JSON, and stream priming."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any, TypeVar

import orjson
from starlette.responses import Response, StreamingResponse

T = TypeVar("T")

SSE_DONE = b"data: [DONE]\n\n"
STREAM_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def json_response(body: Any, status: int = 200, headers: dict | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def sse_event(body: Any) -> bytes:
    return b"data: " + orjson.dumps(body) + b"\n\n"


def sse_head(head: dict) -> bytes:
    """The start of every event of a stream whose events all begin with `head`'s fields,
    serialized once per stream instead of once per token (see `sse_event_after`)."""
    return b"data: " + orjson.dumps(head)[:-1] + b","


def sse_event_after(head: bytes, rest: dict) -> bytes:
    """The same bytes as `sse_event({**head_fields, **rest})`, for a non-empty `rest` whose
    keys are not among the head's."""
    return head + orjson.dumps(rest)[1:] + b"\n\n"


def nul_record(body: Any) -> bytes:
    return orjson.dumps(body) + b"\0"


def sse_response(events: AsyncIterator[bytes]) -> StreamingResponse:
    return StreamingResponse(events, media_type="text/event-stream", headers=STREAM_HEADERS)


def nul_response(records: AsyncIterator[bytes]) -> StreamingResponse:
    # The platform's clients split on NUL; SSE content types would make proxies reframe it.
    return StreamingResponse(records, media_type="application/octet-stream", headers=STREAM_HEADERS)


async def primed(items: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """Wait for the first item before answering, so that an error the engine raises at once
    (a rejected prompt, a dead engine) is a proper HTTP status and not a 200 stream."""
    try:
        first = await anext(items)
    except StopAsyncIteration:
        return _empty()
    except BaseException:
        await items.aclose()
        raise
    return _chain(first, items)


async def _chain(first: T, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    try:
        yield first
        async for item in rest:
            yield item
    finally:
        await rest.aclose()


async def _empty() -> AsyncGenerator[Any, None]:
    return
    yield
