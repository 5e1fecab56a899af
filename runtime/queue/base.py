"""The queues behind the asynchronous API (PROTOCOLS §9), as one contract two stores implement.

A service has two queues, as on the platform: the input queue, where requests wait, and the
sink, where results arrive. Each is a stream of entries with an index that only rises; the
platform's SDK reads both the same way (by index or request id, watch, delete, commit).

An item's life in the input queue: `enqueue` makes it pending; `claim` leases the next ones
(priority first) to this runtime and marks it running; `renew` extends the lease while it runs;
`complete` removes it from the input queue and appends its result to the sink, in one step;
`release` hands it back (a runtime that stops before finishing it). An item whose lease lapsed
(its runtime died, or stalled past the visibility timeout) is claimed again by any runtime:
delivery is at least once. A re-run's result carries the tag `attempt` (2, 3, ...), and a
result for a request the sink already had one for carries `duplicate: "true"`.

`SqliteQueue` keeps both queues in one file for one runtime; `RedisQueue` keeps them in Redis
Streams that several runtimes share, each runtime a consumer of one consumer group.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from runtime.config import ConfigError
from runtime.errors import ApiError, ErrorKind


class QueueOpenError(ConfigError):
    """The queue's store cannot be used; the message says which and why (exit code 2)."""


class QueueFullError(Exception):
    """The input queue already holds its maximum of pending items."""


class QueueUnavailableError(ApiError):
    """The store cannot be reached (Redis is down or restarting): a 503, retried later."""

    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.UNAVAILABLE, message)


class Stream(enum.Enum):
    INPUT = "input"
    SINK = "sink"


class ItemState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


@dataclass(frozen=True)
class QueueItem:
    """A request as accepted: its body and the content type it came with."""

    index: int  # rises with every item, across restarts and runtimes: the platform's index
    request_id: str
    body: bytes
    content_type: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)  # the client's, returned with the result
    attempt: int = 1  # how many times a runtime took it, this time included


@dataclass(frozen=True)
class Frame:
    """An entry of a queue as the platform's SDK sees it (its DataFrameProto): in the input
    queue a request's body, in the sink a result; `tags` hold `requestId`."""

    index: int
    data: bytes
    tags: Mapping[str, str]

    @property
    def request_id(self) -> str:
        return self.tags.get("requestId", "")


@dataclass(frozen=True)
class Position:
    """Where an input item stands (the SDK's search): who runs it, or how many go first."""

    state: ItemState
    num_ahead: int = 0
    consumer: str = ""


@dataclass(frozen=True)
class StreamFacts:
    """What the SDK's attributes report of one queue."""

    length: int
    first_index: int | None
    last_index: int | None
    num_consumers: int


@dataclass(frozen=True)
class QueueCounts:
    """The input queue's length; results in the sink are left out."""

    pending: int
    running: int


def result_tags(item: QueueItem, status: int) -> dict[str, str]:
    """A result's tags: the client's, the request id, the answer's HTTP status and, for a
    re-run, which attempt gave it."""
    tags = {**item.tags, "requestId": item.request_id, "lastCode": str(status)}
    if item.attempt > 1:
        tags["attempt"] = str(item.attempt)
    return tags


# Called with the queue that changed, by any runtime sharing the store (as far as the store can
# tell): waiters look again at once rather than at their next poll.
Listener = Callable[[Stream], None]


class TaskQueue(Protocol):
    backend: str  # "sqlite" or "redis", for the attributes
    lease_s: float  # a claim's lease; `renew` well within it

    # -- the input queue, as the workers use it ------------------------------------------------

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

    async def claim(self, limit: int = 1) -> list[QueueItem]:
        """Up to `limit` items, now leased to this runtime: those whose lease lapsed first,
        then by priority and index; fewer (or none) when no more wait."""
        ...

    async def renew(self, request_ids: Collection[str]) -> None:
        """Extend the leases of these running items (those this runtime still holds)."""
        ...

    async def complete(self, item: QueueItem, data: bytes, status: int) -> Frame | None:
        """Remove the item from the input queue and append its result to the sink, at once;
        the result, or None when a client deleted the item while it ran."""
        ...

    async def release(self, request_id: str) -> None:
        """A running item goes back to the front of the line (its runtime stops)."""
        ...

    async def state(self, request_id: str) -> ItemState | None:
        """Where the request stands; None for an id never accepted or whose result expired."""
        ...

    async def position(self, index: int) -> Position | None:
        """Where the input item with this index stands; None when it is not in the queue."""
        ...

    async def counts(self) -> QueueCounts: ...

    async def expire(self, finished_before: float) -> int:
        """Delete the results that arrived before this time (seconds since the epoch)."""
        ...

    # -- either queue, as the platform's SDK reads and edits it ---------------------------------

    async def put(self, data: bytes, tags: Mapping[str, str] | None = None) -> Frame:
        """Append a frame to the sink, as a client may (the SDK's put on `<name>/sink`)."""
        ...

    async def frames(self, stream: Stream, start: int, limit: int) -> list[Frame]:
        """Up to `limit` entries with an index of at least `start`, in index order."""
        ...

    async def find(self, stream: Stream, request_id: str) -> list[Frame]:
        """The request's entries: its body in the input queue, its results in the sink."""
        ...

    async def existing(self, stream: Stream, indexes: Collection[int]) -> set[int]:
        """Which of these indexes are still in the queue (not deleted or committed)."""
        ...

    async def delete(self, stream: Stream, indexes: Collection[int]) -> int:
        """Delete these entries (a commit is a delete); how many there were. A request deleted
        from the input queue is never run, or its result is dropped."""
        ...

    async def truncate(self, stream: Stream, before: int) -> int:
        """Delete every entry with an index below `before`; how many there were."""
        ...

    async def facts(self, stream: Stream) -> StreamFacts: ...

    def add_listener(self, listener: Listener) -> None: ...

    async def close(self) -> None: ...
