"""uvicorn, as the lifecycle runs it: its own signal handling off, and a deadline for requests
that never finish arriving.

uvicorn times out a connection only between requests (keep-alive). A client that connects and
sends nothing, or half its headers, would hold its connection (and a file descriptor) for ever;
so each request's headers must arrive within `header_timeout` of its first byte (of the
connection, for the first request), or the connection is answered 408 and closed. The body's own
deadline is the ASGI layer's (runtime/body_limit.py), where it can be answered and recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_LATE = b'{"error": {"message": "the request headers did not arrive in time", "code": 408}}'
HEADERS_LATE_ANSWER = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"connection: close\r\ncontent-length: %d\r\n\r\n%s" % (len(_LATE), _LATE)
)


class HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the lifecycle drains on SIGTERM, and uvicorn
    would also re-raise the signal once serving ends, killing the process before the engine
    (and its child processes) is shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def protocol_with_header_timeout(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools) with a deadline on each request's headers."""

    class HeaderTimeoutProtocol(HttpToolsProtocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm_header_timer()

        def on_headers_complete(self) -> None:
            self._cancel_header_timer()
            super().on_headers_complete()

        def _arm_header_timer(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            # Only a connection with no request in progress (none yet, or between two) is
            # closed: a request being answered is the body deadline's and the app's business.
            if self.cycle is not None and not self.cycle.response_complete:
                return
            if not self.transport.is_closing():
                self.transport.write(HEADERS_LATE_ANSWER)
                self.transport.close()

    return HeaderTimeoutProtocol
