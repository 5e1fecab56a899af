"""A processor without an engine, for tests of the HTTP layer: step i says `w<i> `, or, when
`reply` is set, the reply in chunks of `chunk` characters, then stops as at an end of turn.

Like vLLM, an aborted request ends with a step whose finish_reason is "abort".
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

from processors.base import (
    GenerationRequest,
    LlmInfo,
    ProcessorInputError,
    ProcessorStats,
    SamplingParams,
    Step,
)


class FakeProcessor:
    def __init__(self, tokenizer, max_model_len: int = 64, step_delay: float = 0.0) -> None:
        self.info = LlmInfo(
            name="fake",
            model_name="fake-model",
            model_path="/nowhere",
            max_concurrency=4,
            max_model_len=max_model_len,
            dtype="float32",
            tokenizer=tokenizer,
        )
        self.step_delay = step_delay
        self.requests: list[GenerationRequest] = []
        self.aborted: list[str] = []
        self.running: set[str] = set()
        self.fail_with: Exception | None = None
        self.reply: str | None = None
        self.chunk = 3
        self.adapters: list = []  # LoRA adapters loaded (set info.max_adapter_rank to serve them)

    async def start(self) -> None:
        pass

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        self.requests.append(request)
        if self.fail_with is not None:
            raise self.fail_with
        problem = _problem(request.sampling)
        if problem is not None:  # as vLLM's engine: a plain error, for values nobody checked
            raise ValueError(problem)
        self.running.add(request.request_id)
        prompt_len = len(request.prompt_token_ids)
        total = request.sampling.max_tokens
        finished = False
        if self.reply is not None:
            async for step in self._replying(request):
                yield step
            self.running.discard(request.request_id)
            return
        try:
            for i in range(total):
                await asyncio.sleep(self.step_delay)
                if request.request_id in self.aborted:
                    finished = True
                    yield Step("", prompt_len, i, "abort")
                    return
                finished = i == total - 1
                yield Step(f"w{i} ", prompt_len, i + 1, "length" if finished else None)
        finally:
            self.running.discard(request.request_id)
            if not finished:  # closed early, as when a client leaves: the contract aborts
                self.aborted.append(request.request_id)

    async def _replying(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        reply, size = self.reply or "", self.chunk
        parts = [reply[i : i + size] for i in range(0, len(reply), size)] or [""]
        count = 0
        for n, part in enumerate(parts):
            ids = tuple(self.info.tokenizer.encode(part, add_special_tokens=False))
            count += len(ids)
            last = n == len(parts) - 1
            prompt_len = len(request.prompt_token_ids)
            yield Step(part, prompt_len, count, "stop" if last else None, token_ids=ids)

    def check_sampling(self, sampling: SamplingParams) -> None:
        problem = _problem(sampling)
        if problem is not None:
            raise ProcessorInputError(problem)

    async def load_adapter(self, adapter) -> None:
        self.adapters.append(adapter)

    async def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    async def check_health(self) -> None:
        pass

    def stats(self) -> ProcessorStats:
        return ProcessorStats(len(self.running), 0, 0.0)

    async def shutdown(self) -> None:
        pass


def _problem(sampling: SamplingParams) -> str | None:
    """What vLLM refuses that the runtime's request schemas let through."""
    if sampling.temperature > 2:
        return f"temperature must be in [0, 2], got {sampling.temperature}"
    if sampling.seed is not None and not -(2**63) <= sampling.seed < 2**63:
        return "seed out of range"
    if "" in sampling.stop:
        return "stop cannot contain an empty string"
    return None
