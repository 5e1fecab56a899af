"""The platform's asynchronous API (PROTOCOLS §9) on the service routes.

`POST /` and `POST /api/predict/<name>` enqueue the body and answer at once with its queue
index, the request id in `X-Eas-Queueservice-Request-Id`. `GET /api/predict/<name>/sink
?requestId=<id>` answers 204 until the result is in, then `[{"index", "data": <base64>, "tags":
{"requestId", "lastCode", ...}}]`; `lastCode` is the HTTP status the synchronous route gave.
The sink also takes the platform's `_timeout_` (wait that long for the result before the 204),
`_auto_delete_` (delete the result once read) and `_raw_=true` (the result's bytes alone).
"""

from __future__ import annotations

import base64
import re

from fastapi import APIRouter, Request
from starlette.responses import Response

from runtime.api.framing import json_response
from runtime.config import ServerConfig
from runtime.errors import ApiError, ErrorKind, bad_request
from runtime.queue.base import ItemState, ItemStatus
from runtime.queue.workers import QueueWorkers

REQUEST_ID_HEADER = "X-Eas-Queueservice-Request-Id"
PROTOBUF = "application/vnd.google.protobuf"  # what the platform's own SDK asks the sink for
MAX_SINK_WAIT_S = 30.0  # a long poll ends by then; clients poll again
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?)\s*(ms|s|m)?\s*$")


def enqueue_router(server: ServerConfig, workers: QueueWorkers) -> APIRouter:
    router = APIRouter()

    async def enqueue(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        params = request.query_params
        # The platform's SDK sends its tags as query parameters; `_name_` ones are options.
        tags = {key: value for key, value in params.items() if not key.startswith("_")}
        priority = 1 if params.get("_priority_", "0").lower() in ("1", "true") else 0
        item = await workers.enqueue(body, content_type, tags, priority)
        return Response(
            str(item.index), 200, {REQUEST_ID_HEADER: item.request_id}, media_type="text/plain"
        )

    for path in server.platform_paths:
        router.add_api_route(
            path, enqueue, methods=["POST"], summary="asynchronous: enqueue the body"
        )
    return router


def sink_router(server: ServerConfig, workers: QueueWorkers) -> APIRouter:
    router = APIRouter()

    async def sink(request: Request) -> Response:
        params = request.query_params
        request_id = params.get("requestId")
        if not request_id:
            raise bad_request("the sink needs the requestId query parameter", "requestId")
        timeout = min(_seconds(params.get("_timeout_", "0")), MAX_SINK_WAIT_S)
        delete = params.get("_auto_delete_", "false").lower() == "true"
        status = await workers.wait_for_result(request_id, timeout, delete)
        if status is None:
            raise ApiError(
                ErrorKind.NOT_FOUND,
                f"no request {request_id} in the queue: it was never accepted, or its result "
                "expired or was deleted",
                "requestId",
            )
        if status.state is not ItemState.DONE:
            return Response(status_code=204, headers={REQUEST_ID_HEADER: request_id})
        data = status.data or b""
        headers = {REQUEST_ID_HEADER: request_id}
        if params.get("_raw_", "false").lower() == "true":
            return Response(data, 200, headers, media_type="application/octet-stream")
        if PROTOBUF in request.headers.get("accept", ""):
            return Response(_dataframes(status), 200, headers, media_type=PROTOBUF)
        frame = {
            "index": status.index,
            "data": base64.b64encode(data).decode(),
            "tags": _tags(status),
        }
        return json_response([frame], 200, headers)

    router.add_api_route(
        f"{server.platform_paths[1]}/sink",
        sink,
        methods=["GET"],
        summary="asynchronous: a queued result",
    )
    return router


def _seconds(text: str) -> float:
    """The platform writes durations as `5s`; plain numbers are seconds."""
    match = _DURATION.match(text)
    if match is None:
        raise bad_request(f"_timeout_ must be a duration such as 5s, got {text!r}", "_timeout_")
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1.0, "m": 60.0}[unit]


def _tags(status: ItemStatus) -> dict[str, str]:
    return {**status.tags, "requestId": status.request_id, "lastCode": str(status.status)}


def _dataframes(status: ItemStatus) -> bytes:
    """The sink's answer as the platform's DataFrameListProto (package `streaming`), which its
    Python SDK decodes: one DataFrameProto {index = 1, tags = 2 (map), data = 3}."""
    tags = b"".join(
        _field(2, _field(1, key.encode()) + _field(2, value.encode()))
        for key, value in _tags(status).items()
    )
    frame = _tag(1, 0) + _varint(status.index) + tags + _field(3, status.data or b"")
    return _field(1, frame)


def _field(number: int, payload: bytes) -> bytes:
    return _tag(number, 2) + _varint(len(payload)) + payload


def _tag(number: int, wire_type: int) -> bytes:
    return _varint(number << 3 | wire_type)


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)
