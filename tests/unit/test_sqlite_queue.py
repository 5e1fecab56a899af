"""What only the embedded SQLite queue does: restarts, one owner per file, bad files, and files
written by an older runtime. The contract both stores keep is tested in test_queue_contract."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from runtime.config import ConfigError
from runtime.queue.base import ItemState, QueueOpenError, Stream
from runtime.queue.sqlite import SqliteQueue
from tests.queue_protos import claim_one


def run(work):
    return asyncio.run(work)


async def claim_all(queue: SqliteQueue) -> list[bytes]:
    bodies = []
    while (item := await claim_one(queue)) is not None:
        bodies.append(item.body)
    return bodies


def test_a_reopened_queue_puts_running_items_back_and_keeps_everything_else(tmp_path):
    path = tmp_path / "q.sqlite3"

    async def before_the_crash():
        queue = SqliteQueue(path)
        items = [await queue.enqueue(f"{i}".encode()) for i in range(4)]
        await claim_one(queue)  # 0 and 1 taken; 1 finishes, 0 is lost with the process
        await queue.complete(await claim_one(queue), b"one", 200)
        await queue.close()
        return items

    async def after_the_restart():
        queue = SqliteQueue(path)
        requeued = queue.num_requeued
        first = await claim_one(queue)
        order = [first.body, *await claim_all(queue)]
        finished = await queue.find(Stream.SINK, items[1].request_id)
        later = await queue.enqueue(b"4")
        await queue.close()
        return requeued, first, order, finished, later

    items = run(before_the_crash())
    requeued, first, order, finished, later = run(after_the_restart())
    assert requeued == 1
    assert order == [b"0", b"2", b"3"]
    assert first.attempt == 2  # a re-run: its result will say so
    assert [frame.data for frame in finished] == [b"one"]
    assert later.index > items[-1].index  # indexes are never reused


def test_a_second_process_cannot_open_the_same_queue(tmp_path):
    path = tmp_path / "q.sqlite3"
    first = SqliteQueue(path)
    with pytest.raises(QueueOpenError, match="in use by another process") as caught:
        SqliteQueue(path)
    assert isinstance(caught.value, ConfigError)  # a start-up error: exit code 2
    run(first.close())
    run(SqliteQueue(path).close())  # free again once closed


def test_a_file_that_is_not_a_queue_is_a_clear_error(tmp_path):
    path = tmp_path / "q.sqlite3"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(QueueOpenError, match=f"cannot open the queue at {path}"):
        SqliteQueue(path)
    newer = tmp_path / "newer.sqlite3"
    with sqlite3.connect(newer) as db:
        db.execute("PRAGMA user_version = 99")
    with pytest.raises(QueueOpenError, match="schema version 99"):
        SqliteQueue(newer)


def test_a_file_of_the_first_version_keeps_its_work_and_results(tmp_path):
    """A queue written by the runtime before the sink had indexes of its own (schema 1)."""
    path = tmp_path / "q.sqlite3"
    with sqlite3.connect(path) as db:
        db.executescript(
            """
            CREATE TABLE items (
                idx INTEGER PRIMARY KEY AUTOINCREMENT, request_id TEXT NOT NULL UNIQUE,
                state TEXT NOT NULL, priority INTEGER NOT NULL DEFAULT 0, body BLOB NOT NULL,
                content_type TEXT NOT NULL, tags TEXT NOT NULL, enqueued_at REAL NOT NULL,
                result BLOB, status INTEGER, finished_at REAL);
            CREATE INDEX items_by_turn ON items (state, priority DESC, idx);
            CREATE INDEX items_by_finish ON items (state, finished_at);
            PRAGMA user_version = 1;
            """
        )
        rows = [
            ("done-id", "done", b"", '{"user": "a"}', b"the answer", 200, 1.0),
            ("running-id", "running", b"ran", "{}", None, None, None),
            ("pending-id", "pending", b"waits", "{}", None, None, None),
        ]
        db.executemany(
            "INSERT INTO items (request_id, state, body, content_type, tags, enqueued_at, "
            "result, status, finished_at) VALUES (?, ?, ?, '', ?, 0, ?, ?, ?)",
            [
                (rid, state, body, tags, result, status, at)
                for rid, state, body, tags, result, status, at in rows
            ],
        )

    async def scenario():
        queue = SqliteQueue(path)
        done = await queue.find(Stream.SINK, "done-id")
        states = [await queue.state(rid) for rid in ("done-id", "running-id", "pending-id")]
        order = await claim_all(queue)
        await queue.close()
        return queue.num_requeued, done, states, order

    requeued, done, states, order = run(scenario())
    assert requeued == 1
    (frame,) = done
    assert frame.data == b"the answer"
    assert frame.tags == {"user": "a", "requestId": "done-id", "lastCode": "200"}
    assert states == [ItemState.DONE, ItemState.PENDING, ItemState.PENDING]
    assert order == [b"ran", b"waits"]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == 2
