"""Limits on a request body: its size (413, before it is read into memory and parsed) and the
time it takes to arrive (408: a client that stops sending does not hold a request for ever)."""

from __future__ import annotations

import asyncio

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.asgi import send_error
from runtime.errors import ApiError, ErrorKind


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int, read_timeout: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_body_bytes
        for name, value in scope["headers"]:
            if name == b"content-length" and value.isdigit() and int(value) > limit:
                await send_error(send, self.too_large(int(value)))
                return
        received = 0
        deadline: float | None = None  # set when the app first asks for the body
        complete = False
        loop = asyncio.get_running_loop()

        async def limited_receive() -> Message:
            # Bodies without a Content-Length (chunked) are counted as they arrive.
            nonlocal received, deadline, complete
            if complete:  # the body is in: what comes now is the disconnect, whenever
                return await receive()
            if deadline is None:
                deadline = loop.time() + self.read_timeout
            try:
                message = await asyncio.wait_for(receive(), max(deadline - loop.time(), 0))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"the request body did not arrive within {self.read_timeout:g} s",
                ) from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self.too_large(received).message)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, limited_receive, send)

    def too_large(self, size: int) -> ApiError:
        return ApiError(
            ErrorKind.TOO_LARGE,
            f"the request body is {size} bytes, over the limit of {self.max_body_bytes} bytes",
        )
