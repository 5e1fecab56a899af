"""The embedded queue: one SQLite file (WAL mode), owned by one runtime at a time.

Every statement runs in one dedicated thread that owns the connection: commits are fsynced
(synchronous=FULL, so an accepted item survives a kill -9 and a power cut alike), and an fsync
can take tens of milliseconds on network disks, which the event loop, serving streams, must
never wait on. One thread also serialises the statements, so there is no lock contention.

An exclusive lock on `<path>.lock` keeps a second runtime off the same file: opening would put
the first one's running items back to pending. Runtimes that share a queue need a shared
implementation of `TaskQueue` (see base.py).
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
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from runtime.config import ConfigError
from runtime.queue.base import ItemState, ItemStatus, QueueCounts, QueueFullError, QueueItem

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    idx INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an index is never reused
    request_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    tags TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    result BLOB,
    status INTEGER,
    finished_at REAL
);
CREATE INDEX IF NOT EXISTS items_by_turn ON items (state, priority DESC, idx);
CREATE INDEX IF NOT EXISTS items_by_finish ON items (state, finished_at);
"""


class QueueOpenError(ConfigError):
    """The queue file cannot be opened; the message says which and why (exit code 2)."""


class SqliteQueue:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="queue-sqlite")
        self._connection: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        try:
            self.num_requeued = self._executor.submit(self._open).result()
        except BaseException:
            self._executor.submit(self._close).result()
            self._executor.shutdown()
            raise

    # -- the contract (TaskQueue) -------------------------------------------------------------

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
        return QueueItem(index, request_id, body, content_type, tags)

    async def claim(self) -> QueueItem | None:
        return await self._run(self._claim)

    async def complete(self, request_id: str, data: bytes, status: int) -> None:
        await self._run(self._complete, request_id, data, status)

    async def release(self, request_id: str) -> None:
        await self._run(
            self._execute,
            "UPDATE items SET state = 'pending' WHERE request_id = ? AND state = 'running'",
            (request_id,),
        )

    async def result(self, request_id: str, delete: bool = False) -> ItemStatus | None:
        return await self._run(self._result, request_id, delete)

    async def expire(self, finished_before: float) -> int:
        return await self._run(
            self._execute,
            "DELETE FROM items WHERE state = 'done' AND finished_at < ?",
            (finished_before,),
        )

    async def counts(self) -> QueueCounts:
        return await self._run(self._counts)

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown()

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
                "its own --queue-path"
            ) from None
        try:
            db = self._connection = sqlite3.connect(self.path, isolation_level=None)
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = FULL")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise QueueOpenError(
                    f"the queue at {self.path} has schema version {version}; this runtime "
                    f"reads version {SCHEMA_VERSION}"
                )
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            # The previous process died or stopped with these taken: they run again.
            return db.execute("UPDATE items SET state = 'pending' WHERE state = 'running'").rowcount
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
        with _transaction(db):
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

    def _claim(self) -> QueueItem | None:
        # One statement, so the claim is atomic even against another connection.
        rows = self._db.execute(
            "UPDATE items SET state = 'running' WHERE idx = (SELECT idx FROM items "
            "WHERE state = 'pending' ORDER BY priority DESC, idx LIMIT 1) "
            "RETURNING idx, request_id, body, content_type, tags"
        ).fetchall()  # exhausted, so the statement ends and commits
        if not rows:
            return None
        ((index, request_id, body, content_type, tags),) = rows
        return QueueItem(index, request_id, bytes(body), content_type, json.loads(tags))

    def _complete(self, request_id: str, data: bytes, status: int) -> None:
        # The body is no longer needed once the result is in: keep the file small.
        self._db.execute(
            "UPDATE items SET state = 'done', result = ?, status = ?, finished_at = ?, "
            "body = x'' WHERE request_id = ?",
            (data, status, time.time(), request_id),
        )

    def _result(self, request_id: str, delete: bool) -> ItemStatus | None:
        row = self._db.execute(
            "SELECT idx, state, tags, result, status FROM items WHERE request_id = ?",
            (request_id,),
        ).fetchone()
        if row is None:
            return None
        index, state, tags, data, status = row
        item = ItemStatus(
            index,
            request_id,
            ItemState(state),
            json.loads(tags),
            None if data is None else bytes(data),
            status,
        )
        if delete and item.state is ItemState.DONE:
            self._db.execute("DELETE FROM items WHERE request_id = ?", (request_id,))
        return item

    def _counts(self) -> QueueCounts:
        # Two range scans of the (state, ...) index: as cheap as the queue is short.
        count = "SELECT COUNT(*) FROM items WHERE state = ?"
        (pending,) = self._db.execute(count, ("pending",)).fetchone()
        (running,) = self._db.execute(count, ("running",)).fetchone()
        return QueueCounts(pending, running)


@contextlib.contextmanager
def _transaction(db: sqlite3.Connection):
    # IMMEDIATE takes the write lock at once, so the count and the insert see the same queue.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
