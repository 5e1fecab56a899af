"""Answering from ASGI middleware, before any route runs."""

from __future__ import annotations

import orjson
from starlette.types import Send

from runtime.errors import ApiError


async def send_error(send: Send, error: ApiError, headers: dict[str, str] | None = None) -> None:
    body = orjson.dumps(error.body())
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": error.status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
