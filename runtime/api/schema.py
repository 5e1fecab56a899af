"""The ChatLLM request body, validated by pydantic so a bad field is a 400 naming it, and what
the request schemas share. (The OpenAI bodies: runtime/api/openai_schema.py.)

Unknown ChatLLM fields are ignored, not rejected: the platform's clients send extra keys.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

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
    model: str | None = None  # a LoRA adapter's name picks it, as on the OpenAI routes

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
