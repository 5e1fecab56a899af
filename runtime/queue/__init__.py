"""The asynchronous queue (`--async`): its contract, the SQLite and Redis stores, the workers."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from models.cache import cache_dir
from runtime.config import RuntimeConfig
from runtime.queue.base import QueueOpenError, TaskQueue

log = logging.getLogger(__name__)

__all__ = ["QueueOpenError", "TaskQueue", "open_queue", "queue_path"]


def queue_path(config: RuntimeConfig) -> Path:
    """--queue-path, else one file per service name under the runtime's cache directory."""
    if config.queue.path:
        return Path(config.queue.path)
    return cache_dir() / "queue" / f"{config.server.service_name}.sqlite3"


async def open_queue(
    config: RuntimeConfig, on_wait: Callable[[str], None] | None = None
) -> TaskQueue:
    """The queue's store, opened: the SQLite file, or Redis (`--queue-url`) once reachable,
    `on_wait` hearing why it is not yet; QueueOpenError when it cannot be used."""
    queue = config.queue
    if queue.url:
        from runtime.queue.redis_queue import RedisQueue  # redis-py only where it is used

        store = RedisQueue(
            queue.url,
            config.server.service_name,
            queue.password,
            queue.visibility_timeout,
            queue.result_ttl,
        )
        await store.connect(on_wait)
        log.info("asynchronous queue in Redis at %s, as consumer %s", store.where, store.consumer)
        return store
    from runtime.queue.sqlite import SqliteQueue

    path = queue_path(config)
    sqlite = await asyncio.to_thread(SqliteQueue, path, queue.visibility_timeout)
    log.info(
        "asynchronous queue at %s%s",
        sqlite.path,
        f": {sqlite.num_requeued} unfinished requests back to pending"
        if sqlite.num_requeued
        else "",
    )
    return sqlite
