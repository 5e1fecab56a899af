"""What the LLM routes need once the model is loaded, built once by the lifecycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends

from processors.base import LlmInfo, LlmProcessor, ProcessorInputError, SamplingParams
from runtime.admission import admitted_service
from runtime.errors import bad_request
from runtime.generation import GenerationRunner
from runtime.prompting import PromptBuilder


@dataclass(frozen=True)
class RequestLimits:
    """How much one request may ask for (400 beyond, naming the setting)."""

    max_prompts: int  # --max-prompts-per-request
    max_choices: int  # --max-choices-per-request: prompts x n

    def check(self, num_prompts: int, n: int) -> None:
        if num_prompts > self.max_prompts:
            raise bad_request(
                f"prompt: {num_prompts} prompts in one request; this server takes at most "
                f"{self.max_prompts} (max_prompts_per_request)",
                param="prompt",
            )
        if num_prompts * n > self.max_choices:
            raise bad_request(
                f"n: {num_prompts} prompts x n {n} = {num_prompts * n} completions in one "
                f"request; this server makes at most {self.max_choices} "
                "(max_choices_per_request)",
                param="n",
            )


@dataclass(frozen=True)
class LlmService:
    info: LlmInfo
    prompts: PromptBuilder  # chat templates and token budgets of this model
    runner: GenerationRunner  # the one way into the processor
    limits: RequestLimits
    processor: LlmProcessor  # for its checks of what a request asks
    # The model's sampling defaults for the OpenAI routes (runtime/sampling_defaults.py).
    sampling_defaults: Mapping[str, Any] = field(default_factory=dict)
    # Seconds an SSE stream waits for its first token before comments keep it alive (0: never).
    sse_keep_alive: float = 0.0

    @classmethod
    def loaded(
        cls,
        processor: LlmProcessor,
        runner: GenerationRunner,
        limits: RequestLimits,
        sampling_defaults: Mapping[str, Any],
        sse_keep_alive: float = 0.0,
    ) -> LlmService:
        info = processor.info
        prompts = PromptBuilder(info.tokenizer, info.max_model_len)
        return cls(info, prompts, runner, limits, processor, sampling_defaults, sse_keep_alive)

    def keep_alive(self, request: object | None) -> float:
        """The keep-alive interval of a stream to a client; none for an answer the queue or
        the warm-up reads whole."""
        return self.sse_keep_alive if request is not None else 0.0

    def check_sampling(self, sampling: SamplingParams) -> SamplingParams:
        """`sampling` as the processor accepts it, or ApiError 400 saying why not."""
        try:
            self.processor.check_sampling(sampling)
        except ProcessorInputError as exc:
            raise bad_request(str(exc)) from exc
        return sampling


# A route parameter of this type receives the service from the admission gate.
AdmittedLlm = Annotated[LlmService, Depends(admitted_service)]
