"""A processor without an engine, for tests of the HTTP layer: step i says `w<i> `."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from processors.base import (
    GenerationRequest,
    ProcessorInfo,
    ProcessorInputError,
    ProcessorStats,
    Step,
)


class FakeProcessor:
    def __init__(self, tokenizer, max_model_len: int = 64) -> None:
        self.info = ProcessorInfo(
            "fake", "fake-model", "/nowhere", max_model_len, "float32", tokenizer
        )
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.fail_with: Exception | None = None

    async def start(self) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Step]:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        total = request.sampling.max_tokens
        for i in range(total):
            await asyncio.sleep(0)
            done = "length" if i == total - 1 else None
            yield Step(f"w{i} ", len(request.prompt_token_ids), i + 1, done)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        pass

    def stats(self) -> ProcessorStats:
        return ProcessorStats(0, 0, 0.0)

    async def shutdown(self) -> None:
        pass


__all__ = ["FakeProcessor", "ProcessorInputError"]
