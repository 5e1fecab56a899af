"""Feeds queued requests to the processor at its concurrency, and keeps results until they expire.

Each queued body is answered by the synchronous route's own handler (ChatLLM or the custom
processor's), called in-process through an ASGI client, so a queued request is served exactly
as a direct one would be; its status and body become the result (a 400 for a bad body is a
result like any other). Worker calls count as requests in flight, so a drain waits for them;
one that the drain cuts short (a 503 once the server stops serving) goes back to pending for
the next start instead of becoming a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import httpx
import orjson

from runtime.admission import Admission
from runtime.errors import ApiError, ErrorKind
from runtime.queue.base import ItemState, ItemStatus, QueueFullError, QueueItem, TaskQueue
from runtime.state import ServingState

log = logging.getLogger(__name__)

IDLE_POLL_S = 1.0  # how often an idle dispatcher looks again, for items it was not told of
MAX_SWEEP_INTERVAL_S = 60.0


class QueueWorkers:
    def __init__(
        self,
        state: ServingState,
        queue: TaskQueue,
        handler: Any,  # the ASGI app holding the synchronous platform route
        admission: Admission,
        result_ttl: float,
    ) -> None:
        self.state = state
        self.queue = queue
        self._handler = handler
        self._admission = admission
        self._result_ttl = result_ttl
        self._path = state.config.server.platform_paths[1]
        self._max_pending = state.config.lifecycle.max_queue_size
        self._wakeup = asyncio.Event()  # an item was enqueued or a worker is free
        self._finished = asyncio.Event()  # replaced after each result, so waiters all wake
        self._in_flight: dict[asyncio.Task, str] = {}  # worker task -> its item's request id
        self._tasks: list[asyncio.Task] = []

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any) -> AsyncIterator[None]:
        """The app's lifespan: workers run while the server does."""
        self._tasks = [
            asyncio.create_task(self._dispatch(), name="queue-dispatcher"),
            asyncio.create_task(self._sweep(), name="queue-sweeper"),
        ]
        try:
            yield
        finally:
            await self.stop()

    async def stop(self) -> None:
        """Stop claiming; items still running go back to pending for the next start."""
        running = list(self._in_flight)
        for task in [*self._tasks, *running]:
            task.cancel()
        await asyncio.gather(*self._tasks, *running, return_exceptions=True)
        unfinished = list(self._in_flight.values())
        for request_id in unfinished:
            await self.queue.release(request_id)
        if unfinished:
            log.info(
                "queue: %d unfinished requests stay pending for the next start", len(unfinished)
            )
        await self.queue.close()

    async def enqueue(
        self, body: bytes, content_type: str, tags: Mapping[str, str], priority: int
    ) -> QueueItem:
        try:
            item = await self.queue.enqueue(body, content_type, tags, priority, self._max_pending)
        except QueueFullError as exc:
            self.state.metrics.rejections.labels("queue_full").inc()
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
            status = await self.queue.result(request_id, delete)
            remaining = deadline - loop.time()
            if status is None or status.state is ItemState.DONE or remaining <= 0:
                return status
            # Look again at least every poll interval: with a shared queue, another runtime
            # may finish the item without this one hearing of it.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(finished.wait(), min(remaining, IDLE_POLL_S))

    async def answer(self, body: bytes, content_type: str) -> httpx.Response:
        """What the synchronous route answers this body (also for warm-up requests)."""
        # Errors the handlers do not map themselves come back as a 500 response, not raised.
        transport = httpx.ASGITransport(app=self._handler, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://queue") as client:
            headers = {"content-type": content_type} if content_type else {}
            return await client.post(self._path, content=body, headers=headers, timeout=None)

    async def _dispatch(self) -> None:
        while True:
            self._wakeup.clear()  # before looking, so a wake-up after the look is not lost
            if self.state.is_ready and len(self._in_flight) < self._concurrency():
                item = await self.queue.claim()
                if item is not None:
                    task = asyncio.create_task(self._work(item), name=f"queue-{item.index}")
                    self._in_flight[task] = item.request_id
                    await self._update_gauge()
                    continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), IDLE_POLL_S)

    def _concurrency(self) -> int:
        return self.state.processor.info.max_concurrency

    async def _work(self, item: QueueItem) -> None:
        task = asyncio.current_task()
        cancelled = False
        try:
            with self._admission.admitted():  # a drain waits for it like for any request
                await self._serve(item)
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

    async def _serve(self, item: QueueItem) -> None:
        try:
            response = await self.answer(item.body, item.content_type)
            data, status = response.content, response.status_code
        except Exception as exc:
            log.exception("queue: request %s failed outside its handler", item.request_id)
            error = ApiError(ErrorKind.INTERNAL, f"the request failed: {exc}")
            data, status = orjson.dumps(error.body()), error.status
        if status == 503 and not self.state.is_ready:
            # Cut short by the drain or a dead engine: the next start serves it.
            await self.queue.release(item.request_id)
            log.info("queue: request %s stays pending for the next start", item.request_id)
            return
        await self.queue.complete(item.request_id, data, status)
        self._finished.set()
        self._finished = asyncio.Event()

    async def _sweep(self) -> None:
        interval = min(self._result_ttl, MAX_SWEEP_INTERVAL_S)
        while True:
            expired = await self.queue.expire(time.time() - self._result_ttl)
            if expired:
                log.info("queue: %d results past their %g s expired", expired, self._result_ttl)
            await self._update_gauge()
            await asyncio.sleep(interval)

    async def _update_gauge(self) -> None:
        counts = await self.queue.counts()
        gauge = self.state.metrics.queue_items
        gauge.labels("pending").set(counts.pending)
        gauge.labels("running").set(counts.running)
