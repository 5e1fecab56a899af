"""Change notices between the runtimes that share one Redis queue.

Every script that changes a stream publishes "<stream> <consumer>" on the queue's channel
(redis_scripts.py). Each runtime tells its own listeners of its changes at once, and of the
other runtimes' changes as they arrive here, so workers waiting for work and clients watching
for results look again without waiting for their next poll. A notice lost while Redis is away
costs only that wait: the subscription is made again when Redis is back.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors

from runtime.queue.base import Listener, Stream

# Redis unreachable, for now: retried with backoff, never a user's mistake.
CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
MAX_BACKOFF_S = 5.0


class RedisEvents:
    def __init__(self, client: aioredis.Redis, channel: str, consumer: str) -> None:
        self._client = client
        self._channel = channel
        self._consumer = consumer
        self._listeners: list[Listener] = []
        self._task: asyncio.Task | None = None

    async def subscribe(self) -> Any:
        """The channel's subscription; CONNECTION_ERRORS while Redis is unreachable."""
        pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        await pubsub.subscribe(self._channel)
        return pubsub

    def start(self, pubsub: Any) -> None:
        self._task = asyncio.create_task(self._listen(pubsub), name="queue-events")

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def notify(self, stream: Stream) -> None:
        for listener in self._listeners:
            listener(stream)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _listen(self, pubsub: Any) -> None:
        delay = 0.2
        while True:
            try:
                if pubsub is None:
                    pubsub = await self.subscribe()
                    delay = 0.2
                message = await pubsub.get_message(timeout=1.0)
                if message is None:
                    continue
                # This runtime told its listeners of its own changes already.
                stream, _, origin = message["data"].decode().partition(" ")
                if origin != self._consumer and stream in ("input", "sink"):
                    self.notify(Stream(stream))
            except CONNECTION_ERRORS:
                if pubsub is not None:
                    with contextlib.suppress(*CONNECTION_ERRORS):
                        await pubsub.aclose()
                pubsub = None
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)
