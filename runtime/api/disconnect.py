"""Non-streaming requests stop when their client leaves, so the engine frees their KV cache.

(A stream needs no help: Starlette closes its generator when a write fails, and closing the
generator aborts the request.)
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

from starlette.requests import Request

from runtime.errors import ApiError, ErrorKind

T = TypeVar("T")


async def unless_disconnected(request: Request | None, work: Awaitable[T]) -> T:
    """`work`'s result, or ApiError 499 once the request's client has left (no request: the
    work has no client to lose, as a queued one)."""
    if request is None:
        return await work
    task = asyncio.ensure_future(work)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if task.done():
        return task.result()
    task.cancel()  # closes the generation, which aborts it in the engine
    with contextlib.suppress(asyncio.CancelledError):
        await task
    raise ApiError(ErrorKind.CLIENT_CLOSED, "the client closed the connection")


async def _disconnected(request: Request) -> None:
    # The body has been read by now, so the next message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass
