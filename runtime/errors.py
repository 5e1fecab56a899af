"""Every error a client can see, and the ONE table that maps it to an HTTP status.

Per-request errors (bad input, too long, timeout, ...) end one request; fatal engine errors mean
nothing more can be served. Routes raise `ApiError`; processor exceptions are translated here.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Iterable
from typing import Any

from processors.base import EngineDeadError, ProcessorError, ProcessorInputError

log = logging.getLogger(__name__)


class ErrorKind(enum.Enum):
    BAD_REQUEST = "invalid_request_error"
    UNAUTHORIZED = "authentication_error"
    NOT_FOUND = "not_found_error"
    TIMEOUT = "timeout_error"
    TOO_LARGE = "request_too_large"
    OVERLOADED = "rate_limit_error"
    QUEUE_FULL = "queue_full_error"
    UNAVAILABLE = "service_unavailable"
    ENGINE_DEAD = "engine_dead"
    CLIENT_CLOSED = "client_closed_request"
    INTERNAL = "internal_error"


HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.BAD_REQUEST: 400,
    ErrorKind.UNAUTHORIZED: 401,
    ErrorKind.NOT_FOUND: 404,
    ErrorKind.TIMEOUT: 408,
    ErrorKind.TOO_LARGE: 413,
    ErrorKind.OVERLOADED: 429,
    ErrorKind.QUEUE_FULL: 450,  # the platform's queue service answers a full queue so
    ErrorKind.UNAVAILABLE: 503,
    ErrorKind.ENGINE_DEAD: 503,
    ErrorKind.CLIENT_CLOSED: 499,  # nginx's code: nobody reads it, the logs and metrics do
    ErrorKind.INTERNAL: 500,
}


class ApiError(Exception):
    def __init__(self, kind: ErrorKind, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.param = param

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.kind]

    def body(self) -> dict:
        """The JSON error object used everywhere, inside streams too."""
        error = {"message": self.message, "type": self.kind.value, "code": self.status}
        if self.param:
            error["param"] = self.param
        return {"error": error}


class ShuttingDown(ApiError):
    """Work cut short because serving ends (the drain period ran out, the engine died): it was
    not the request's fault, and queued work goes back to the queue for the next start."""


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(ErrorKind.BAD_REQUEST, message, param)


def describe_validation_errors(errors: Iterable[Any]) -> str:
    """pydantic's error list as one sentence that names each field: `top_p: Input should...`."""
    problems = []
    for error in errors:
        if error.get("type") == "json_invalid":
            problems.append(f"the body is not valid JSON: {error.get('msg')}")
            continue
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        problems.append(f"{where}: {error.get('msg')}" if where else str(error.get("msg")))
    return "; ".join(problems) or "invalid request"


def from_exception(exc: BaseException) -> ApiError:
    """The ApiError a client sees for any exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ProcessorInputError):
        return ApiError(ErrorKind.BAD_REQUEST, str(exc))
    if isinstance(exc, EngineDeadError):
        return ShuttingDown(ErrorKind.ENGINE_DEAD, "the inference engine is not running")
    if isinstance(exc, ProcessorError):
        log.error("request failed in the processor: %s", exc)
        return ApiError(ErrorKind.INTERNAL, str(exc))
    log.exception("unexpected error while serving a request", exc_info=exc)
    return ApiError(ErrorKind.INTERNAL, "internal server error")
