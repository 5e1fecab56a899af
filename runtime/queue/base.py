"""The queue behind the asynchronous API (PROTOCOLS §9), as a contract small enough to swap.

An item's life: `enqueue` makes it pending; `claim` hands the oldest pending one (priority
first) to a worker and marks it running; `complete` stores its result (the answer's bytes and
HTTP status) and marks it done; `release` puts a running item back to pending, for a worker
that stops before finishing it. `result` is what the sink reads; `expire` deletes results older
than the retention time.

Delivery is at least once: a queue that is opened again after a crash puts the items that were
running back to pending, so an item whose result was not stored before the process died runs
again (its first run's work is lost, never its request).

The embedded implementation is `SqliteQueue` (one runtime, one file). A queue shared by several
runtimes (e.g. Redis) implements the same methods; what it must add is ownership of running
items: each claim leases the item to one runtime for a while (renewed while it runs), and items
whose lease lapsed (their runtime died) go back to pending, rather than "everything running at
open", which in a shared queue would steal other runtimes' work. Redis suits it as: a list or
sorted set of pending ids (score = priority, index), a hash per item, BLMOVE or a Lua script
for an atomic claim, INCR for the index, and EXPIRE on finished items for retention.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class QueueFullError(Exception):
    """The queue already holds its maximum of pending items."""


class ItemState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class QueueItem:
    """A request as accepted: its body and the content type it came with."""

    index: int  # rises with every item, across restarts: the platform's queue index
    request_id: str
    body: bytes
    content_type: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)  # the client's, returned with the result


@dataclass(frozen=True)
class ItemStatus:
    """Where an item stands; `data` and `status` once it is done."""

    index: int
    request_id: str
    state: ItemState
    tags: Mapping[str, str]
    data: bytes | None = None
    status: int | None = None


@dataclass(frozen=True)
class QueueCounts:
    """The queue's length; finished results are left out, as counting them grows with them."""

    pending: int
    running: int


class TaskQueue(Protocol):
    async def enqueue(
        self,
        body: bytes,
        content_type: str = "",
        tags: Mapping[str, str] | None = None,
        priority: int = 0,
        max_pending: int | None = None,
    ) -> QueueItem:
        """Accept an item, durably; QueueFullError when `max_pending` items already wait."""
        ...

    async def claim(self) -> QueueItem | None:
        """The next pending item, now running; None when nothing waits."""
        ...

    async def complete(self, request_id: str, data: bytes, status: int) -> None: ...

    async def release(self, request_id: str) -> None:
        """A running item goes back to pending (its worker stopped before the end)."""
        ...

    async def result(self, request_id: str, delete: bool = False) -> ItemStatus | None:
        """The item's state (None for an unknown id); `delete` removes a done item once read."""
        ...

    async def expire(self, finished_before: float) -> int:
        """Delete the results finished before this time (seconds since the epoch); how many."""
        ...

    async def counts(self) -> QueueCounts: ...

    async def close(self) -> None: ...
