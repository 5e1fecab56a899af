"""A route's answer to a body as bytes and a status, for requests that come from the queue or
the warm-up file rather than an HTTP client: the same code answers, without a second app."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.responses import Response, StreamingResponse

from runtime.errors import ShuttingDown, bad_request, describe_validation_errors, from_exception

# (body, content type) -> (answer's bytes, HTTP status); raises ShuttingDown only.
Answer = Callable[[bytes, str], Awaitable[tuple[bytes, int]]]
Body = TypeVar("Body", bound=BaseModel)


def openai_answer(
    model: type[Body], handler: Callable[[Any, Body], Awaitable[Response]], service: Any
) -> Answer:
    """An OpenAI route's answer: the JSON body validated as the route validates it, then its
    handler's response, a stream read to its end."""

    async def answer(body: bytes, content_type: str = "application/json") -> tuple[bytes, int]:
        try:
            try:
                request = model.model_validate_json(body)
            except ValidationError as exc:
                raise bad_request(describe_validation_errors(exc.errors())) from exc
            response = await handler(service, request)
            return await collect(response), response.status_code
        except ShuttingDown:
            raise
        except Exception as exc:
            error = from_exception(exc)
            return orjson.dumps(error.body()), error.status

    return answer


async def collect(response: Response) -> bytes:
    if isinstance(response, StreamingResponse):
        parts = []
        async for part in response.body_iterator:
            parts.append(part if isinstance(part, bytes) else str(part).encode())
        return b"".join(parts)
    return bytes(response.body)
