"""The embedded SQLite queue: order, claim and complete, the bound, expiry, and restarts."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from runtime.config import ConfigError
from runtime.queue.base import ItemState, QueueCounts, QueueFullError
from runtime.queue.sqlite import QueueOpenError, SqliteQueue


def run(work):
    return asyncio.run(work)


async def claim_all(queue: SqliteQueue) -> list[bytes]:
    bodies = []
    while (item := await queue.claim()) is not None:
        bodies.append(item.body)
    return bodies


def test_items_come_out_in_order_with_priority_first(tmp_path):
    async def scenario():
        queue = SqliteQueue(tmp_path / "q.sqlite3")
        first = await queue.enqueue(b"a")
        second = await queue.enqueue(b"b")
        await queue.enqueue(b"urgent", priority=1)
        await queue.enqueue(b"c")
        assert second.index > first.index
        assert first.request_id != second.request_id
        order = await claim_all(queue)
        await queue.close()
        return order

    assert run(scenario()) == [b"urgent", b"a", b"b", b"c"]


def test_claim_then_complete_makes_the_result_readable(tmp_path):
    async def scenario():
        queue = SqliteQueue(tmp_path / "q.sqlite3")
        item = await queue.enqueue(b'{"prompt": "x"}', "application/json", {"user": "7"})
        assert (await queue.result(item.request_id)).state is ItemState.PENDING
        claimed = await queue.claim()
        assert claimed == item  # body, content type and tags as accepted
        assert await queue.claim() is None  # taken: no one else gets it
        assert (await queue.result(item.request_id)).state is ItemState.RUNNING
        await queue.complete(item.request_id, b"answer", 400)
        done = await queue.result(item.request_id)
        counts = await queue.counts()
        assert await queue.result("no-such-id") is None
        await queue.close()
        return item, done, counts

    item, done, counts = run(scenario())
    assert (done.state, done.data, done.status) == (ItemState.DONE, b"answer", 400)
    assert (done.index, done.tags) == (item.index, {"user": "7"})
    assert counts == QueueCounts(pending=0, running=0)


def test_a_released_item_is_claimed_again_before_later_ones(tmp_path):
    async def scenario():
        queue = SqliteQueue(tmp_path / "q.sqlite3")
        first = await queue.enqueue(b"first")
        await queue.enqueue(b"second")
        await queue.claim()
        await queue.release(first.request_id)
        order = await claim_all(queue)
        await queue.close()
        return order

    assert run(scenario()) == [b"first", b"second"]


def test_a_full_queue_refuses_and_running_items_do_not_count(tmp_path):
    async def scenario():
        queue = SqliteQueue(tmp_path / "q.sqlite3")
        await queue.enqueue(b"1", max_pending=2)
        await queue.enqueue(b"2", max_pending=2)
        with pytest.raises(QueueFullError, match="maximum of 2 waiting"):
            await queue.enqueue(b"3", max_pending=2)
        await queue.claim()
        await queue.enqueue(b"3", max_pending=2)  # one left the waiting line
        counts = await queue.counts()
        await queue.close()
        return counts

    assert run(scenario()) == QueueCounts(pending=2, running=1)


def test_expiry_deletes_only_results_finished_before_the_cutoff(tmp_path):
    async def scenario():
        queue = SqliteQueue(tmp_path / "q.sqlite3")
        old, waiting = await queue.enqueue(b"old"), await queue.enqueue(b"waiting")
        await queue.claim()
        await queue.complete(old.request_id, b"r", 200)
        assert await queue.expire(time.time() - 60) == 0  # finished just now: kept
        assert await queue.expire(time.time() + 1) == 1
        gone, kept = await queue.result(old.request_id), await queue.result(waiting.request_id)
        await queue.close()
        return gone, kept

    gone, kept = run(scenario())
    assert gone is None
    assert kept.state is ItemState.PENDING


def test_reading_with_delete_removes_a_done_result_only(tmp_path):
    async def scenario():
        queue = SqliteQueue(tmp_path / "q.sqlite3")
        item = await queue.enqueue(b"x")
        pending = await queue.result(item.request_id, delete=True)
        await queue.claim()
        await queue.complete(item.request_id, b"r", 200)
        done = await queue.result(item.request_id, delete=True)
        after = await queue.result(item.request_id)
        await queue.close()
        return pending, done, after

    pending, done, after = run(scenario())
    assert pending.state is ItemState.PENDING  # not done: nothing deleted
    assert done.data == b"r"
    assert after is None


def test_a_reopened_queue_puts_running_items_back_and_keeps_everything_else(tmp_path):
    path = tmp_path / "q.sqlite3"

    async def before_the_crash():
        queue = SqliteQueue(path)
        items = [await queue.enqueue(f"{i}".encode()) for i in range(4)]
        await queue.claim()  # 0 and 1 taken; 1 finishes, 0 is lost with the process
        await queue.claim()
        await queue.complete(items[1].request_id, b"one", 200)
        await queue.close()
        return items

    async def after_the_restart():
        queue = SqliteQueue(path)
        requeued = queue.num_requeued
        order = await claim_all(queue)
        finished = await queue.result(items[1].request_id)
        later = await queue.enqueue(b"4")
        await queue.close()
        return requeued, order, finished, later

    items = run(before_the_crash())
    requeued, order, finished, later = run(after_the_restart())
    assert requeued == 1
    assert order == [b"0", b"2", b"3"]
    assert finished.data == b"one"
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
