"""The platform's queue service API (PROTOCOLS §9), on the input queue and on its sink.

`POST /` and `POST /api/predict/<name>` enqueue the body and answer at once with its index, the
request id in `X-Eas-Queueservice-Request-Id`; query parameters become the item's tags, and
`_priority_` above 0 (or the priority header) puts it ahead of the normal ones.

On `/api/predict/<name>` (the input queue) and `/api/predict/<name>/sink` (the results), as the
platform's SDK (eas-prediction's QueueClient) speaks it:
  GET ?_attrs_=true                       the queue's attributes (JSON, or AttributesProto)
  GET ?requestId=ID | ?_index_=N          the request's entries, or `_length_` entries from
      [&_length_=&_timeout_=&_auto_delete_=&_raw_=]
                                          index N on (0: the head), waiting up to `_timeout_`
                                          (204 when none came); other parameters filter tags
  GET ?_search_=true&_index_=N            where entry N stands ({IsPending, WaitCount, ...})
  DELETE ?_indexes_=a,b | ?_index_=N&_trunc_=true      delete entries, or all below N
  PUT ?_indexes_=a,b                      commit: the entries are consumed and removed
  WebSocket ?_watch_=true&...             push entries as they come (queue_watch.py)
  POST on the sink                        append a frame, as a client may

A result in the sink has an index of its own, in the order results arrive; its tags are the
request's, `requestId`, `lastCode` (the HTTP status the synchronous route gave), and `attempt`
or `duplicate` for a re-run.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

from fastapi import APIRouter, Request, WebSocket
from starlette.responses import Response

from runtime.api.framing import json_response
from runtime.api.queue_frames import (
    PROTOBUF,
    attributes_proto,
    frame_json,
    frame_list_proto,
    parse_bool,
    parse_index,
    parse_indexes,
    parse_seconds,
    wants_protobuf,
)
from runtime.api.queue_watch import watch
from runtime.config import RuntimeConfig, ServerConfig
from runtime.errors import ApiError, ErrorKind, bad_request
from runtime.queue.base import Frame, ItemState, Stream, TaskQueue
from runtime.queue.workers import QueueWorkers, until_set

REQUEST_ID_HEADER = "X-Eas-Queueservice-Request-Id"
USER_HEADER = "X-EAS-QueueService-Redis-Uid"  # the SDK's identity: accepted, not needed here
GROUP_HEADER = "X-EAS-QueueService-Redis-Gid"
PRIORITY_HEADER = "X-EAS-QueueService-Priority"  # named in the attributes, where clients look
MAX_WAIT_S = 30.0  # a long poll ends by then; clients poll again
MAX_FRAMES = 1000  # entries one GET returns at most


def enqueue_router(server: ServerConfig, workers: QueueWorkers) -> APIRouter:
    router = APIRouter()

    async def enqueue(request: Request) -> Response:
        body = await request.body()
        content_type = request.headers.get("content-type", "")
        priority = _priority(request)
        item = await workers.enqueue(body, content_type, _tags(request.query_params), priority)
        return Response(
            str(item.index), 200, {REQUEST_ID_HEADER: item.request_id}, media_type="text/plain"
        )

    for path in server.platform_paths:
        router.add_api_route(
            path, enqueue, methods=["POST"], summary="asynchronous: enqueue the body"
        )
    return router


def queue_router(config: RuntimeConfig, workers: QueueWorkers) -> APIRouter:
    """Reading and editing both queues; served while loading and draining too, since what they
    touch is stored already."""
    router = APIRouter()
    input_path = config.server.platform_paths[1]
    paths = {Stream.INPUT: input_path, Stream.SINK: f"{input_path}/sink"}
    names = {
        Stream.INPUT: config.server.service_name,
        Stream.SINK: f"{config.server.service_name}/sink",
    }

    async def read(request: Request, stream: Stream) -> Response:
        params = request.query_params
        accept = request.headers.get("accept", "")
        if parse_bool(params.get("_attrs_")):
            attributes = await _attributes(config, workers, stream, names[stream])
            if wants_protobuf(accept):
                return Response(attributes_proto(attributes), 200, media_type=PROTOBUF)
            return json_response(attributes)
        if parse_bool(params.get("_search_")):
            return await _search(workers, stream, params)
        if parse_bool(params.get("_watch_")):
            raise bad_request("watch over a WebSocket: ws://...?_watch_=true", "_watch_")
        request_id = params.get("requestId")
        if not request_id and "_index_" not in params:
            raise bad_request("name the entries to get: requestId or _index_", "requestId")
        frames = await _get(workers, stream, params, request_id)
        headers = {REQUEST_ID_HEADER: request_id} if request_id else {}
        if frames is None:
            return Response(status_code=204, headers=headers)
        if parse_bool(params.get("_auto_delete_")):
            await workers.store.delete(stream, [frame.index for frame in frames])
        if parse_bool(params.get("_raw_")):
            return Response(frames[0].data, 200, headers, media_type="application/octet-stream")
        if wants_protobuf(accept):
            return Response(frame_list_proto(frames), 200, headers, media_type=PROTOBUF)
        return json_response([frame_json(frame) for frame in frames], 200, headers)

    async def delete(request: Request, stream: Stream) -> Response:
        params = request.query_params
        if parse_bool(params.get("_trunc_")):
            if "_index_" not in params:
                raise bad_request("truncating needs _index_: entries below it go", "_index_")
            await workers.store.truncate(stream, parse_index(params["_index_"], "_index_"))
        else:
            await workers.store.delete(stream, parse_indexes(params.get("_indexes_")))
        return Response("OK", 200, media_type="text/plain")

    async def commit(request: Request, stream: Stream) -> Response:
        params = request.query_params
        if parse_bool(params.get("_negative_")):
            raise bad_request("negative acknowledgements are not supported", "_negative_")
        # A committed entry is consumed: it leaves the queue, and no watcher gets it again.
        await workers.store.delete(stream, parse_indexes(params.get("_indexes_")))
        return Response("OK", 200, media_type="text/plain")

    async def put(request: Request) -> Response:
        frame = await workers.store.put(await request.body(), _tags(request.query_params))
        return Response(
            str(frame.index), 200, {REQUEST_ID_HEADER: frame.request_id}, media_type="text/plain"
        )

    for stream, path in paths.items():
        _add(router, path, "GET", read, stream, f"queue: read the {stream.value} queue")
        _add(router, path, "DELETE", delete, stream, f"queue: delete from the {stream.value}")
        _add(router, path, "PUT", commit, stream, f"queue: commit {stream.value} entries")

        async def watch_stream(websocket: WebSocket, stream: Stream = stream) -> None:
            await watch(websocket, workers, stream)

        router.add_api_websocket_route(path, watch_stream)
    router.add_api_route(paths[Stream.SINK], put, methods=["POST"], summary="queue: put a frame")
    return router


def _add(router: APIRouter, path: str, method: str, handler, stream: Stream, summary: str) -> None:
    async def endpoint(request: Request) -> Response:
        return await handler(request, stream)

    router.add_api_route(path, endpoint, methods=[method], summary=summary)


async def _get(
    workers: QueueWorkers, stream: Stream, params: Mapping[str, str], request_id: str | None
) -> list[Frame] | None:
    """The entries asked for, once there are some, or None after `_timeout_`."""
    timeout = min(parse_seconds(params.get("_timeout_") or "0", "_timeout_"), MAX_WAIT_S)
    length = min(max(parse_index(params.get("_length_"), "_length_", 1), 1), MAX_FRAMES)
    start = parse_index(params.get("_index_"), "_index_")
    wanted = _tags(params, keep_request_id=False)
    store = workers.store
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        change = workers.next_change(stream)  # before reading, so no change slips past
        frames = await _read(store, stream, request_id, start, length, wanted)
        if frames:
            return frames
        if request_id and await store.state(request_id) in (None, ItemState.DONE):
            # Nothing more will come, unless it came just now: one last look.
            frames = await _read(store, stream, request_id, start, length, wanted)
            if frames:
                return frames
            raise ApiError(
                ErrorKind.NOT_FOUND,
                f"no request {request_id} in the {stream.value} queue: it was never accepted, "
                "its result expired or was deleted, or it left the input queue",
                "requestId",
            )
        remaining = deadline - loop.time()
        if remaining <= 0:
            return None
        await until_set(change, remaining)


async def _read(
    store: TaskQueue,
    stream: Stream,
    request_id: str | None,
    start: int,
    length: int,
    wanted: Mapping[str, str],
) -> list[Frame]:
    if request_id:
        frames = await store.find(stream, request_id)
    else:
        frames = await store.frames(stream, start, length if not wanted else MAX_FRAMES)
    return [frame for frame in frames if _matches(frame, wanted)][:length]


async def _search(workers: QueueWorkers, stream: Stream, params: Mapping[str, str]) -> Response:
    if "_index_" not in params:
        raise bad_request("search needs _index_", "_index_")
    index = parse_index(params["_index_"], "_index_")
    missing = ApiError(ErrorKind.NOT_FOUND, f"no entry {index} in the {stream.value} queue")
    if stream is Stream.SINK:
        if not await workers.store.existing(stream, [index]):
            raise missing
        return json_response({"IsPending": False, "WaitCount": 0})
    position = await workers.store.position(index)
    if position is None:
        raise missing
    if position.state is ItemState.RUNNING:
        return json_response({"ConsumerId": position.consumer, "IsPending": False, "WaitCount": 0})
    return json_response({"IsPending": True, "WaitCount": position.num_ahead})


async def _attributes(
    config: RuntimeConfig, workers: QueueWorkers, stream: Stream, name: str
) -> dict[str, str]:
    """The attributes the platform's SDKs read, under the platform's names."""
    store = workers.store
    facts = await store.facts(stream)
    consumers = facts.num_consumers if stream is Stream.INPUT else workers.num_watchers
    attributes = {
        "meta.name": name,
        "meta.backend": store.backend,
        "meta.state": "Normal",
        "meta.maxPayloadBytes": str(config.lifecycle.max_body_bytes),
        "meta.header.user": USER_HEADER,
        "meta.header.group": GROUP_HEADER,
        "meta.header.priority": PRIORITY_HEADER,
        "stream.length": str(facts.length),
        "consumers.stats.total": str(consumers),
    }
    if stream is Stream.INPUT and workers.max_pending is not None:
        attributes["stream.approxMaxLength"] = str(workers.max_pending)
    if facts.first_index is not None and facts.last_index is not None:
        attributes["stream.firstEntry"] = str(facts.first_index)
        attributes["stream.lastEntry"] = str(facts.last_index)
    return attributes


def _priority(request: Request) -> int:
    """`_priority_` (the Python and Java SDKs) or the priority header (the Go SDK): a number,
    above 0 meaning ahead of the rest; `true` is 1."""
    text = request.query_params.get("_priority_") or request.headers.get(PRIORITY_HEADER) or "0"
    if text.lower() in ("true", "false"):
        return int(text.lower() == "true")
    try:
        return 1 if int(text) > 0 else 0
    except ValueError:
        raise bad_request(f"_priority_ must be an integer, got {text!r}", "_priority_") from None


def _tags(params: Mapping[str, str], keep_request_id: bool = True) -> dict[str, str]:
    """Query parameters that are tags: the platform's SDK sends them so; `_name_` are options."""
    return {
        key: value
        for key, value in params.items()
        if not key.startswith("_") and (keep_request_id or key != "requestId")
    }


def _matches(frame: Frame, wanted: Mapping[str, str]) -> bool:
    return all(frame.tags.get(key) == value for key, value in wanted.items())
