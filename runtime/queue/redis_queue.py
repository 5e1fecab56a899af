"""The shared queue: Redis Streams, one consumer group, each runtime a consumer.

Every change is one Lua script (redis_scripts.py), so it is atomic whichever runtime makes it:
an index comes from one counter, an enqueue answers only once Redis has the item, and a result
is appended to the sink in the same step that removes its request from the input queue. A
claimed entry sits in its runtime's pending list; the runtime renews it while the request runs,
and an entry idle for the visibility timeout (its runtime died or stalled) is claimed by the
next runtime that looks. Each change is also published, so runtimes waiting for work or results
look again at once (redis_events.py); they poll as well.

What survives a Redis restart is what Redis persisted (see the README's delivery guarantees).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from runtime.queue import redis_scripts as scripts
from runtime.queue.base import (
    Frame,
    ItemState,
    Listener,
    Position,
    QueueCounts,
    QueueFullError,
    QueueItem,
    QueueOpenError,
    QueueUnavailableError,
    Stream,
    StreamFacts,
    result_tags,
)
from runtime.queue.redis_events import CONNECTION_ERRORS, MAX_BACKOFF_S, RedisEvents

log = logging.getLogger(__name__)

T = TypeVar("T")

GROUP = "llm-runtime"
COMMAND_TIMEOUT_S = 5.0
BATCH = 1000  # entries one truncate or expiry script removes, so Redis is never held long
STALE_CONSUMER_S = 3600.0  # a consumer idle this long with nothing pending is forgotten


def where(url: str) -> str:
    """The URL without its password, for logs and messages."""
    parts = urlsplit(url)
    host = parts.hostname or "localhost"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


class RedisQueue:
    backend = "redis"

    def __init__(
        self,
        url: str,
        service_name: str,
        password: str | None = None,
        lease_s: float = 60.0,
        result_ttl: float = 24 * 3600.0,
    ) -> None:
        self.url = url
        self.where = where(url)
        self.lease_s = lease_s
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._result_ttl = max(1, round(result_ttl))
        self._prefix = f"llm-runtime:{{{service_name}}}:"
        self._client = aioredis.Redis.from_url(
            url,
            password=password or None,
            socket_timeout=COMMAND_TIMEOUT_S,
            socket_connect_timeout=COMMAND_TIMEOUT_S,
            health_check_interval=30,
        )
        self._scripts = {
            name: self._client.register_script(source) for name, source in scripts.ALL.items()
        }
        self._events = RedisEvents(self._client, self._key("events"), self.consumer)

    # -- connecting -----------------------------------------------------------------------------

    async def connect(self, on_wait: Callable[[str], None] | None = None) -> None:
        """Reach Redis, retrying with backoff while it is unreachable (`on_wait` hears why);
        QueueOpenError when it refuses for good (a wrong password, say)."""
        delay = 0.2
        while True:
            try:
                await self._client.ping()
                await self._ensure_groups()
                pubsub = await self._events.subscribe()
                break
            except redis_errors.AuthenticationError as exc:
                raise QueueOpenError(f"the queue's Redis at {self.where} refused: {exc}") from exc
            except redis_errors.ResponseError as exc:
                raise QueueOpenError(f"the queue's Redis at {self.where}: {exc}") from exc
            except CONNECTION_ERRORS as exc:
                if on_wait is not None:
                    on_wait(f"the queue's Redis at {self.where} is unreachable: {exc}")
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
        self._events.start(pubsub)

    async def _ensure_groups(self) -> None:
        for stream in (self._key("in:1"), self._key("in:0")):
            try:
                await self._client.xgroup_create(stream, GROUP, id="0", mkstream=True)
            except redis_errors.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    # -- the input queue ------------------------------------------------------------------------

    async def enqueue(
        self,
        body: bytes,
        content_type: str = "",
        tags: Mapping[str, str] | None = None,
        priority: int = 0,
        max_pending: int | None = None,
    ) -> QueueItem:
        request_id = str(uuid.uuid4())
        tags = dict(tags or {})
        level = 1 if priority > 0 else 0
        args = [request_id, level, body, content_type, json.dumps(tags), time.time()]
        index = await self._script("ENQUEUE", *args, -1 if max_pending is None else max_pending)
        if index < 0:
            raise QueueFullError(f"the queue holds its maximum of {max_pending} waiting requests")
        self._events.notify(Stream.INPUT)
        return QueueItem(index, request_id, body, content_type, tags)

    async def claim(self, limit: int = 1) -> list[QueueItem]:
        found = await self._script("CLAIM", round(self.lease_s * 1000), limit)
        return [
            QueueItem(
                index, request_id.decode(), body, content_type.decode(), json.loads(tags), attempt
            )
            for index, request_id, body, content_type, tags, attempt in found
        ]

    async def renew(self, request_ids: Collection[str]) -> None:
        if request_ids:
            await self._script("RENEW", *request_ids)

    async def complete(self, item: QueueItem, data: bytes, status: int) -> Frame | None:
        tags = json.dumps(result_tags(item, status))
        now = time.time()
        done = await self._script("COMPLETE", item.request_id, data, tags, now, self._result_ttl)
        if done is None:
            return None
        self._events.notify(Stream.SINK)
        index, written = done
        return Frame(index, data, json.loads(written))

    async def release(self, request_id: str) -> None:
        idle_ms = round(self.lease_s * 1000) + 1
        await self._script("RELEASE", request_id, idle_ms)
        self._events.notify(Stream.INPUT)

    async def state(self, request_id: str) -> ItemState | None:
        async def read() -> tuple[Any, Any]:
            pipe = self._client.pipeline(transaction=False)
            pipe.hget(self._key(f"item:{request_id}"), "state")
            pipe.exists(self._key(f"done:{request_id}"))
            state, done = await pipe.execute()
            return state, done

        state, done = await self._call(read)
        if state is not None:
            return ItemState(state.decode())
        return ItemState.DONE if done else None

    async def position(self, index: int) -> Position | None:
        found = await self._script("POSITION", index)
        if found is None:
            return None
        state, ahead, consumer = found
        return Position(ItemState(state.decode()), ahead, consumer.decode())

    async def counts(self) -> QueueCounts:
        async def read() -> QueueCounts:
            pipe = self._client.pipeline(transaction=False)
            for stream in (self._key("in:1"), self._key("in:0")):
                pipe.xlen(stream)
                pipe.xpending(stream, GROUP)
            high, high_pending, normal, normal_pending = await pipe.execute()
            running = high_pending["pending"] + normal_pending["pending"]
            return QueueCounts(high + normal - running, running)

        return await self._call(read)

    async def expire(self, finished_before: float) -> int:
        expired = 0
        while True:
            removed = await self._script("EXPIRE", finished_before, BATCH)
            expired += removed
            if removed < BATCH:
                break
        await self._call(self._forget_stale_consumers)
        return expired

    async def _forget_stale_consumers(self) -> None:
        """Consumers of runtimes that are gone, with nothing left pending, leave the group."""
        for stream in (self._key("in:1"), self._key("in:0")):
            for consumer in await self._client.xinfo_consumers(stream, GROUP):
                if consumer["pending"] == 0 and consumer["idle"] > STALE_CONSUMER_S * 1000:
                    await self._client.xgroup_delconsumer(stream, GROUP, consumer["name"])

    # -- either queue ---------------------------------------------------------------------------

    async def put(self, data: bytes, tags: Mapping[str, str] | None = None) -> Frame:
        request_id = str(uuid.uuid4())
        tags = {**(tags or {}), "requestId": request_id}
        index = await self._script(
            "PUT", request_id, data, json.dumps(tags), time.time(), self._result_ttl
        )
        self._events.notify(Stream.SINK)
        return Frame(index, data, tags)

    async def frames(self, stream: Stream, start: int, limit: int) -> list[Frame]:
        if stream is Stream.SINK:
            entries: Any = await self._call(
                lambda: self._client.xrange(self._key("sink"), f"{start}-0", "+", count=limit)
            )
            return [_sink_frame(entry_id, fields) for entry_id, fields in entries]

        async def read() -> list[Frame]:
            pipe = self._client.pipeline(transaction=False)
            for key in (self._key("in:1"), self._key("in:0")):
                pipe.xrange(key, f"{start}-0", "+", count=limit)
            high, normal = await pipe.execute()
            entries = sorted(high + normal, key=lambda entry: _index(entry[0]))[:limit]
            return await self._input_frames([fields[b"rid"].decode() for _, fields in entries])

        return await self._call(read)

    async def _input_frames(self, request_ids: list[str]) -> list[Frame]:
        pipe = self._client.pipeline(transaction=False)
        for request_id in request_ids:
            pipe.hmget(self._key(f"item:{request_id}"), "index", "body", "tags")
        frames = []
        for request_id, (index, body, tags) in zip(request_ids, await pipe.execute(), strict=True):
            if index is not None:  # deleted since the stream was read
                frames.append(
                    Frame(int(index), body, {**json.loads(tags), "requestId": request_id})
                )
        return frames

    async def find(self, stream: Stream, request_id: str) -> list[Frame]:
        if stream is Stream.INPUT:
            return await self._call(lambda: self._input_frames([request_id]))

        entries = await self._script("RESULTS", request_id)
        frames = [_sink_frame(entry_id, _fields(fields)) for entry_id, fields in entries]
        return sorted(frames, key=lambda frame: frame.index)

    async def existing(self, stream: Stream, indexes: Collection[int]) -> set[int]:
        if not indexes:
            return set()
        return set(await self._script("EXISTING", stream.value, *indexes))

    async def delete(self, stream: Stream, indexes: Collection[int]) -> int:
        if not indexes:
            return 0
        deleted = await self._script("DELETE", stream.value, *indexes)
        self._events.notify(stream)
        return deleted

    async def truncate(self, stream: Stream, before: int) -> int:
        truncated = 0
        while True:
            removed = await self._script("TRUNCATE", stream.value, before, BATCH)
            truncated += removed
            if removed < BATCH:
                self._events.notify(stream)
                return truncated

    async def facts(self, stream: Stream) -> StreamFacts:
        keys = (
            [self._key("sink")]
            if stream is Stream.SINK
            else [self._key(f"in:{level}") for level in (1, 0)]
        )

        async def read() -> StreamFacts:
            pipe = self._client.pipeline(transaction=False)
            for key in keys:
                pipe.xlen(key)
                pipe.xrange(key, "-", "+", count=1)
                pipe.xrevrange(key, "+", "-", count=1)
            replies = await pipe.execute()
            length = sum(replies[0::3])
            firsts = [_index(entries[0][0]) for entries in replies[1::3] if entries]
            lasts = [_index(entries[0][0]) for entries in replies[2::3] if entries]
            consumers = 0
            if stream is Stream.INPUT:
                # Live runtimes look for work every second or so; a dead one's idle time grows.
                active_ms = max(self.lease_s, 10.0) * 1000
                listed = await self._client.xinfo_consumers(keys[1], GROUP)
                consumers = sum(1 for consumer in listed if consumer["idle"] < active_ms)
            return StreamFacts(
                length, min(firsts) if firsts else None, max(lasts) if lasts else None, consumers
            )

        return await self._call(read)

    def add_listener(self, listener: Listener) -> None:
        self._events.add_listener(listener)

    async def close(self) -> None:
        await self._events.stop()
        with contextlib.suppress(*CONNECTION_ERRORS, redis_errors.ResponseError):
            await self._leave_group()
        await self._client.aclose()

    async def _leave_group(self) -> None:
        """A runtime that stops leaves the group, unless it still holds entries (then the next
        runtime to claim them takes them over, and the group forgets it later)."""
        for stream in (self._key("in:1"), self._key("in:0")):
            for consumer in await self._client.xinfo_consumers(stream, GROUP):
                if consumer["name"].decode() == self.consumer and consumer["pending"] == 0:
                    await self._client.xgroup_delconsumer(stream, GROUP, self.consumer)

    # -- calling Redis ---------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        return self._prefix + name

    async def _script(self, name: str, *args: Any) -> Any:
        head = [self._prefix, GROUP, self.consumer]
        script = self._scripts[name]
        return await self._call(lambda: script(keys=[self._key("seq")], args=[*head, *args]))

    async def _call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """Run `operation`; Redis unreachable is QueueUnavailableError (a 503 to a client, a
        retry with backoff to a worker). A group lost with Redis's data is made again."""
        try:
            try:
                return await operation()
            except redis_errors.ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
                await self._ensure_groups()
                return await operation()
        except CONNECTION_ERRORS as exc:
            raise QueueUnavailableError(
                f"the queue's Redis at {self.where} is unreachable: {exc}"
            ) from exc
        except redis_errors.ResponseError as exc:
            raise QueueUnavailableError(f"the queue's Redis at {self.where}: {exc}") from exc


def _index(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


def _fields(flat: list[bytes]) -> dict[bytes, bytes]:
    """A stream entry's fields as a script returns them: name, value, name, value, ..."""
    return dict(zip(flat[0::2], flat[1::2], strict=True))


def _sink_frame(entry_id: bytes, fields: dict[bytes, bytes]) -> Frame:
    return Frame(_index(entry_id), fields[b"data"], json.loads(fields[b"tags"]))
