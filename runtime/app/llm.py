"""The app of an LLM processor: ChatLLM (HTTP and WebSocket), OpenAI, BladeLLM, the web page."""

from __future__ import annotations

import asyncio
import functools
import logging

from fastapi import FastAPI

from processors.base import LlmProcessor
from runtime.adapters import AdapterRegistry
from runtime.api.answers import Answer, openai_answer
from runtime.api.chatllm import answer_chatllm, chatllm_router
from runtime.api.chatllm_ws import chatllm_websocket_router
from runtime.api.lora import lora_router
from runtime.api.openai_chat import answer_chat, openai_chat_router
from runtime.api.openai_completions import answer_completion, completions_router
from runtime.api.openai_schema import ChatCompletionRequest, CompletionRequest
from runtime.api.queue import enqueue_router, queue_router
from runtime.api.tokenize import tokenize_router
from runtime.api.webui import webui_router
from runtime.app.common import ServingParts, build_app
from runtime.errors import ApiError
from runtime.generation import GenerationRunner
from runtime.model_source import ModelSource, check_model
from runtime.sampling_defaults import sampling_defaults
from runtime.service import LlmService, RequestLimits

log = logging.getLogger(__name__)


class LlmApp:
    def __init__(self, parts: ServingParts, processor: LlmProcessor, source: ModelSource) -> None:
        config = parts.config
        self.parts = parts
        self.processor = processor
        self.source = source  # what the processor loads, and where it comes from
        self.runner = GenerationRunner(
            processor,
            parts.metrics,
            config.lifecycle.request_timeout,
            stream_interval=config.server.stream_interval,
            tracing=parts.tracing,
        )
        server = config.server
        if parts.queue is not None:  # the platform routes enqueue; workers answer
            platform = enqueue_router(server, parts.queue)
        else:
            platform = chatllm_router(server)
        gated = [openai_chat_router(), completions_router(), tokenize_router(), platform]
        if server.allow_runtime_lora_updating:
            gated.append(lora_router())
        if parts.queue is None:  # a WebSocket chat stays synchronous
            websocket = chatllm_websocket_router(
                server, parts.status, parts.admission, parts.call_log
            )
            gated.append(websocket)
        pages = webui_router() if server.webui else None
        queue = [queue_router(config, parts.queue)] if parts.queue is not None else []
        self.asgi: FastAPI = build_app(parts, processor, gated, pages, queue)

    async def check(self) -> str:
        """Check the model folder before loading (built or converted first, if it comes from a
        built-in model or a GGUF file); what is loaded, for the progress lines."""
        source = self.source
        if source.prepare is not None:
            await asyncio.to_thread(source.prepare)
        report = await asyncio.to_thread(check_model, self.parts.config.processor, source.settings)
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
        engine_families = getattr(self.processor, "metric_families", None)
        if engine_families is not None:  # an engine with Prometheus metrics of its own
            self.parts.metrics.add_engine_families(engine_families)
        log.info(
            "loaded %s (%s, context %d tokens) on the %s processor",
            info.model_name,
            info.dtype,
            info.max_model_len,
            info.name,
        )
        lifecycle = self.parts.config.lifecycle
        limits = RequestLimits(lifecycle.max_prompts_per_request, lifecycle.max_choices_per_request)
        defaults = sampling_defaults(
            self.parts.config.server.generation_config, self.source.settings.model_path
        )
        server = self.parts.config.server
        adapters = AdapterRegistry(
            self.processor, info.model_name, server.allow_runtime_lora_updating
        )
        await adapters.load_configured(self.source.settings.lora_modules)
        keep_alive = self.parts.config.http.sse_keep_alive
        return LlmService.loaded(
            self.processor, self.runner, limits, defaults, server, adapters, keep_alive
        )

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
