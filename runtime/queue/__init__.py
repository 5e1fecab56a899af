"""The asynchronous queue (`--async`): its contract, the embedded SQLite queue, the workers."""

from __future__ import annotations

import logging
from pathlib import Path

from models.cache import cache_dir
from runtime.config import RuntimeConfig
from runtime.queue.base import TaskQueue
from runtime.queue.sqlite import QueueOpenError, SqliteQueue

log = logging.getLogger(__name__)

__all__ = ["QueueOpenError", "TaskQueue", "open_queue", "queue_path"]


def queue_path(config: RuntimeConfig) -> Path:
    """--queue-path, else one file per service name under the runtime's cache directory."""
    if config.queue.path:
        return Path(config.queue.path)
    return cache_dir() / "queue" / f"{config.server.service_name}.sqlite3"


def open_queue(config: RuntimeConfig) -> TaskQueue:
    """The queue's store, opened (blocking: call it from a thread); QueueOpenError if not."""
    queue = SqliteQueue(queue_path(config))
    log.info(
        "asynchronous queue at %s%s",
        queue.path,
        f": {queue.num_requeued} unfinished requests back to pending" if queue.num_requeued else "",
    )
    return queue
