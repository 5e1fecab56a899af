"""Request bodies of every API, validated by pydantic so a bad field is a 400 naming it.

Unknown fields are ignored, not rejected: clients in the field send extra keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from processors.base import SamplingParams

MAX_LOGPROBS = 20
MAX_CHOICES = 16

Stop = str | list[str] | None


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


def stop_tuple(stop: Stop) -> tuple[str, ...]:
    """The stop strings; an empty one stops nothing, so it is left out."""
    if stop is None:
        return ()
    return tuple(s for s in ([stop] if isinstance(stop, str) else stop) if s)


class OpenAISampling(_Body):
    """Sampling fields the OpenAI chat and completions APIs share (vLLM's extras included)."""

    model: str | None = None
    temperature: Annotated[float, Field(ge=0, le=100)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1)] | None = None
    min_p: Annotated[float, Field(ge=0, le=1)] | None = None
    seed: int | None = None
    stop: Stop = None
    n: Annotated[int, Field(ge=1, le=MAX_CHOICES)] = 1
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    ignore_eos: bool = False
    max_tokens: Annotated[int, Field(ge=1)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None

    def sampling(
        self, max_tokens: int, logprobs: int | None, defaults: Mapping[str, Any] | None = None
    ) -> SamplingParams:
        """The request's sampling; a field it leaves out takes `defaults` (the model's, from
        its generation config, as `vllm serve` applies them), else the neutral value."""
        defaults = defaults or {}

        def value(name: str, neutral: Any) -> Any:
            given = getattr(self, name)
            return given if given is not None else defaults.get(name, neutral)

        return SamplingParams(
            max_tokens=max_tokens,
            temperature=value("temperature", 1.0),
            top_p=value("top_p", 1.0),
            top_k=max(value("top_k", 0), 0),
            min_p=value("min_p", 0.0),
            seed=self.seed,
            stop=stop_tuple(self.stop),
            presence_penalty=value("presence_penalty", 0.0),
            frequency_penalty=value("frequency_penalty", 0.0),
            repetition_penalty=value("repetition_penalty", 1.0),
            ignore_eos=self.ignore_eos,
            logprobs=logprobs,
        )

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class StreamOptions(_Body):
    include_usage: bool = False


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None


class ChatCompletionRequest(OpenAISampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None


class CompletionRequest(OpenAISampling):
    prompt: str | list[str] | list[int] | list[list[int]]
    logprobs: Annotated[int, Field(ge=0, le=MAX_LOGPROBS)] | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _not_empty(cls, prompt: Any) -> Any:
        if isinstance(prompt, list) and not prompt:
            raise ValueError("prompt must not be an empty list")
        return prompt


class ChatLLMRequest(_Body):
    """The platform's ChatLLM body (PROTOCOLS §2); defaults are the platform's."""

    prompt: str = ""
    input_ids: str | None = None  # older clients send the prompt under this name
    system_prompt: str = ""
    history: list[Annotated[list[str], Field(min_length=2, max_length=2)]] = []
    max_new_tokens: Annotated[int, Field(ge=1)] | None = None
    use_stream_chat: bool | None = None
    temperature: Annotated[float, Field(ge=0, le=100)] = 0.95
    top_k: Annotated[int, Field(ge=-1)] = 30
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.8
    do_sample: bool = True
    use_cache: bool = True  # accepted; the KV cache is always on
    stop: Stop = None
    stop_sequences: Stop = None
    seed: int | None = None
    langchain: bool = False  # retrieval plug-in; without a knowledge base, answer directly

    @property
    def text(self) -> str:
        return self.prompt or self.input_ids or ""

    def sampling(self, max_tokens: int) -> SamplingParams:
        greedy = not self.do_sample or self.temperature == 0
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if greedy else self.temperature,
            top_p=1.0 if greedy else self.top_p,
            top_k=0 if greedy else max(self.top_k, 0),
            seed=self.seed,
            stop=stop_tuple(self.stop if self.stop is not None else self.stop_sequences),
        )


OpenAISampling.model_rebuild()
