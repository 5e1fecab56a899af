"""Bytes on the wire: JSON bodies, SSE events, NUL-delimited JSON, and stream priming."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar

import orjson
from starlette.responses import Response, StreamingResponse

T = TypeVar("T")

SSE_DONE = b"data: [DONE]\n\n"
# A comment line: SSE clients skip it, proxies see bytes and keep the connection.
SSE_KEEP_ALIVE = b": keep-alive\n\n"
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


async def sse_stream(
    events_of: Callable[[AsyncGenerator[T, None]], AsyncIterator[bytes]],
    items: AsyncGenerator[T, None],
    keep_alive: float,
) -> StreamingResponse:
    """The SSE answer `events_of(items)`, primed (see `primed`) for up to `keep_alive` seconds.

    A request that waits longer for its first item (queued in the engine behind others) is
    answered at once: headers, then a comment every `keep_alive` seconds until the first item,
    so that proxies with idle timeouts keep the connection. An error before the first item is
    then an error event, like any error once streaming has started; one that comes sooner is
    still an HTTP status. `keep_alive` 0: always primed, never a comment."""
    if keep_alive <= 0:
        return sse_response(events_of(await primed(items)))
    first = asyncio.ensure_future(anext(items))
    try:
        await asyncio.wait({first}, timeout=keep_alive)
    except BaseException:
        await _close(first, items)
        raise
    if not first.done():
        return sse_response(_keep_alive_until(first, items, events_of, keep_alive))
    try:
        item = first.result()
    except StopAsyncIteration:
        return sse_response(events_of(_empty()))
    except BaseException:
        await items.aclose()
        raise
    return sse_response(events_of(_chain(item, items)))


async def _keep_alive_until(
    first: asyncio.Future,
    rest: AsyncGenerator[T, None],
    events_of: Callable[[AsyncGenerator[T, None]], AsyncIterator[bytes]],
    interval: float,
) -> AsyncGenerator[bytes, None]:
    try:
        yield SSE_KEEP_ALIVE  # the first item is late already: the answer starts now
        while not first.done():
            done, _ = await asyncio.wait({first}, timeout=interval)
            if not done:
                yield SSE_KEEP_ALIVE
        async for event in events_of(_resumed(first, rest)):
            yield event
    finally:
        await _close(first, rest)


async def _resumed(first: asyncio.Future, rest: AsyncGenerator[T, None]) -> AsyncGenerator[T, None]:
    """The first item's outcome (an item, the end, or its error, raised here so that the
    events' own error handling sees it), then the rest."""
    try:
        item = first.result()
    except StopAsyncIteration:
        return
    yield item
    async for item in rest:
        yield item


async def _close(first: asyncio.Future, items: AsyncGenerator[Any, None]) -> None:
    """Stop waiting for the first item (a client that left), then close the items, which
    aborts their request."""
    if not first.done():
        first.cancel()
        with contextlib.suppress(BaseException):
            await first
    elif not first.cancelled():
        first.exception()  # retrieved: an error nobody will see is not logged as lost
    await items.aclose()


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
