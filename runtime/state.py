"""What the routes share: the processor, where serving stands, and the prompt builder."""

from __future__ import annotations

import enum
import logging

from processors.base import Processor, ProcessorInfo
from runtime.config import RuntimeConfig
from runtime.errors import ApiError, ErrorKind
from runtime.generation import Generator
from runtime.prompting import PromptBuilder

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    LOADING = "loading model"
    READY = "ready"
    STOPPING = "stopping"
    FAILED = "failed"


class ServingState:
    def __init__(self, config: RuntimeConfig, processor: Processor) -> None:
        self.config = config
        self.processor = processor
        self.generator = Generator(processor)
        self.phase = Phase.LOADING
        self._prompts: PromptBuilder | None = None

    async def start(self) -> None:
        """Load the model; serving begins when this returns."""
        await self.processor.start()
        info = self.processor.info
        if info.tokenizer is not None:
            self._prompts = PromptBuilder(info.tokenizer, info.max_model_len)
        self.phase = Phase.READY
        log.info(
            "ready: model %s (%s, context %d tokens) on the %s processor",
            info.model_name,
            info.dtype,
            info.max_model_len,
            info.name,
        )

    @property
    def is_ready(self) -> bool:
        return self.phase is Phase.READY

    def require_ready(self) -> None:
        if not self.is_ready:
            raise ApiError(ErrorKind.UNAVAILABLE, f"the service is not ready: {self.phase.value}")

    @property
    def info(self) -> ProcessorInfo:
        self.require_ready()
        return self.processor.info

    @property
    def prompts(self) -> PromptBuilder:
        self.require_ready()
        if self._prompts is None:
            raise ApiError(
                ErrorKind.BAD_REQUEST, "this processor has no tokenizer; send raw bodies"
            )
        return self._prompts
