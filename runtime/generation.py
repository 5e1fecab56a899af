"""Runs requests on the processor for every API: ids, fan-out over choices, deadlines, aborts.

Every way a request can be cut short (its deadline, the drain period ending, the engine dying)
is the same mechanism: abort it in the engine with a reason. The engine then ends the request's
steps with finish_reason "abort", and the reason is raised to the API, which answers it as an
error (a final error chunk when streaming has started).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from dataclasses import replace

from processors.base import (
    Adapter,
    GenerationRequest,
    LlmProcessor,
    SamplingParams,
    Step,
    TokenLogprob,
)
from runtime.call_log import current_call
from runtime.errors import ApiError, ErrorKind, from_exception
from runtime.metrics import Metrics
from runtime.tracing import Tracing

log = logging.getLogger(__name__)

# Running requests from which `--stream-interval auto` lets two tokens share a step. Below it
# every token goes out alone; from it, at 64 streams on the demo model (2 CPU cores), two per
# step gave about a fifth more tokens per second: a step costs the server a chunk, a write and a
# wake-up whatever it carries. Two tokens of a busy server still arrive within a 60 Hz frame.
BUSY_RUNNING = 32


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class Choice:
    """One choice's text and counts, accumulated from its steps."""

    __slots__ = (
        "_parts",
        "finish_reason",
        "logprobs",
        "num_output_tokens",
        "num_prompt_tokens",
        "token_ids",
    )

    def __init__(self) -> None:
        self._parts: list[str] = []  # joined once at the end, not copied at every step
        self.token_ids: list[int] = []
        self.finish_reason: str | None = None
        self.num_prompt_tokens = 0
        self.num_output_tokens = 0
        self.logprobs: list[TokenLogprob] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, step: Step) -> None:
        if step.text:
            self._parts.append(step.text)
        self.token_ids += step.token_ids
        self.num_prompt_tokens = step.num_prompt_tokens
        self.num_output_tokens = step.num_output_tokens
        self.finish_reason = step.finish_reason or self.finish_reason
        if step.logprobs:
            self.logprobs.extend(step.logprobs)


def usage(choices: Sequence[Choice], num_prompt_tokens: int) -> dict[str, int]:
    completion = sum(choice.num_output_tokens for choice in choices)
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": num_prompt_tokens + completion,
    }


