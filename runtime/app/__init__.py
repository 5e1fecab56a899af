"""The ASGI app over a processor: one builder per processor contract, over a shared base."""

from __future__ import annotations

from typing import Any, Protocol

from fastapi import FastAPI

from processors.base import Processor
from runtime.api.answers import Answer
from runtime.app.common import ServingParts, build_app
from runtime.app.llm import LlmApp
from runtime.app.raw import RawApp
from runtime.errors import ApiError

__all__ = ["LlmApp", "RawApp", "ServedApp", "ServingParts", "build_app"]


class ServedApp(Protocol):
    """An app and what the lifecycle asks of it, whichever processor contract it serves."""

    asgi: FastAPI

    @property
    def processor(self) -> Processor: ...

    async def check(self) -> str:
        """Checks before loading; what is loaded, for the progress lines."""
        ...

    async def load(self) -> Any:
        """Start the processor; the service its routes receive from then on."""
        ...

    def answers(self, service: Any) -> dict[str, Answer]:
        """Each POST route's answer to a body, for queued and warm-up requests."""
        ...

    def abort_all(self, reason: ApiError) -> int:
        """Cut every request in flight short with `reason`; how many there were."""
        ...
