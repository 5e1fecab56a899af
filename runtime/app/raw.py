"""The app of a raw processor (a user's code on the platform's processor API): body in, bytes
out, on the platform routes, with everything every app shares."""

from __future__ import annotations

import functools
import logging

from fastapi import FastAPI

from processors.base import RawProcessor
from runtime.api.answers import Answer
from runtime.api.queue import enqueue_router, queue_router
from runtime.api.raw import RawService, answer_raw, llm_routes_explained, raw_router
from runtime.app.common import ServingParts, build_app
from runtime.errors import ApiError

log = logging.getLogger(__name__)


class RawApp:
    def __init__(self, parts: ServingParts, processor: RawProcessor) -> None:
        server = parts.config.server
        self.parts = parts
        self.processor = processor
        self.service = RawService(processor, parts.config.lifecycle.request_timeout)
        if server.webui:
            log.warning("--webui ignored: a custom processor serves raw bodies, not chat")
        if parts.queue is not None:
            gated = [enqueue_router(server, parts.queue)]
            queue = [queue_router(parts.config, parts.queue)]
        else:
            gated, queue = [raw_router(server)], []
        ungated = [*queue, llm_routes_explained(server)]
        self.asgi: FastAPI = build_app(parts, processor, gated, None, ungated)

    async def check(self) -> str:
        return ""  # a user's processor loads its model its own way

    async def load(self) -> RawService:
        await self.processor.start()
        info = self.processor.info
        log.info("loaded %s on the %s processor", info.model_name, info.name)
        return self.service

    def answers(self, service: RawService) -> dict[str, Answer]:
        answer = functools.partial(answer_raw, service)
        return dict.fromkeys(self.parts.config.server.platform_paths, answer)

    def abort_all(self, reason: ApiError) -> int:
        return self.service.abort_all(reason)
