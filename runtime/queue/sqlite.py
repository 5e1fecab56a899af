"""The embedded queue: one SQLite file (WAL mode), owned by one runtime at a time.

Every statement runs in one dedicated thread that owns the connection: commits are fsynced
(synchronous=FULL, so an accepted item or a result survives a kill -9 and a power cut alike;
only who holds an item is written without, see _unsynced), and an fsync
can take tens of milliseconds on network disks, which the event loop, serving streams, must
never wait on. One thread also serialises the statements, so there is no lock contention.

An exclusive lock on `<path>.lock` keeps a second runtime off the same file; so, at open, the
items that were running belong to a process that is gone, and go back to pending at once.
Runtimes that share a queue use Redis (redis_queue.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from runtime.queue.base import (
    Frame,
    ItemState,
    Listener,
    Position,
    QueueCounts,
    QueueFullError,
    QueueItem,
    QueueOpenError,
    Stream,
    StreamFacts,
    result_tags,
)
from runtime.queue.sqlite_schema import prepare, transaction, unsynced

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_LEASE_S = 60.0
CONSUMER = "local"  # the one runtime that may open the file
TABLES = {Stream.INPUT: "items", Stream.SINK: "results"}


class SqliteQueue:
    backend = "sqlite"

    def __init__(self, path: str | Path, lease_s: float = DEFAULT_LEASE_S) -> None:
        self.path = Path(path)
        self.lease_s = lease_s
        self._listeners: list[Listener] = []
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="queue-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        try:
            self.num_requeued = self._executor.submit(self._open).result()
        except BaseException:
            self._executor.submit(self._close).result()
            self._executor.shutdown()
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
        index = await self._run(
            self._enqueue, request_id, body, content_type, tags, priority, max_pending
        )
        self._notify(Stream.INPUT)
        return QueueItem(index, request_id, body, content_type, tags)

    async def claim(self, limit: int = 1) -> list[QueueItem]:
        return await self._run(self._claim, limit)

    async def renew(self, request_ids: Collection[str]) -> None:
        if request_ids:
            await self._run(self._renew, list(request_ids))

    async def complete(self, item: QueueItem, data: bytes, status: int) -> Frame | None:
        frame = await self._run(self._complete, item, data, status)
        self._notify(Stream.SINK)  # what left the input queue wakes no worker
        return frame

    async def release(self, request_id: str) -> None:
        await self._run(self._release, request_id)
        self._notify(Stream.INPUT)

    async def state(self, request_id: str) -> ItemState | None:
        return await self._run(self._state, request_id)

    async def position(self, index: int) -> Position | None:
        return await self._run(self._position, index)

    async def counts(self) -> QueueCounts:
        return await self._run(self._counts)

    async def expire(self, finished_before: float) -> int:
        return await self._run(self._expire, finished_before)

    # -- either queue ---------------------------------------------------------------------------

    async def put(self, data: bytes, tags: Mapping[str, str] | None = None) -> Frame:
        frame = await self._run(self._put, data, dict(tags or {}))
        self._notify(Stream.SINK)
        return frame

    async def frames(self, stream: Stream, start: int, limit: int) -> list[Frame]:
        return await self._run(self._frames, stream, start, limit)

    async def find(self, stream: Stream, request_id: str) -> list[Frame]:
        return await self._run(self._find, stream, request_id)

    async def existing(self, stream: Stream, indexes: Collection[int]) -> set[int]:
        if not indexes:
            return set()
        return await self._run(self._existing, stream, list(indexes))

    async def delete(self, stream: Stream, indexes: Collection[int]) -> int:
        if not indexes:
            return 0
        marks = ",".join("?" * len(indexes))
        table = TABLES[stream]
        deleted = await self._run(
            self._execute, f"DELETE FROM {table} WHERE idx IN ({marks})", tuple(indexes)
        )
        self._notify(stream)
        return deleted

    async def truncate(self, stream: Stream, before: int) -> int:
        table = TABLES[stream]
        deleted = await self._run(self._execute, f"DELETE FROM {table} WHERE idx < ?", (before,))
        self._notify(stream)
        return deleted

    async def facts(self, stream: Stream) -> StreamFacts:
        return await self._run(self._facts, stream)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown()

    def _notify(self, stream: Stream) -> None:
        for listener in self._listeners:
            listener(stream)

    # -- in the queue's thread ----------------------------------------------------------------

    async def _run(self, work: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work, *args)

    def _open(self) -> int:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_fd = os.open(f"{self.path}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise QueueOpenError(f"cannot open the queue at {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise QueueOpenError(
                f"the queue at {self.path} is in use by another process; give each runtime "
                "its own --queue-path, or share a queue with --queue-url redis://..."
            ) from None
        try:
            db = self._connection = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            prepare(db, self.path)
            # The previous process died or stopped with these taken: they run again.
            return db.execute(
                "UPDATE items SET state = 'pending', consumer = NULL, lease_until = NULL "
                "WHERE state = 'running'"
            ).rowcount
        except sqlite3.Error as exc:
            raise QueueOpenError(f"cannot open the queue at {self.path}: {exc}") from exc

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        if self._lock_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._lock_fd)  # releases the lock
            self._lock_fd = None

    @property
    def _db(self) -> sqlite3.Connection:
        if self._connection is None:
            raise RuntimeError(f"the queue at {self.path} is closed")
        return self._connection

    def _execute(self, sql: str, parameters: tuple) -> int:
        return self._db.execute(sql, parameters).rowcount

    def _enqueue(
        self,
        request_id: str,
        body: bytes,
        content_type: str,
        tags: dict[str, str],
        priority: int,
        max_pending: int | None,
    ) -> int:
        db = self._db
        with transaction(db):
            if max_pending is not None:
                (num_pending,) = db.execute(
                    "SELECT COUNT(*) FROM items WHERE state = 'pending'"
                ).fetchone()
                if num_pending >= max_pending:
                    raise QueueFullError(
                        f"the queue holds its maximum of {max_pending} waiting requests"
                    )
            # fetchall, not fetchone: a RETURNING statement ends (and commits) when exhausted
            ((index,),) = db.execute(
                "INSERT INTO items (request_id, state, priority, body, content_type, tags, "
                "enqueued_at) VALUES (?, 'pending', ?, ?, ?, ?, ?) RETURNING idx",
                (request_id, priority, body, content_type, json.dumps(tags), time.time()),
            ).fetchall()
        return index

    def _claim(self, limit: int) -> list[QueueItem]:
        now, db = time.time(), self._db
        items = []
        with unsynced(db), transaction(db):  # one commit for the lot
            for _ in range(limit):
                # An item whose lease lapsed first (it is older work), then the oldest of the
                # highest priority.
                rows = db.execute(
                    "UPDATE items SET state = 'running', attempts = attempts + 1, consumer = ?, "
                    "lease_until = ? WHERE idx = COALESCE("
                    "(SELECT idx FROM items WHERE state = 'running' AND lease_until < ? "
                    "ORDER BY idx LIMIT 1), "
                    "(SELECT idx FROM items WHERE state = 'pending' "
                    "ORDER BY priority DESC, idx LIMIT 1)"
                    ") RETURNING idx, request_id, body, content_type, tags, attempts",
                    (CONSUMER, now + self.lease_s, now),
                ).fetchall()
                if not rows:
                    break
                ((index, request_id, body, content_type, tags, attempts),) = rows
                items.append(
                    QueueItem(
                        index, request_id, bytes(body), content_type, json.loads(tags), attempts
                    )
                )
        return items

    def _renew(self, request_ids: list[str]) -> None:
        marks = ",".join("?" * len(request_ids))
        with unsynced(self._db):
            self._db.execute(
                f"UPDATE items SET lease_until = ? WHERE state = 'running' AND consumer = ? "
                f"AND request_id IN ({marks})",
                (time.time() + self.lease_s, CONSUMER, *request_ids),
            )

    def _release(self, request_id: str) -> None:
        # Not counted as an attempt: the run was cut short, not lost with its runtime.
        with unsynced(self._db):
            self._db.execute(
                "UPDATE items SET state = 'pending', attempts = MAX(attempts - 1, 0), "
                "consumer = NULL, lease_until = NULL WHERE request_id = ? AND state = 'running'",
                (request_id,),
            )

    def _complete(self, item: QueueItem, data: bytes, status: int) -> Frame | None:
        db = self._db
        now = time.time()
        tags = result_tags(item, status)
        with transaction(db):
            in_queue = db.execute(
                "DELETE FROM items WHERE request_id = ?", (item.request_id,)
            ).rowcount
            first = db.execute(
                "INSERT OR IGNORE INTO finished VALUES (?, ?)", (item.request_id, now)
            ).rowcount
            if not in_queue and first:  # a client deleted it while it ran: no result
                db.execute("DELETE FROM finished WHERE request_id = ?", (item.request_id,))
                return None
            if not first:  # another run's result is (or was) in the sink already
                tags["duplicate"] = "true"
            ((index,),) = db.execute(
                "INSERT INTO results (request_id, data, tags, finished_at) VALUES (?, ?, ?, ?) "
                "RETURNING idx",
                (item.request_id, data, json.dumps(tags), now),
            ).fetchall()
        return Frame(index, data, tags)

    def _state(self, request_id: str) -> ItemState | None:
        row = self._db.execute(
            "SELECT state FROM items WHERE request_id = ?", (request_id,)
        ).fetchone()
        if row is not None:
            return ItemState(row[0])
        finished = self._db.execute(
            "SELECT 1 FROM finished WHERE request_id = ?", (request_id,)
        ).fetchone()
        return ItemState.DONE if finished else None

    def _position(self, index: int) -> Position | None:
        row = self._db.execute(
            "SELECT state, priority, consumer FROM items WHERE idx = ?", (index,)
        ).fetchone()
        if row is None:
            return None
        state, priority, consumer = row
        if state == ItemState.RUNNING.value:
            return Position(ItemState.RUNNING, 0, consumer or "")
        (ahead,) = self._db.execute(
            "SELECT COUNT(*) FROM items WHERE state = 'pending' "
            "AND (priority > ? OR (priority = ? AND idx < ?))",
            (priority, priority, index),
        ).fetchone()
        return Position(ItemState.PENDING, ahead)

    def _counts(self) -> QueueCounts:
        # Two range scans of the (state, ...) index: as cheap as the queue is short.
        count = "SELECT COUNT(*) FROM items WHERE state = ?"
        (pending,) = self._db.execute(count, ("pending",)).fetchone()
        (running,) = self._db.execute(count, ("running",)).fetchone()
        return QueueCounts(pending, running)

    def _expire(self, finished_before: float) -> int:
        db = self._db
        with transaction(db):
            expired = db.execute(
                "DELETE FROM results WHERE finished_at < ?", (finished_before,)
            ).rowcount
            db.execute("DELETE FROM finished WHERE finished_at < ?", (finished_before,))
        return expired

    def _put(self, data: bytes, tags: dict[str, str]) -> Frame:
        tags["requestId"] = str(uuid.uuid4())
        ((index,),) = self._db.execute(
            "INSERT INTO results (request_id, data, tags, finished_at) VALUES (?, ?, ?, ?) "
            "RETURNING idx",
            (tags["requestId"], data, json.dumps(tags), time.time()),
        ).fetchall()
        return Frame(index, data, tags)

    def _select(self, stream: Stream, where: str, parameters: tuple) -> list[Frame]:
        if stream is Stream.INPUT:
            rows = self._db.execute(
                f"SELECT idx, body, tags, request_id FROM items WHERE {where}", parameters
            ).fetchall()
            return [
                Frame(index, bytes(body), {**json.loads(tags), "requestId": request_id})
                for index, body, tags, request_id in rows
            ]
        rows = self._db.execute(
            f"SELECT idx, data, tags FROM results WHERE {where}", parameters
        ).fetchall()
        return [Frame(index, bytes(data), json.loads(tags)) for index, data, tags in rows]

    def _frames(self, stream: Stream, start: int, limit: int) -> list[Frame]:
        return self._select(stream, "idx >= ? ORDER BY idx LIMIT ?", (start, limit))

    def _find(self, stream: Stream, request_id: str) -> list[Frame]:
        return self._select(stream, "request_id = ? ORDER BY idx", (request_id,))

    def _existing(self, stream: Stream, indexes: list[int]) -> set[int]:
        marks = ",".join("?" * len(indexes))
        rows = self._db.execute(
            f"SELECT idx FROM {TABLES[stream]} WHERE idx IN ({marks})", tuple(indexes)
        ).fetchall()
        return {index for (index,) in rows}

    def _facts(self, stream: Stream) -> StreamFacts:
        length, first, last = self._db.execute(
            f"SELECT COUNT(*), MIN(idx), MAX(idx) FROM {TABLES[stream]}"
        ).fetchone()
        return StreamFacts(length, first, last, 1 if stream is Stream.INPUT else 0)
