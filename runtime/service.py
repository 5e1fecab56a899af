"""What the LLM routes need once the model is loaded, built once by the lifecycle."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends

from processors.base import LlmInfo
from runtime.admission import admitted_service
from runtime.generation import GenerationRunner
from runtime.prompting import PromptBuilder


@dataclass(frozen=True)
class LlmService:
    info: LlmInfo
    prompts: PromptBuilder  # chat templates and token budgets of this model
    runner: GenerationRunner  # the one way into the processor

    @classmethod
    def loaded(cls, info: LlmInfo, runner: GenerationRunner) -> LlmService:
        return cls(info, PromptBuilder(info.tokenizer, info.max_model_len), runner)


# A route parameter of this type receives the service from the admission gate.
AdmittedLlm = Annotated[LlmService, Depends(admitted_service)]
