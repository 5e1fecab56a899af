"""Service-token check (PROTOCOLS §1) as ASGI middleware, so every route family is covered."""

from __future__ import annotations

import hmac
from collections.abc import Collection

from starlette.types import ASGIApp, Receive, Scope, Send

from runtime.asgi import refuse, route_path
from runtime.errors import ApiError, ErrorKind


def token_matches(header: str | None, token: str) -> bool:
    """Accept `<token>` and `Bearer <token>`; compare in constant time."""
    if not header:
        return False
    given = header[7:] if header[:7].lower() == "bearer " else header
    return hmac.compare_digest(given.strip().encode(), token.encode())


class TokenAuth:
    """`open_paths` need no token; `open_pages` need none for an HTTP GET only (the web page,
    whose user types the token into it), so `POST /` and WebSockets there still need it."""

    def __init__(
        self,
        app: ASGIApp,
        token: str,
        open_paths: Collection[str],
        open_pages: Collection[str] = (),
    ) -> None:
        self.app = app
        self._token = token
        self._open_paths = frozenset(open_paths)
        self._open_pages = frozenset(open_pages)

    def _is_open(self, scope: Scope) -> bool:
        if scope["type"] not in ("http", "websocket"):
            return True
        path = route_path(scope)
        if path in self._open_paths:
            return True
        return scope["type"] == "http" and scope["method"] == "GET" and path in self._open_pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._is_open(scope):
            await self.app(scope, receive, send)
            return
        header = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        if token_matches(header, self._token):
            await self.app(scope, receive, send)
            return
        message = "missing Authorization header" if header is None else "invalid service token"
        error = ApiError(ErrorKind.UNAUTHORIZED, message)
        await refuse(scope, send, error, {"WWW-Authenticate": "Bearer"})
