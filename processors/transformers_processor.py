"""Our own engine over transformers and torch (CUDA or CPU): the Processor contract around it.

The engine runs in its own thread (processors/transformers_engine/); this adapter turns its per-step
output batches into one asyncio queue per request on the server's event loop.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING

from models.tokenizer import load_tokenizer
from processors.base import (
    Adapter,
    EngineDeadError,
    GenerationRequest,
    LlmInfo,
    ProcessorError,
    ProcessorInputError,
    ProcessorStats,
    SamplingParams,
    Step,
)
from processors.settings import EngineSettings

if TYPE_CHECKING:
    from processors.transformers_engine.engine import TransformersEngine
    from processors.transformers_engine.grammar import GrammarCompiler


SEED_RANGE = (-(2**63), 2**64 - 1)  # what torch.Generator.manual_seed takes


def sampling_problem(sampling: SamplingParams, vocab_size: int) -> str | None:
    """What our engine's sampler cannot do with these values, or None."""
    finite = {
        "temperature": sampling.temperature,
        "presence_penalty": sampling.presence_penalty,
        "frequency_penalty": sampling.frequency_penalty,
        "repetition_penalty": sampling.repetition_penalty,
    }
    for name, value in finite.items():
        if not math.isfinite(value):
            return f"{name} must be a finite number, got {value}"
    if sampling.temperature < 0:
        return f"temperature must be 0 or more, got {sampling.temperature}"
    if not 0 < sampling.top_p <= 1:
        return f"top_p must be in (0, 1], got {sampling.top_p}"
    if sampling.top_k < 0:
        return f"top_k must be 0 (no limit) or more, got {sampling.top_k}"
    if not 0 <= sampling.min_p <= 1:
        return f"min_p must be in [0, 1], got {sampling.min_p}"
    if sampling.repetition_penalty <= 0:
        return f"repetition_penalty must be positive, got {sampling.repetition_penalty}"
    if sampling.seed is not None and not SEED_RANGE[0] <= sampling.seed <= SEED_RANGE[1]:
        return f"seed must be between {SEED_RANGE[0]} and {SEED_RANGE[1]}, got {sampling.seed}"
    if any(not stop for stop in sampling.stop):
        return "stop strings must not be empty"
    if sampling.logprobs is not None and not 0 <= sampling.logprobs <= vocab_size:
        return f"logprobs must be between 0 and the vocabulary size {vocab_size}"
    return None


def supported_architectures() -> set[str]:
    from processors.transformers_engine.loader import SUPPORTED_ARCHITECTURES

    return set(SUPPORTED_ARCHITECTURES)


class TransformersProcessor:
    name = "transformers"

    def __init__(self, settings: EngineSettings) -> None:
        self._settings = settings
        self._engine: TransformersEngine | None = None
        self._info: LlmInfo | None = None
        self._streams: dict[str, asyncio.Queue] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._grammars: GrammarCompiler | None = None

    @property
    def info(self) -> LlmInfo:
        if self._info is None:
            raise RuntimeError("the transformers processor has not started")
        return self._info

    async def start(self) -> None:
        from processors.transformers_engine.grammar import GrammarCompiler
        from processors.transformers_engine.loader import EngineConfigError, load_engine

        if self._settings.lora_modules:
            raise ValueError(
                "the transformers processor does not serve LoRA adapters (--lora-modules): "
                "serve them with --processor vllm"
            )
        self._loop = asyncio.get_running_loop()
        tokenizer = await asyncio.to_thread(load_tokenizer, self._settings.model_path)
        try:
            loaded = await asyncio.to_thread(load_engine, self._settings, tokenizer)
        except EngineConfigError as exc:
            raise ValueError(str(exc)) from exc
        self._engine = loaded.engine
        self._grammars = GrammarCompiler(tokenizer, loaded.vocab_size)
        self._engine.start(self._on_outputs)
        settings = self._settings
        self._info = LlmInfo(
            name=self.name,
            model_name=settings.model_name,
            model_path=settings.model_path,
            max_model_len=loaded.max_model_len,
            dtype=str(loaded.dtype).removeprefix("torch."),
            max_concurrency=loaded.num_slots,
            tokenizer=tokenizer,
        )

    def _on_outputs(self, outputs: list) -> None:
        """Called on the engine thread, once per step."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._dispatch, outputs)

    def _dispatch(self, outputs: list) -> None:
        for request_id, output in outputs:
            stream = self._streams.get(request_id)
            if stream is not None:  # gone: its client left and the abort is on its way
                stream.put_nowait(output)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        engine = self._running_engine()
        self.check_sampling(request.sampling)
        self._check_input(request)
        grammar = None
        if request.sampling.structured is not None:  # compiling takes milliseconds: off the loop
            assert self._grammars is not None  # made at start, as the engine
            grammar = await asyncio.to_thread(self._grammars.compile, request.sampling.structured)
        stream: asyncio.Queue = asyncio.Queue()
        self._streams[request.request_id] = stream
        engine.submit(request, grammar)
        finished = False
        try:
            while not finished:
                output = await stream.get()
                if not isinstance(output, Step):
                    raise ProcessorError(output.message)
                finished = output.finish_reason is not None
                yield output
        finally:
            del self._streams[request.request_id]
            if not finished:  # closed early: a client left or the request timed out
                engine.abort(request.request_id)

    async def load_adapter(self, adapter: Adapter) -> None:
        raise ProcessorInputError("the transformers processor does not serve LoRA adapters")

    def check_sampling(self, sampling: SamplingParams) -> None:
        problem = sampling_problem(sampling, len(self.info.tokenizer))
        if problem is not None:
            raise ProcessorInputError(problem)

    def _check_input(self, request: GenerationRequest) -> None:
        vocab = len(self.info.tokenizer)
        bad = [t for t in request.prompt_token_ids if not 0 <= t < vocab]
        if bad:
            raise ProcessorInputError(f"token id {bad[0]} is out of vocabulary (size {vocab})")
        if not request.prompt_token_ids:
            raise ProcessorInputError("the prompt is empty")
        if len(request.prompt_token_ids) >= self.info.max_model_len:
            raise ProcessorInputError(
                f"the prompt has {len(request.prompt_token_ids)} tokens; the context window is "
                f"{self.info.max_model_len}, and at least one token must be generated"
            )

    def _running_engine(self) -> TransformersEngine:
        if self._engine is None or not self._engine.is_alive:
            raise EngineDeadError("the transformers engine is not running")
        return self._engine

    async def abort(self, request_id: str) -> None:
        if self._engine is not None:
            self._engine.abort(request_id)

    async def check_health(self) -> None:
        if self._engine is not None and not self._engine.is_alive:
            raise EngineDeadError(f"the transformers engine stopped: {self._engine.fatal_error}")

    def stats(self) -> ProcessorStats:
        if self._engine is None:
            return ProcessorStats(num_running=0, num_waiting=0, kv_cache_usage=0.0)
        return self._engine.stats()

    async def shutdown(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await asyncio.to_thread(engine.stop)
