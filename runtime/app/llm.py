"""The app of an LLM processor: ChatLLM (HTTP and WebSocket), OpenAI, BladeLLM, the web page."""

from __future__ import annotations

import asyncio
import functools
import logging

from fastapi import FastAPI

from models.demo import ensure_demo_model
from processors.base import LlmProcessor
from processors.settings import EngineSettings
from runtime.api.answers import Answer, openai_answer
from runtime.api.chatllm import answer_chatllm, chatllm_router
from runtime.api.chatllm_ws import chatllm_websocket_router
from runtime.api.openai_chat import answer_chat, openai_chat_router
from runtime.api.openai_completions import answer_completion, completions_router
from runtime.api.queue import enqueue_router, queue_router
from runtime.api.schema import ChatCompletionRequest, CompletionRequest
from runtime.api.webui import webui_router
from runtime.app.common import ServingParts, build_app
from runtime.errors import ApiError
from runtime.generation import GenerationRunner
from runtime.model_source import check_model
from runtime.service import LlmService, RequestLimits

log = logging.getLogger(__name__)


class LlmApp:
    def __init__(
        self, parts: ServingParts, processor: LlmProcessor, settings: EngineSettings
    ) -> None:
        config = parts.config
        self.parts = parts
        self.processor = processor
        self.settings = settings  # what the processor loads
        self.runner = GenerationRunner(
            processor,
            parts.metrics,
            config.lifecycle.request_timeout,
            stream_interval=config.server.stream_interval,
        )
        server = config.server
        if parts.queue is not None:  # the platform routes enqueue; workers answer
            platform = enqueue_router(server, parts.queue)
        else:
            platform = chatllm_router(server)
        gated = [openai_chat_router(), completions_router(), platform]
        if parts.queue is None:  # a WebSocket chat stays synchronous
            websocket = chatllm_websocket_router(
                server, parts.status, parts.admission, parts.call_log
            )
            gated.append(websocket)
        pages = webui_router() if server.webui else None
        queue = [queue_router(config, parts.queue)] if parts.queue is not None else []
        self.asgi: FastAPI = build_app(parts, processor, gated, pages, queue)

    async def check(self) -> str:
        """Check the model folder before loading (the demo model is built first if needed);
        what is loaded, for the progress lines."""
        config = self.parts.config
        if not config.engine.model_path:  # the built-in demo model, built on first use
            await asyncio.to_thread(ensure_demo_model)
        report = await asyncio.to_thread(check_model, config.processor, self.settings)
        log.info("model check passed:\n%s", report.describe())
        size = report.weight_bytes
        shown = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
        return (
            f" {report.path} ({len(report.weight_files)} {report.weight_format} file(s), {shown})"
        )

    async def load(self) -> LlmService:
        """Start the processor; the service routes get from then on."""
        await self.processor.start()
        info = self.processor.info
        self.parts.metrics.set_model_name(info.model_name)
        log.info(
            "loaded %s (%s, context %d tokens) on the %s processor",
            info.model_name,
            info.dtype,
            info.max_model_len,
            info.name,
        )
        lifecycle = self.parts.config.lifecycle
        limits = RequestLimits(lifecycle.max_prompts_per_request, lifecycle.max_choices_per_request)
        return LlmService.loaded(self.processor, self.runner, limits)

    def answers(self, service: LlmService) -> dict[str, Answer]:
        """Each POST route's answer to a body, as bytes and a status, for requests that come
        from the queue or the warm-up file rather than a client."""
        server = self.parts.config.server
        platform = functools.partial(
            answer_chatllm, service, stream_default=server.chatllm_stream_default
        )
        return {
            **dict.fromkeys(server.platform_paths, platform),
            "/v1/chat/completions": openai_answer(ChatCompletionRequest, answer_chat, service),
            "/v1/completions": openai_answer(CompletionRequest, answer_completion, service),
        }

    def abort_all(self, reason: ApiError) -> int:
        return self.runner.abort_all(reason)
