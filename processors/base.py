"""The two contracts inference backends implement.

`LlmProcessor` takes token ids and streams steps: vLLM and our own transformers engine. Every LLM
API (ChatLLM, OpenAI, BladeLLM, WebSocket) is written once over it, and none of them knows which
engine serves it; a fake one for tests fits in ~40 lines. `RawProcessor` takes a request body and
answers bytes and a status: a user's processor on the platform's Python API. Both share the
lifecycle part, `Processor`: start, health, load, shutdown.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

FinishReason = Literal["stop", "length", "abort"]


@dataclass(frozen=True)
class StructuredOutput:
    """A constraint on what may be generated: one of a JSON schema, any JSON object, a regular
    expression, one of several strings, or a grammar (EBNF, as xgrammar and vLLM read it)."""

    json_schema: Any = None  # a dict (or its JSON text)
    json_object: bool = False
    regex: str | None = None
    choice: tuple[str, ...] | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        given = [
            self.json_schema is not None,
            self.json_object,
            self.regex is not None,
            self.choice is not None,
            self.grammar is not None,
        ]
        if sum(given) != 1:
            raise ValueError("a structured output names exactly one constraint")


@dataclass(frozen=True)
class SamplingParams:
    """Engine-neutral sampling settings; the API layer has already validated the ranges."""

    max_tokens: int
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k limit
    min_p: float = 0.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    ignore_eos: bool = False
    logprobs: int | None = None  # number of top alternatives per token; None = no logprobs
    structured: StructuredOutput | None = None
    skip_special_tokens: bool = True  # in the text (special tokens are always in token_ids)


@dataclass(frozen=True)
class Adapter:
    """A LoRA adapter a request runs with."""

    name: str  # what clients pass as `model`
    path: str  # a PEFT folder (adapter_config.json, adapter weights)
    id: int  # unique while the server runs, never reused


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    prompt_token_ids: Sequence[int]
    sampling: SamplingParams
    # The most new tokens a step may gather (the first and the last step go out at once):
    # fewer steps cost the server less per token. A hint; a processor may send every token.
    stream_interval: int = 1
    adapter: Adapter | None = None
    # W3C trace context (traceparent) of the runtime's span for this request, when traced: an
    # engine with spans of its own makes them children of it.
    trace_headers: Mapping[str, str] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    top: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class Step:
    """What one engine step added to one request: new text, never cumulative."""

    text: str
    num_prompt_tokens: int
    num_output_tokens: int  # cumulative, for usage
    finish_reason: FinishReason | None = None
    logprobs: tuple[TokenLogprob, ...] = ()
    token_ids: tuple[int, ...] = ()  # the output tokens this step added


@dataclass(frozen=True)
class ProcessorStats:
    num_running: int
    num_waiting: int
    kv_cache_usage: float  # 0..1


class Tokenizer(Protocol):
    """The part of a Hugging Face tokenizer the runtime uses."""

    chat_template: Any

    def __len__(self) -> int: ...  # vocabulary size, special tokens included

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]: ...

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str: ...

    def apply_chat_template(self, conversation: Any, **kwargs: Any) -> Any: ...

    def convert_ids_to_tokens(self, ids: Sequence[int]) -> list[str]: ...


@dataclass(frozen=True)
class ProcessorInfo:
    name: str  # which backend, e.g. "vllm"
    model_name: str  # the served model name clients pass back
    model_path: str
    max_concurrency: int  # requests the engine runs at once; more wait in its queue

    def describe(self) -> dict[str, Any]:
        """The model as /info shows it."""
        return {"name": self.model_name, "path": self.model_path}


@dataclass(frozen=True)
class LlmInfo(ProcessorInfo):
    max_model_len: int
    dtype: str
    tokenizer: Tokenizer = field(repr=False)
    max_adapter_rank: int | None = None  # LoRA adapters up to this rank; None: none served

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "max_context": self.max_model_len, "dtype": self.dtype}


class ProcessorError(Exception):
    """A request failed inside the engine (per request, the engine lives on)."""


class ProcessorInputError(ProcessorError):
    """The engine rejected the request's input (a user's mistake, answered 400)."""


class EngineDeadError(ProcessorError):
    """The engine is gone; nothing more can be served."""


class Processor(Protocol):
    """What every backend does: load, report health and load, shut down. `info` is valid
    once `start` has returned."""

    @property
    def info(self) -> ProcessorInfo: ...

    async def start(self) -> None: ...

    async def check_health(self) -> None:
        """Raises EngineDeadError when the engine cannot serve any more."""
        ...

    def stats(self) -> ProcessorStats: ...

    async def shutdown(self) -> None: ...


class LlmProcessor(Processor, Protocol):
    """A language model engine: token ids in, steps of new text out."""

    @property
    def info(self) -> LlmInfo: ...

    def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        """Steps for one request, ending with one whose finish_reason is set.

        `abort(request_id)` ends the steps with finish_reason "abort"; closing the iterator
        before its last step aborts the request too (its KV cache is freed at once).
        """
        ...

    async def abort(self, request_id: str) -> None: ...

    def check_sampling(self, sampling: SamplingParams) -> None:
        """Raises ProcessorInputError, saying why, for sampling values this engine does not
        accept, so they are refused before any engine request starts."""
        ...

    async def load_adapter(self, adapter: Adapter) -> None:
        """Load a LoRA adapter (ProcessorInputError when it does not fit this model or engine);
        requests then name it. Only called when `info.max_adapter_rank` is set."""
        ...


class RawProcessor(Processor, Protocol):
    """A processor that answers raw request bodies (the platform's custom processors)."""

    async def process(self, body: bytes) -> tuple[bytes, int]:
        """The answer's bytes and HTTP status."""
        ...
