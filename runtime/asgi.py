"""Answering from ASGI middleware, before any route runs."""

from __future__ import annotations

import orjson
from starlette.types import Scope, Send

from runtime.errors import ApiError

# When a server cannot send an HTTP answer to a refused WebSocket handshake, the nearest close
# code says it instead: 1008 policy violation (auth), 1013 try again later (not ready, full).
WEBSOCKET_CLOSE_CODES = {401: 1008, 429: 1013, 503: 1013}


def route_path(scope: Scope) -> str:
    """The path as the routes know it. Behind a proxy with --root-path, a request arrives
    with the prefix (the proxy kept it) or without (the proxy stripped it); the router
    matches both, and so must every middleware that looks at the path (Starlette's rule)."""
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("/", ""):
        return path[len(root) :] or "/"
    return path


async def send_error(
    send: Send, error: ApiError, headers: dict[str, str] | None = None, prefix: str = ""
) -> None:
    """The JSON error as an HTTP answer; `prefix` "websocket." refuses a handshake with it."""
    body = orjson.dumps(error.body())
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    start = {"type": f"{prefix}http.response.start", "status": error.status}
    await send({**start, "headers": raw_headers})
    await send({"type": f"{prefix}http.response.body", "body": body})


async def refuse(
    scope: Scope, send: Send, error: ApiError, headers: dict[str, str] | None = None
) -> None:
    """Answer an HTTP request, or refuse a WebSocket handshake, with the error."""
    if scope["type"] != "websocket":
        await send_error(send, error, headers)
    elif "websocket.http.response" in scope.get("extensions", {}):  # uvicorn has it
        await send_error(send, error, headers, prefix="websocket.")
    else:
        code = WEBSOCKET_CLOSE_CODES.get(error.status, 1011)
        await send({"type": "websocket.close", "code": code, "reason": error.message})
