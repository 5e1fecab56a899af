"""What only the Redis queue does: several runtimes on one queue, and Redis going away. Each test
runs against a real Redis server (tests/redis_server.py); the shared contract is tested in
test_queue_contract."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from runtime.queue.base import QueueOpenError, QueueUnavailableError, Stream
from runtime.queue.redis_queue import RedisQueue, where
from tests.queue_protos import claim_one
from tests.redis_server import RedisServer, free_port, require_redis


async def runtimes(url: str, count: int, **kwargs) -> list[RedisQueue]:
    """`count` stores on one queue, as `count` runtimes would open it."""
    service = f"shared-{uuid.uuid4().hex[:8]}"
    stores = [RedisQueue(url, service, **kwargs) for _ in range(count)]
    for store in stores:
        await store.connect()
    return stores


def test_runtimes_share_one_queue_indexes_rise_across_them_and_work_goes_once(redis_server):
    async def scenario():
        first, second = await runtimes(redis_server.url, 2)
        items = [await (first, second)[i % 2].enqueue(f"{i}".encode()) for i in range(7)]
        taken = []
        for store in (second, first, second, first, second, first, second, first):
            item = await claim_one(store)
            if item is not None:
                taken.append(item.request_id)
                await store.complete(item, b"done", 200)
        results = await first.frames(Stream.SINK, 0, 100)
        for store in (first, second):
            await store.close()
        return items, taken, results

    items, taken, results = run(scenario())
    indexes = [item.index for item in items]
    assert indexes == sorted(indexes)
    assert len(set(indexes)) == len(indexes)
    assert sorted(taken) == sorted(item.request_id for item in items)  # each once
    assert len(results) == len(items)


def test_a_dead_runtimes_items_go_to_another_after_the_visibility_timeout(redis_server):
    async def scenario():
        alive, dead = await runtimes(redis_server.url, 2, lease_s=0.3)
        item = await alive.enqueue(b"work")
        orphan = await claim_one(dead)  # ... and its runtime is killed: no renewal, no result
        assert await claim_one(alive) is None  # leased: not before the timeout
        deadline = time.monotonic() + 10
        while (taken := await claim_one(alive)) is None:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)  # the visibility timeout under test
        await dead.renew([orphan.request_id])  # too late: it no longer holds it
        assert await claim_one(dead) is None
        frame = await alive.complete(taken, b"answer", 200)
        for store in (alive, dead):
            await store.close()
        return item, orphan, taken, frame

    item, orphan, taken, frame = run(scenario())
    assert orphan.request_id == taken.request_id == item.request_id
    assert taken.attempt == 2
    assert frame.tags["attempt"] == "2"


def test_a_released_item_is_taken_at_once_by_another_runtime(redis_server):
    async def scenario():
        leaving, staying = await runtimes(redis_server.url, 2, lease_s=60)
        item = await leaving.enqueue(b"cut short by a drain")
        await claim_one(leaving)
        await leaving.release(item.request_id)
        taken = await claim_one(staying)
        for store in (leaving, staying):
            await store.close()
        return item, taken

    item, taken = run(scenario())
    assert taken.request_id == item.request_id
    assert taken.attempt == 1


def test_redis_away_is_a_503_error_and_its_return_is_picked_up(tmp_path):
    server = RedisServer(tmp_path / "redis").start()

    async def scenario():
        (store,) = await runtimes(server.url, 1)
        accepted = await store.enqueue(b"accepted before the crash")
        server.kill()
        with pytest.raises(QueueUnavailableError, match="unreachable") as refused:
            await store.enqueue(b"while Redis is down")
        server.start()
        item = await claim_one(store)  # the connection is made again
        await store.close()
        return accepted, refused.value, item

    try:
        accepted, refused, item = run(scenario())
    finally:
        server.stop()
    assert refused.status == 503
    assert item.request_id == accepted.request_id  # acknowledged, so kept (AOF, fsync always)


def test_a_redis_restarted_empty_gets_its_consumer_group_again(tmp_path):
    server = RedisServer(tmp_path / "redis").start()

    async def scenario():
        (store,) = await runtimes(server.url, 1)
        await store.enqueue(b"lost with the data")
        await store._client.flushall()  # as a Redis without persistence comes back
        await store.enqueue(b"after")
        item = await claim_one(store)
        await store.close()
        return item

    try:
        item = run(scenario())
    finally:
        server.stop()
    assert item.body == b"after"


def test_connecting_waits_for_redis_and_says_why(tmp_path):
    require_redis()
    port = free_port()
    reasons: list[str] = []

    async def scenario():
        store = RedisQueue(f"redis://:secret@127.0.0.1:{port}/0", "waits")
        connecting = asyncio.create_task(store.connect(reasons.append))
        deadline = time.monotonic() + 10
        while not reasons:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.05)
        server = RedisServer(tmp_path / "redis", password="secret")
        server.port = port
        server.start()
        try:
            await asyncio.wait_for(connecting, 30)
            await store.close()
        finally:
            server.stop()

    run(scenario())
    assert "unreachable" in reasons[0]
    assert f"redis://127.0.0.1:{port}/0" in reasons[0]
    assert "secret" not in reasons[0]  # the password never shows


def test_a_wrong_password_stops_the_start(tmp_path):
    server = RedisServer(tmp_path / "redis", password="right").start()

    async def scenario():
        store = RedisQueue(server.url, "auth", password="wrong")
        try:
            await store.connect()
        finally:
            await store._client.aclose()

    try:
        with pytest.raises(QueueOpenError, match="refused"):
            run(scenario())
    finally:
        server.stop()


def test_where_leaves_the_password_out():
    assert where("rediss://user:pw@example.com:6380/2") == "rediss://example.com:6380/2"


def run(work):
    return asyncio.run(work)
