"""The queue service's watch: a WebSocket that pushes a queue's entries as they come.

`?_watch_=true&_index_=N&_window_=W&_index_only_=&_auto_commit_=` (plus tags to filter on), as
the platform's SDK opens it: each entry from index N on (0: the head) goes out once, in index
order, as a binary DataFrameProto frame (JSON text frames if the client accepts only JSON).
With `_auto_commit_=true` an entry is committed (removed from the queue) as it is sent; else at
most W sent entries wait for the client's commit (PUT ?_indexes_=, from any connection to any
runtime), and the watch sends more as they are committed. A client that reconnects after a
break gets every entry it had not committed again: delivery to a watcher is at least once.

Each watch reads the whole queue from its index; watchers do not share entries between them.
The watch ends when the runtime stops (close code 1001), and the SDK reconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from asyncio import FIRST_COMPLETED

from starlette.websockets import WebSocket, WebSocketDisconnect

from runtime.api.queue_frames import frame_json, frame_proto, parse_bool, parse_index
from runtime.errors import ApiError, bad_request
from runtime.queue.base import Frame, QueueUnavailableError, Stream, TaskQueue
from runtime.queue.workers import IDLE_POLL_S, QueueWorkers

log = logging.getLogger(__name__)

BATCH = 100  # entries read at a time when the window allows
GOING_AWAY = 1001
POLICY_VIOLATION = 1008
TRY_AGAIN_LATER = 1013


async def watch(websocket: WebSocket, workers: QueueWorkers, stream: Stream) -> None:
    params = websocket.query_params
    try:
        if not parse_bool(params.get("_watch_")):
            raise bad_request("a WebSocket on a queue watches it: add _watch_=true", "_watch_")
        start = parse_index(params.get("_index_"), "_index_")
        window = parse_index(params.get("_window_"), "_window_")  # 0: no limit
        store = workers.store
    except ApiError as error:  # refused before the handshake: the client sees a 403
        await websocket.close(POLICY_VIOLATION, error.message[:120])
        return
    accept = websocket.headers.get("accept", "")
    watcher = Watcher(
        websocket,
        store,
        workers,
        stream,
        start,
        window,
        index_only=parse_bool(params.get("_index_only_")),
        auto_commit=parse_bool(params.get("_auto_commit_")),
        wanted={key: value for key, value in params.items() if not key.startswith("_")},
        as_json="json" in accept and "protobuf" not in accept,
    )
    await websocket.accept()
    workers.num_watchers += 1
    receiving = asyncio.create_task(_until_closed(websocket), name="queue-watch-receive")
    try:
        await watcher.run(receiving)
    except (WebSocketDisconnect, RuntimeError, OSError):
        pass  # the client left
    finally:
        workers.num_watchers -= 1
        receiving.cancel()


class Watcher:
    def __init__(
        self,
        websocket: WebSocket,
        store: TaskQueue,
        workers: QueueWorkers,
        stream: Stream,
        start: int,
        window: int,
        *,
        index_only: bool,
        auto_commit: bool,
        wanted: dict[str, str],
        as_json: bool,
    ) -> None:
        self.websocket = websocket
        self.store = store
        self.workers = workers
        self.stream = stream
        self.next_index = start
        self.window = window
        self.index_only = index_only
        self.auto_commit = auto_commit
        self.wanted = wanted
        self.as_json = as_json
        self.uncommitted: set[int] = set()

    async def run(self, receiving: asyncio.Task) -> None:
        while not receiving.done():
            if self.workers.is_stopping:
                await self.websocket.close(GOING_AWAY, "the runtime stops: reconnect")
                return
            change = self.workers.next_change(self.stream)  # before reading
            try:
                read = await self.send_more()
            except QueueUnavailableError as error:
                log.warning("queue watch: %s", error)
                await self.websocket.close(TRY_AGAIN_LATER, "the queue is unavailable")
                return
            if read:
                continue
            changed = asyncio.ensure_future(change.wait())
            try:
                await asyncio.wait(
                    {receiving, changed}, timeout=IDLE_POLL_S, return_when=FIRST_COMPLETED
                )
            finally:
                changed.cancel()

    async def send_more(self) -> int:
        """Send what the window allows; how many entries were read."""
        store = self.store
        if self.window and self.uncommitted:
            self.uncommitted = await store.existing(self.stream, self.uncommitted)
        room = self.window - len(self.uncommitted) if self.window else BATCH
        if room <= 0:
            return 0
        frames = await store.frames(self.stream, self.next_index, min(room, BATCH))
        if not frames:
            return 0
        self.next_index = frames[-1].index + 1
        sent = [frame for frame in frames if self.matches(frame)]
        for frame in sent:
            await self.send(frame)
        indexes = [frame.index for frame in sent]
        if self.auto_commit:
            await store.delete(self.stream, indexes)
        else:
            self.uncommitted.update(indexes)
        return len(frames)

    def matches(self, frame: Frame) -> bool:
        return all(frame.tags.get(key) == value for key, value in self.wanted.items())

    async def send(self, frame: Frame) -> None:
        if self.as_json:
            await self.websocket.send_text(json.dumps(frame_json(frame, self.index_only)))
        else:
            await self.websocket.send_bytes(frame_proto(frame, self.index_only))


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and ignore) what the client sends, until it closes."""
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        while (await websocket.receive())["type"] != "websocket.disconnect":
            pass