class GenerationRunner:
    """The APIs' one way into the processor; knows every request running in it."""

    def __init__(
        self,
        processor: LlmProcessor,
        metrics: Metrics,
        request_timeout: float | None = None,
        stream_interval: str = "1",
        tracing: Tracing | None = None,
    ) -> None:
        self.processor = processor
        self.tracing = tracing or Tracing()
        self.request_timeout = request_timeout
        self.metrics = metrics
        self._fixed_interval = None if stream_interval == "auto" else int(stream_interval)
        self._abort_reasons: dict[str, ApiError | None] = {}  # running request -> why aborted
        self._pending_aborts: set[asyncio.Task] = set()

    @property
    def num_running(self) -> int:
        return len(self._abort_reasons)

    def _stream_interval(self) -> int:
        if self._fixed_interval is not None:
            return self._fixed_interval
        return 1 if self.num_running < BUSY_RUNNING else 2

    async def stream(
        self,
        request_id: str,
        prompt_token_ids: Sequence[int],
        sampling: SamplingParams,
        adapter: Adapter | None = None,
    ) -> AsyncGenerator[Step, None]:
        span = self.tracing.generation(request_id, len(prompt_token_ids), sampling)
        request = GenerationRequest(
            request_id,
            prompt_token_ids,
            sampling,
            stream_interval=self._stream_interval(),
            adapter=adapter,
            trace_headers=span.headers if span is not None else None,
        )
        call = current_call()  # the call record this request's steps go to, if any
        call.note_request(request_id)
        self._abort_reasons[request_id] = None
        deadline = None
        if self.request_timeout is not None:
            timeout = ApiError(
                ErrorKind.TIMEOUT,
                f"the request took longer than the request timeout of {self.request_timeout:g} s",
            )
            loop = asyncio.get_running_loop()
            deadline = loop.call_later(self.request_timeout, self.abort, request_id, timeout)
        timer = self.metrics.request()
        num_output_tokens, finished = 0, False
        awaiting_first = span is not None
        try:
            # Closed explicitly, so a client that leaves aborts the request at once.
            async with aclosing(self.processor.generate(request)) as steps:
                async for step in steps:
                    if step.finish_reason == "abort":
                        reason = self._abort_reasons.get(request_id)
                        if reason is not None:
                            if reason.kind is ErrorKind.TIMEOUT:
                                self.metrics.timeouts.inc()
                            raise reason
                    if awaiting_first and span is not None:
                        awaiting_first = False
                        span.first_token()
                    timer.step(step.num_output_tokens - num_output_tokens, step.num_prompt_tokens)
                    num_output_tokens = step.num_output_tokens
                    if step.finish_reason is not None:
                        finished = True
                        timer.finish(step.num_prompt_tokens, num_output_tokens, step.finish_reason)
                        if span is not None:
                            span.finish(step.finish_reason, num_output_tokens)
                    call.note_step(request_id, step)
                    yield step
        except Exception as exc:
            finished = True
            error = from_exception(exc)
            call.note_error(error)
            if span is not None:
                span.fail(error.status, error.message)
            if error is exc:
                raise
            raise error from exc
        finally:
            if not finished:  # closed before its end: the client left
                self.metrics.disconnects.inc()
                call.note_error(ApiError(ErrorKind.CLIENT_CLOSED, "the client left"))
                if span is not None:
                    span.abandon()
            if deadline is not None:
                deadline.cancel()
            self._abort_reasons.pop(request_id, None)

    def abort(self, request_id: str, reason: ApiError) -> None:
        """Abort a running request in the engine; its stream then raises `reason`."""
        if request_id not in self._abort_reasons or self._abort_reasons[request_id] is not None:
            return
        self._abort_reasons[request_id] = reason
        task = asyncio.get_running_loop().create_task(self._abort_in_engine(request_id))
        self._pending_aborts.add(task)  # keep a reference until it has run
        task.add_done_callback(self._pending_aborts.discard)

    async def _abort_in_engine(self, request_id: str) -> None:
        try:
            await self.processor.abort(request_id)
        except Exception as exc:  # a dead engine cannot abort; its requests end anyway
            log.debug("abort of %s failed: %s", request_id, exc)

    def abort_all(self, reason: ApiError) -> int:
        running = list(self._abort_reasons)
        for request_id in running:
            self.abort(request_id, reason)
        return len(running)

    def stream_choices(
        self,
        request_id: str,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingParams,
        n: int,
        adapter: Adapter | None = None,
    ) -> AsyncGenerator[tuple[int, Step], None]:
        """Steps of `n` choices per prompt, tagged with their choice index, as they come."""
        current_call().note_request(request_id)  # before the choices' suffixed ids
        streams = []
        for prompt_index, prompt in enumerate(prompts):
            for sample in range(n):
                # Each choice gets its own seed, or n seeded choices would all be identical.
                seeded = sampling
                if sampling.seed is not None and n > 1:
                    seeded = replace(sampling, seed=sampling.seed + sample)
                index = prompt_index * n + sample
                suffix = f"-{index}" if len(prompts) * n > 1 else ""
                streams.append(self.stream(request_id + suffix, prompt, seeded, adapter))
        return merge_indexed(streams)

    async def complete(
        self,
        request_id: str,
        prompts: Sequence[Sequence[int]],
        sampling: SamplingParams,
        n: int,
        adapter: Adapter | None = None,
    ) -> list[Choice]:
        choices = [Choice() for _ in range(len(prompts) * n)]
        async for index, step in self.stream_choices(request_id, prompts, sampling, n, adapter):
            choices[index].add(step)
        return choices


async def merge_indexed(
    streams: list[AsyncGenerator[Step, None]],
) -> AsyncGenerator[tuple[int, Step], None]:
    """Interleave several step streams; closing the merge closes (and so aborts) them all."""
    if len(streams) == 1:
        async for step in streams[0]:
            yield 0, step
        return
    queue: asyncio.Queue[tuple[int, Step | BaseException | None]] = asyncio.Queue()

    async def pump(index: int, stream: AsyncGenerator[Step, None]) -> None:
        try:
            async for step in stream:
                await queue.put((index, step))
            await queue.put((index, None))
        except Exception as exc:
            await queue.put((index, exc))

    tasks = [asyncio.create_task(pump(i, stream)) for i, stream in enumerate(streams)]
    try:
        remaining = len(tasks)
        while remaining:
            index, item = await queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield index, item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
