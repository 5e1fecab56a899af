"""The queue contract (runtime/queue/base.py), one suite run against both stores: the embedded
SQLite file and Redis (a real server, started by the `redis_server` fixture)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

import pytest

from runtime.queue.base import (
    ItemState,
    QueueCounts,
    QueueFullError,
    Stream,
    TaskQueue,
)
from tests.queue_protos import claim_one

Scenario = Callable[[Callable[..., Awaitable[TaskQueue]]], Awaitable]
_names = itertools.count()


@pytest.fixture(params=["sqlite", "redis"])
def run(request, tmp_path):
    """Runs `scenario(open_store)` in one event loop; `open_store(lease_s=..., result_ttl=...)`
    opens a fresh store of the parametrised kind, closed after."""
    kind = request.param
    server = request.getfixturevalue("redis_server") if kind == "redis" else None
    service = f"contract-{next(_names)}-{time.time_ns()}"

    def execute(scenario: Scenario):
        async def main():
            opened: list[TaskQueue] = []

            async def open_store(lease_s: float = 60.0, result_ttl: float = 3600.0) -> TaskQueue:
                if server is not None:
                    from runtime.queue.redis_queue import RedisQueue

                    store: TaskQueue = RedisQueue(
                        server.url, service, lease_s=lease_s, result_ttl=result_ttl
                    )
                    await store.connect()  # type: ignore[attr-defined]
                else:
                    from runtime.queue.sqlite import SqliteQueue

                    assert not opened, "one SQLite store per file"
                    store = SqliteQueue(tmp_path / "q.sqlite3", lease_s)
                opened.append(store)
                return store

            try:
                return await scenario(open_store)
            finally:
                for store in opened:
                    await store.close()

        return asyncio.run(main())

    return execute


async def claim_all(queue: TaskQueue) -> list[bytes]:
    bodies = []
    while (item := await claim_one(queue)) is not None:
        bodies.append(item.body)
    return bodies


async def claimed_again(queue: TaskQueue, deadline_s: float = 10.0):
    """Claims until an item comes (its lease lapsing is what is tested), within a deadline."""
    deadline = time.monotonic() + deadline_s
    while (item := await claim_one(queue)) is None:
        assert time.monotonic() < deadline, "the lapsed lease was never claimed again"
        await asyncio.sleep(0.05)
    return item


def test_items_come_out_priority_first_then_in_order_with_rising_indexes(run):
    async def scenario(open_store):
        queue = await open_store()
        items = [await queue.enqueue(body) for body in (b"a", b"b")]
        items.append(await queue.enqueue(b"urgent", priority=1))
        items.append(await queue.enqueue(b"c"))
        order = await claim_all(queue)
        return items, order

    items, order = run(scenario)
    assert order == [b"urgent", b"a", b"b", b"c"]
    indexes = [item.index for item in items]
    assert indexes == sorted(indexes)
    assert len(set(indexes)) == 4
    assert len({item.request_id for item in items}) == 4


def test_a_claim_takes_up_to_its_limit_in_turn(run):
    async def scenario(open_store):
        queue = await open_store()
        for body in (b"a", b"b", b"c"):
            await queue.enqueue(body)
        await queue.enqueue(b"urgent", priority=1)
        return [[item.body for item in await queue.claim(limit)] for limit in (3, 3, 1)]

    assert run(scenario) == [[b"urgent", b"a", b"b"], [b"c"], []]


def test_a_completed_item_leaves_the_input_queue_for_the_sink_with_its_tags(run):
    async def scenario(open_store):
        queue = await open_store()
        item = await queue.enqueue(b'{"prompt": "x"}', "application/json", {"user": "7"})
        states = [await queue.state(item.request_id)]
        claimed = await claim_one(queue)
        assert await claim_one(queue) is None  # taken: no one else gets it
        states.append(await queue.state(item.request_id))
        frame = await queue.complete(claimed, b"answer", 400)
        states.append(await queue.state(item.request_id))
        found = await queue.find(Stream.SINK, item.request_id)
        left = await queue.frames(Stream.INPUT, 0, 10)
        return item, claimed, frame, states, found, left, await queue.counts()

    item, claimed, frame, states, found, left, counts = run(scenario)
    assert claimed == item  # body, content type and tags as accepted; first attempt
    assert states == [ItemState.PENDING, ItemState.RUNNING, ItemState.DONE]
    assert frame.data == b"answer"
    assert frame.tags == {"user": "7", "requestId": item.request_id, "lastCode": "400"}
    assert found == [frame]
    assert left == []
    assert counts == QueueCounts(pending=0, running=0)


def test_the_sink_has_its_own_indexes_in_the_order_results_arrive(run):
    async def scenario(open_store):
        queue = await open_store()
        first, second = await queue.enqueue(b"1"), await queue.enqueue(b"2")
        one, two = await claim_one(queue), await claim_one(queue)
        late = await queue.complete(two, b"second", 200)  # the later request finishes first
        early = await queue.complete(one, b"first", 200)
        frames = await queue.frames(Stream.SINK, 0, 10)
        return first, second, late, early, frames

    first, second, late, early, frames = run(scenario)
    assert late.index < early.index
    assert [frame.request_id for frame in frames] == [second.request_id, first.request_id]


def test_a_released_item_comes_back_first_and_its_cut_run_is_not_counted(run):
    async def scenario(open_store):
        queue = await open_store()
        first = await queue.enqueue(b"first")
        await queue.enqueue(b"second")
        taken = await claim_one(queue)
        await queue.release(first.request_id)
        state = await queue.state(first.request_id)
        again = await claim_one(queue)
        return taken, state, again, await claim_all(queue)

    taken, state, again, rest = run(scenario)
    assert taken.body == again.body == b"first"
    assert state is ItemState.PENDING
    assert again.attempt == 1
    assert rest == [b"second"]


def test_a_full_queue_refuses_and_running_items_do_not_count(run):
    async def scenario(open_store):
        queue = await open_store()
        await queue.enqueue(b"1", max_pending=2)
        await queue.enqueue(b"2", max_pending=2)
        with pytest.raises(QueueFullError, match="maximum of 2 waiting"):
            await queue.enqueue(b"3", max_pending=2)
        await claim_one(queue)
        await queue.enqueue(b"3", max_pending=2)  # one left the waiting line
        return await queue.counts()

    assert run(scenario) == QueueCounts(pending=2, running=1)


def test_a_lapsed_lease_is_run_again_marked_and_the_late_first_result_is_a_duplicate(run):
    async def scenario(open_store):
        queue = await open_store(lease_s=0.3)
        item = await queue.enqueue(b"work", tags={"k": "v"})
        first_run = await claim_one(queue)  # ... whose runtime stalls past its lease
        second_run = await claimed_again(queue)
        rerun = await queue.complete(second_run, b"from the re-run", 200)
        late = await queue.complete(first_run, b"from the first run", 200)
        results = await queue.find(Stream.SINK, item.request_id)
        return first_run, second_run, rerun, late, results

    first_run, second_run, rerun, late, results = run(scenario)
    assert (first_run.attempt, second_run.attempt) == (1, 2)
    assert rerun.tags["attempt"] == "2"
    assert "duplicate" not in rerun.tags
    assert late.tags["duplicate"] == "true"
    assert [frame.data for frame in results] == [b"from the re-run", b"from the first run"]


def test_a_renewed_lease_is_kept(run):
    async def scenario(open_store):
        queue = await open_store(lease_s=0.4)
        await queue.enqueue(b"long")
        item = await claim_one(queue)
        taken_meanwhile = []
        deadline = time.monotonic() + 1.2  # three leases long
        while time.monotonic() < deadline:
            await queue.renew([item.request_id])
            taken_meanwhile.append(await claim_one(queue))
            await asyncio.sleep(0.1)  # the renewal interval under test
        return taken_meanwhile

    assert set(run(scenario)) == {None}


def test_deleting_a_request_stops_it_running_or_drops_its_result(run):
    async def scenario(open_store):
        queue = await open_store()
        running = await queue.enqueue(b"running")
        waiting = await queue.enqueue(b"waiting")
        item = await claim_one(queue)
        assert await queue.delete(Stream.INPUT, [running.index, waiting.index]) == 2
        dropped = await queue.complete(item, b"nobody wants it", 200)
        return (
            dropped,
            await claim_one(queue),
            await queue.frames(Stream.SINK, 0, 10),
            await queue.state(waiting.request_id),
        )

    dropped, next_item, sink, state = run(scenario)
    assert dropped is None
    assert next_item is None
    assert sink == []
    assert state is None


def test_frames_find_existing_delete_and_truncate_on_both_queues(run):
    async def scenario(open_store):
        queue = await open_store()
        items = [await queue.enqueue(f"{i}".encode(), tags={"n": str(i)}) for i in range(4)]
        puts = [await queue.put(f"r{i}".encode(), {"n": str(i)}) for i in range(4)]
        seen = {
            "input from 2": await queue.frames(Stream.INPUT, items[2].index, 10),
            "sink head": await queue.frames(Stream.SINK, 0, 2),
            "input by id": await queue.find(Stream.INPUT, items[1].request_id),
            "sink by id": await queue.find(Stream.SINK, puts[3].request_id),
        }
        indexes = [frame.index for frame in puts]
        assert await queue.existing(Stream.SINK, [*indexes, 10**9]) == set(indexes)
        assert await queue.delete(Stream.SINK, [indexes[0], 10**9]) == 1
        assert await queue.truncate(Stream.SINK, indexes[2]) == 1
        assert await queue.truncate(Stream.INPUT, items[3].index) == 3
        seen["sink after"] = await queue.frames(Stream.SINK, 0, 10)
        seen["input after"] = await queue.frames(Stream.INPUT, 0, 10)
        facts = await queue.facts(Stream.SINK), await queue.facts(Stream.INPUT)
        return items, puts, seen, facts

    items, puts, seen, (sink, input_queue) = run(scenario)
    assert [frame.data for frame in seen["input from 2"]] == [b"2", b"3"]
    assert seen["input from 2"][0].tags == {"n": "2", "requestId": items[2].request_id}
    assert [frame.data for frame in seen["sink head"]] == [b"r0", b"r1"]
    assert seen["input by id"][0].index == items[1].index
    assert seen["sink by id"] == [puts[3]]
    assert puts[3].tags == {"n": "3", "requestId": puts[3].request_id}
    assert [frame.data for frame in seen["sink after"]] == [b"r2", b"r3"]
    assert [frame.data for frame in seen["input after"]] == [b"3"]
    assert (sink.length, sink.first_index, sink.last_index) == (2, puts[2].index, puts[3].index)
    assert (input_queue.length, input_queue.first_index) == (1, items[3].index)


def test_position_tells_what_runs_and_how_many_go_first(run):
    async def scenario(open_store):
        queue = await open_store()
        first = await queue.enqueue(b"first")
        normal = [await queue.enqueue(b"n") for _ in range(2)]
        urgent = await queue.enqueue(b"urgent", priority=1)
        await claim_one(queue)  # the urgent one runs
        return [await queue.position(item.index) for item in (urgent, first, normal[1])], (
            await queue.position(10**9)
        )

    (running, first, last), missing = run(scenario)
    assert running.state is ItemState.RUNNING
    assert running.consumer
    assert (first.state, first.num_ahead) == (ItemState.PENDING, 0)
    assert (last.state, last.num_ahead) == (ItemState.PENDING, 2)
    assert missing is None


def test_expiry_deletes_only_results_that_arrived_before_the_cutoff(run):
    async def scenario(open_store):
        queue = await open_store()
        old, waiting = await queue.enqueue(b"old"), await queue.enqueue(b"waiting")
        await queue.complete(await claim_one(queue), b"r", 200)
        kept = await queue.expire(time.time() - 60)  # finished just now: kept
        expired = await queue.expire(time.time() + 1)
        return (
            kept,
            expired,
            await queue.state(old.request_id),
            await queue.state(waiting.request_id),
        )

    kept, expired, old_state, waiting_state = run(scenario)
    assert (kept, expired) == (0, 1)
    assert old_state is None
    assert waiting_state is ItemState.PENDING


def test_listeners_hear_of_new_items_and_results(run):
    async def scenario(open_store):
        queue = await open_store()
        heard: list[Stream] = []
        queue.add_listener(heard.append)
        await queue.enqueue(b"x")
        await queue.complete(await claim_one(queue), b"r", 200)
        deadline = time.monotonic() + 5
        while Stream.SINK not in heard and time.monotonic() < deadline:
            await asyncio.sleep(0.01)  # Redis tells through its channel
        return heard

    heard = run(scenario)
    assert Stream.INPUT in heard
    assert Stream.SINK in heard
