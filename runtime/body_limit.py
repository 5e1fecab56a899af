"""Refuses bodies larger than the limit (413) before they are read into memory and parsed."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from runtime.asgi import send_error
from runtime.errors import ApiError, ErrorKind


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

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

        async def counting_receive() -> Message:
            # Bodies without a Content-Length (chunked) are counted as they arrive.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise HTTPException(413, self.too_large(received).message)
            return message

        await self.app(scope, counting_receive, send)

    def too_large(self, size: int) -> ApiError:
        return ApiError(
            ErrorKind.TOO_LARGE,
            f"the request body is {size} bytes, over the limit of {self.max_body_bytes} bytes",
        )
