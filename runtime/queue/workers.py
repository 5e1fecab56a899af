"""Feeds queued requests to the processor at its concurrency, and keeps results until they expire.

Each queued body is answered by the same code that answers it on the synchronous route (the
ChatLLM API, or the custom processor's `process()`), called directly, so a queued request is
served exactly as a direct one would be; its status and body become the result (a 400 for a bad
body is a result like any other). Worker calls count as requests in flight, so a drain waits for
them; one that serving's end cuts short (ShuttingDown) is handed back to the queue instead of
becoming a result.

Leases: while a request runs, its lease is renewed every third of the store's lease, so only a
runtime that died (or stalled that long) loses its items to another. When the store is
unreachable (Redis restarting), claiming waits with backoff and a finished result is kept and
retried until the store takes it: nothing a client was told is accepted is dropped here.
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
from runtime.phase import Phase, ServingStatus
from runtime.queue.base import (
    QueueFullError,
    QueueItem,
    QueueUnavailableError,
    Stream,
    TaskQueue,
)

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle worker looks again, for changes it was not told of
MAX_SWEEP_INTERVAL_S = 60.0
MIN_BACKOFF_S = 0.1
MAX_BACKOFF_S = 5.0
GAUGE_INTERVAL_S = 0.1


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
        # Whether the input queue may hold work to claim, and how many times it grew: a claim
        # that finds nothing, with no growth meanwhile, stops the claims until it grows again.
        self._may_hold_work = True
        self._num_input_changes = 0
        self._changes = {stream: asyncio.Event() for stream in Stream}  # replaced when set
        self._in_flight: dict[asyncio.Task, str] = {}  # worker task -> its item's request id
        self._tasks: list[asyncio.Task] = []
        self._gauge: asyncio.Task | None = None
        self.num_watchers = 0  # WebSocket watchers of the sink on this runtime

    @classmethod
    def for_config(
        cls, config: RuntimeConfig, status: ServingStatus, metrics: Metrics
    ) -> QueueWorkers:
        queue = config.queue
        max_pending = queue.max_pending
        if max_pending is None:  # the platform's rpc.max_queue_size is its queue's length
            max_pending = config.lifecycle.max_queue_size
        return cls(status, metrics, max_pending, queue.result_ttl)

    @property
    def max_pending(self) -> int | None:
        return self._max_pending

    @property
    def is_stopping(self) -> bool:
        """Serving has ended: connections that stay open (watchers) close."""
        return self._status.phase in (Phase.STOPPING, Phase.FAILED)

    def attach(self, store: TaskQueue) -> None:
        """The opened store: items can be put and read from now on."""
        self._store = store
        store.add_listener(self._on_change)

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
            asyncio.create_task(self._renew(), name="queue-leases"),
        ]

    async def stop(self) -> None:
        """Stop claiming; items still running are handed back for another runtime (or the next
        start) to run."""
        running = list(self._in_flight)
        for task in [*self._tasks, *running, *([self._gauge] if self._gauge else [])]:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        if self._store is None:
            return
        unfinished = list(self._in_flight.values())
        for request_id in unfinished:
            try:
                await self._store.release(request_id)
            except QueueUnavailableError as exc:  # its lease lapses: another runtime takes it
                log.warning("queue: cannot hand back %s: %s", request_id, exc)
        if unfinished:
            log.info("queue: %d unfinished requests handed back to the queue", len(unfinished))
        await self._store.close()

    async def enqueue(
        self, body: bytes, content_type: str, tags: Mapping[str, str], priority: int
    ) -> QueueItem:
        try:
            item = await self.store.enqueue(body, content_type, tags, priority, self._max_pending)
        except QueueFullError as exc:
            self._metrics.rejections.labels("queue_full").inc()
            raise ApiError(ErrorKind.QUEUE_FULL, f"{exc}; retry later") from None
        self._input_changed()
        self._refresh_gauge()
        return item

    def next_change(self, stream: Stream) -> asyncio.Event:
        """Set at the next change of `stream`, here or in a runtime that published it: take it
        before reading the queue, so no change slips past, then `await until_set(event, s)`."""
        return self._changes[stream]

    def _on_change(self, stream: Stream) -> None:
        event = self._changes[stream]
        self._changes[stream] = asyncio.Event()
        event.set()
        if stream is Stream.INPUT:
            self._input_changed()
            if self._tasks:  # serving: other runtimes' work shows in the gauge too
                self._refresh_gauge()

    def _input_changed(self) -> None:
        self._num_input_changes += 1
        self._may_hold_work = True
        self._wakeup.set()

    async def _dispatch(self, answer: Answer, admission: Admission, concurrency: int) -> None:
        backoff = Backoff("claiming")
        while True:
            self._wakeup.clear()  # before looking, so a wake-up after the look is not lost
            free = self._status.is_ready and len(self._in_flight) < concurrency
            if free and self._may_hold_work:
                changes = self._num_input_changes
                try:
                    if backoff.failing and self._in_flight:
                        # Back from an outage: renew what runs here first, or a lease that
                        # lapsed meanwhile would be claimed back and run twice.
                        await self.store.renew(list(self._in_flight.values()))
                    wanted = concurrency - len(self._in_flight)
                    items = await self.store.claim(wanted)
                except QueueUnavailableError as exc:
                    await backoff.wait(exc)
                    continue
                backoff.recovered()
                for item in items:
                    task = asyncio.create_task(
                        self._work(item, answer, admission), name=f"queue-{item.index}"
                    )
                    self._in_flight[task] = item.request_id
                if items:
                    self._refresh_gauge()
                if len(items) < wanted and changes == self._num_input_changes:
                    self._may_hold_work = False  # drained, and nothing came while it looked
                continue
            try:
                await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)
            except TimeoutError:  # look again: a lease that lapsed announces nothing
                self._may_hold_work = True

    async def _work(self, item: QueueItem, answer: Answer, admission: Admission) -> None:
        task = asyncio.current_task()
        cancelled = False
        try:
            with admission.admitted():  # a drain waits for it like for any request
                await self._serve(item, answer)
        except asyncio.CancelledError:
            cancelled = True  # stopped mid-way: stop() hands the item back
            raise
        except Exception:  # a bug: the item's lease lapses and another run takes it
            log.exception("queue: cannot record the result of %s", item.request_id)
        finally:
            if not cancelled and task is not None:
                self._in_flight.pop(task, None)
            self._wakeup.set()  # a worker is free
        self._refresh_gauge()

    async def _serve(self, item: QueueItem, answer: Answer) -> None:
        try:
            data, status = await answer(item.body, item.content_type)
        except ShuttingDown:  # cut short by the drain or a dead engine: another run serves it
            try:
                await self.store.release(item.request_id)
            except QueueUnavailableError as exc:  # its lease lapses instead
                log.warning("queue: cannot hand back %s: %s", item.request_id, exc)
                return
            log.info("queue: request %s handed back to the queue", item.request_id)
            return
        backoff = Backoff(f"recording the result of {item.request_id}")
        while True:
            try:
                frame = await self.store.complete(item, data, status)
                break
            except QueueUnavailableError as exc:  # kept here until the store is back
                await backoff.wait(exc)
        backoff.recovered()
        if frame is None:
            log.info("queue: request %s was deleted while it ran; result dropped", item.request_id)

    async def _renew(self) -> None:
        interval = self.store.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            if self._in_flight:
                try:
                    await self.store.renew(list(self._in_flight.values()))
                except QueueUnavailableError as exc:
                    log.warning("queue: cannot renew the leases of running requests: %s", exc)

    async def _sweep(self) -> None:
        interval = min(self._result_ttl, MAX_SWEEP_INTERVAL_S)
        while True:
            try:
                expired = await self.store.expire(time.time() - self._result_ttl)
            except QueueUnavailableError as exc:
                log.warning("queue: cannot expire old results: %s", exc)
            else:
                if expired:
                    log.info("queue: %d results past their %g s expired", expired, self._result_ttl)
            self._refresh_gauge()
            await asyncio.sleep(interval)

    def _refresh_gauge(self) -> None:
        """Update the queue-length gauge in the background: one update at a time, and at most
        every GAUGE_INTERVAL_S, so a busy queue spends its round trips on its items."""
        if self._gauge is None or self._gauge.done():
            self._gauge = asyncio.create_task(self._update_gauge(), name="queue-gauge")

    async def _update_gauge(self) -> None:
        await asyncio.sleep(GAUGE_INTERVAL_S)  # what changes meanwhile is counted too
        try:
            counts = await self.store.counts()
        except QueueUnavailableError:
            return
        gauge = self._metrics.queue_items
        gauge.labels("pending").set(counts.pending)
        gauge.labels("running").set(counts.running)


async def until_set(event: asyncio.Event, timeout: float) -> None:
    """Wait for `event` for up to `timeout` seconds, and never longer than IDLE_POLL_S: a change
    in another runtime may come unannounced (a message lost while Redis was away)."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), max(0.0, min(timeout, IDLE_POLL_S)))


class Backoff:
    """Waits longer after each failure (up to MAX_BACKOFF_S); logs the first and the recovery."""

    def __init__(self, doing: str) -> None:
        self._doing = doing
        self._delay = 0.0

    async def wait(self, error: Exception) -> None:
        if not self._delay:
            log.warning("queue: %s failed, retrying: %s", self._doing, error)
        self._delay = min(max(self._delay * 2, MIN_BACKOFF_S), MAX_BACKOFF_S)
        await asyncio.sleep(self._delay)

    @property
    def failing(self) -> bool:
        return self._delay > 0

    def recovered(self) -> None:
        if self._delay:
            log.info("queue: %s works again", self._doing)
        self._delay = 0.0
