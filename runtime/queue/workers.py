"""Feeds queued requests to the processor at its concurrency, and keeps results until they expire.

Each queued body is answered by the same code that answers it on the synchronous route (the
ChatLLM API, or the custom processor's `process()`), called directly, so a queued request is
served exactly as a direct one would be; its status and body become the result (a 400 for a bad
body is a result like any other). Worker calls count as requests in flight, so a drain waits for
them; one that serving's end cuts short (ShuttingDown) goes back to pending for the next start
instead of becoming a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping

from runtime.admission import Admission
from runtime.api.answers import Answer
from runtime.config import RuntimeConfig
from runtime.errors import ApiError, ErrorKind, ShuttingDown
from runtime.metrics import Metrics
from runtime.phase import ServingStatus
from runtime.queue.base import ItemState, ItemStatus, QueueFullError, QueueItem, TaskQueue

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle dispatcher looks again, for items it was not told of
MAX_SWEEP_INTERVAL_S = 60.0


class QueueWorkers:
    """The queue's store (opened by the lifecycle before loading) and the workers (started once
    the service is ready, stopped after the server stops)."""

    def __init__(
        self,
        status: ServingStatus,
        metrics: Metrics,
        max_pending: int | None,
        result_ttl: float,
    ) -> None:
        self._status = status
        self._metrics = metrics
        self._max_pending = max_pending
        self._result_ttl = result_ttl
        self._store: TaskQueue | None = None
        self._wakeup = asyncio.Event()  # an item was enqueued or a worker is free
        self._finished = asyncio.Event()  # replaced after each result, so waiters all wake
        self._in_flight: dict[asyncio.Task, str] = {}  # worker task -> its item's request id
        self._tasks: list[asyncio.Task] = []

    @classmethod
    def for_config(
        cls, config: RuntimeConfig, status: ServingStatus, metrics: Metrics
    ) -> QueueWorkers:
        queue = config.queue
        max_pending = queue.max_pending
        if max_pending is None:  # the platform's rpc.max_queue_size is its queue's length
            max_pending = config.lifecycle.max_queue_size
        return cls(status, metrics, max_pending, queue.result_ttl)

    def attach(self, store: TaskQueue) -> None:
        """The opened store: items can be put and read from now on."""
        self._store = store

    @property
    def store(self) -> TaskQueue:
        if self._store is None:
            raise ApiError(ErrorKind.UNAVAILABLE, "the queue is not open yet: the service starts")
        return self._store

    def start(self, answer: Answer, admission: Admission, concurrency: int) -> None:
        """Serve queued items with `answer`, `concurrency` at once, each counted in flight."""
        self._tasks = [
            asyncio.create_task(self._dispatch(answer, admission, concurrency), name="queue"),
            asyncio.create_task(self._sweep(), name="queue-sweeper"),
        ]

    async def stop(self) -> None:
        """Stop claiming; items still running go back to pending for the next start."""
        running = list(self._in_flight)
        for task in [*self._tasks, *running]:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        if self._store is None:
            return
        unfinished = list(self._in_flight.values())
        for request_id in unfinished:
            await self._store.release(request_id)
        if unfinished:
            log.info(
                "queue: %d unfinished requests stay pending for the next start", len(unfinished)
            )
        await self._store.close()

    async def enqueue(
        self, body: bytes, content_type: str, tags: Mapping[str, str], priority: int
    ) -> QueueItem:
        try:
            item = await self.store.enqueue(body, content_type, tags, priority, self._max_pending)
        except QueueFullError as exc:
            self._metrics.rejections.labels("queue_full").inc()
            raise ApiError(ErrorKind.QUEUE_FULL, f"{exc}; retry later") from None
        self._wakeup.set()
        await self._update_gauge()
        return item

    async def wait_for_result(
        self, request_id: str, timeout: float, delete: bool = False
    ) -> ItemStatus | None:
        """The item's status once done, or as it stands after `timeout` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            finished = self._finished  # taken before reading, so no result slips past
            status = await self.store.result(request_id, delete)
            remaining = deadline - loop.time()
            if status is None or status.state is ItemState.DONE or remaining <= 0:
                return status
            # Look again at least every poll interval: with a shared queue, another runtime
            # may finish the item without this one hearing of it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(remaining, IDLE_POLL_S))

    async def _dispatch(self, answer: Answer, admission: Admission, concurrency: int) -> None:
        store = self.store
        while True:
            self._wakeup.clear()  # before looking, so a wake-up after the look is not lost
            if self._status.is_ready and len(self._in_flight) < concurrency:
                item = await store.claim()
                if item is not None:
                    task = asyncio.create_task(
                        self._work(item, answer, admission), name=f"queue-{item.index}"
                    )
                    self._in_flight[task] = item.request_id
                    await self._update_gauge()
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)

    async def _work(self, item: QueueItem, answer: Answer, admission: Admission) -> None:
        task = asyncio.current_task()
        cancelled = False
        try:
            with admission.admitted():  # a drain waits for it like for any request
                await self._serve(item, answer)
        except asyncio.CancelledError:
            cancelled = True  # stopped mid-way: stop() puts the item back to pending
            raise
        except Exception:  # the store failed: the item stays running until the next start
            log.exception("queue: cannot record the result of %s", item.request_id)
        finally:
            if not cancelled and task is not None:
                self._in_flight.pop(task, None)
            self._wakeup.set()  # a worker is free
        await self._update_gauge()

    async def _serve(self, item: QueueItem, answer: Answer) -> None:
        try:
            data, status = await answer(item.body, item.content_type)
        except ShuttingDown:  # cut short by the drain or a dead engine: the next start serves it
            await self.store.release(item.request_id)
            log.info("queue: request %s stays pending for the next start", item.request_id)
            return
        await self.store.complete(item.request_id, data, status)
        self._finished.set()
        self._finished = asyncio.Event()

    async def _sweep(self) -> None:
        interval = min(self._result_ttl, MAX_SWEEP_INTERVAL_S)
        while True:
            expired = await self.store.expire(time.time() - self._result_ttl)
            if expired:
                log.info("queue: %d results past their %g s expired", expired, self._result_ttl)
            await self._update_gauge()
            await asyncio.sleep(interval)

    async def _update_gauge(self) -> None:
        counts = await self.store.counts()
        gauge = self._metrics.queue_items
        gauge.labels("pending").set(counts.pending)
        gauge.labels("running").set(counts.running)
