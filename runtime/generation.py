"""Runs requests on the processor for every API: ids, fan-out over choices, error translation."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from dataclasses import dataclass, field, replace

from processors.base import GenerationRequest, Processor, SamplingParams, Step, TokenLogprob
from runtime.errors import from_exception


def new_request_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Choice:
    """One choice's text and counts, accumulated from its steps."""

    text: str = ""
    finish_reason: str | None = None
    num_prompt_tokens: int = 0
    num_output_tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def add(self, step: Step) -> None:
        self.text += step.text
        self.num_prompt_tokens = step.num_prompt_tokens
        self.num_output_tokens = step.num_output_tokens
        self.finish_reason = step.finish_reason or self.finish_reason
        self.logprobs.extend(step.logprobs)


def usage(choices: Sequence[Choice], num_prompt_tokens: int) -> dict[str, int]:
    completion = sum(choice.num_output_tokens for choice in choices)
    return {
        "prompt_tokens": num_prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": num_prompt_tokens + completion,
    }


class Generator:
    """The APIs' one way into the processor."""

    def __init__(self, processor: Processor) -> None:
        self.processor = processor

    async def stream(
        self, request_id: str, prompt_token_ids: Sequence[int], sampling: SamplingParams
    ) -> AsyncGenerator[Step, None]:
        request = GenerationRequest(request_id, prompt_token_ids, sampling)
        try:
            async for step in self.processor.generate(request):
                yield step
        except Exception as exc:
            raise from_exception(exc) from exc

    def stream_choices(
        self, request_id: str, prompts: Sequence[Sequence[int]], sampling: SamplingParams, n: int
    ) -> AsyncGenerator[tuple[int, Step], None]:
        """Steps of `n` choices per prompt, tagged with their choice index, as they come."""
        streams = []
        for prompt_index, prompt in enumerate(prompts):
            for sample in range(n):
                # Each choice gets its own seed, or n seeded choices would all be identical.
                seeded = sampling
                if sampling.seed is not None and n > 1:
                    seeded = replace(sampling, seed=sampling.seed + sample)
                index = prompt_index * n + sample
                suffix = f"-{index}" if len(prompts) * n > 1 else ""
                streams.append(self.stream(request_id + suffix, prompt, seeded))
        return merge_indexed(streams)

    async def complete(
        self, request_id: str, prompts: Sequence[Sequence[int]], sampling: SamplingParams, n: int
    ) -> list[Choice]:
        choices = [Choice() for _ in range(len(prompts) * n)]
        async for index, step in self.stream_choices(request_id, prompts, sampling, n):
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

    async def pump(index: int, stream: AsyncIterator[Step]) -> None:
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
