"""What the LLM routes need once the model is loaded, built once by the lifecycle."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends

from processors.base import Adapter, LlmInfo, LlmProcessor, ProcessorInputError, SamplingParams
from runtime.adapters import AdapterRegistry
from runtime.admission import admitted_service
from runtime.api.chat_output import OutputParsing
from runtime.config import ServerConfig
from runtime.errors import ApiError, ErrorKind, bad_request
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
    parsing: OutputParsing = field(default_factory=OutputParsing)  # tool calls, reasoning
    adapters: AdapterRegistry | None = None  # LoRA adapters by name
    # Seconds an SSE stream waits for its first token before comments keep it alive (0: never).
    sse_keep_alive: float = 0.0

    @classmethod
    def loaded(
        cls,
        processor: LlmProcessor,
        runner: GenerationRunner,
        limits: RequestLimits,
        sampling_defaults: Mapping[str, Any],
        server: ServerConfig,
        adapters: AdapterRegistry,
        sse_keep_alive: float = 0.0,
    ) -> LlmService:
        info = processor.info
        prompts = PromptBuilder(
            info.tokenizer, info.max_model_len, read_chat_template(server.chat_template)
        )
        parsing = OutputParsing.load(
            server.tool_call_parser,
            server.reasoning_parser,
            server.enable_auto_tool_choice,
            server.tool_parser_plugin,
            info.tokenizer,
        )
        return cls(
            info,
            prompts,
            runner,
            limits,
            processor,
            sampling_defaults,
            parsing,
            adapters,
            sse_keep_alive,
        )

    def model(self, named: str | None) -> tuple[str, Adapter | None]:
        """The served name a request's `model` asks for (404 for none served), and its
        LoRA adapter (None: the base model)."""
        if self.adapters is not None:
            return self.adapters.resolve(named)
        if named is not None and named != self.info.model_name:
            raise ApiError(
                ErrorKind.NOT_FOUND,
                f"The model `{named}` does not exist; this server serves `{self.info.model_name}`",
                param="model",
            )
        return self.info.model_name, None

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


def read_chat_template(given: str | None) -> str | None:
    """--chat-template: a file's contents, or the template itself (vLLM takes both)."""
    if given is None or "{" in given:
        return given
    path = Path(given)
    if not path.is_file():
        raise ValueError(f"--chat-template {given}: no such file (nor a template: no '{{')")
    return path.read_text()


# A route parameter of this type receives the service from the admission gate.
AdmittedLlm = Annotated[LlmService, Depends(admitted_service)]
