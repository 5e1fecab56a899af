"""OpenAI `GET /v1/models` and `POST /v1/chat/completions`, streaming (SSE) and not."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing

from fastapi import APIRouter, Request
from starlette.responses import Response

from processors.base import TokenLogprob
from runtime.admission import weigh
from runtime.api.disconnect import unless_disconnected
from runtime.api.framing import (
    SSE_DONE,
    json_response,
    sse_event,
    sse_event_after,
    sse_head,
    sse_stream,
)
from runtime.api.schema import ChatCompletionRequest, OpenAISampling
from runtime.errors import ApiError, ErrorKind, from_exception
from runtime.generation import Choice, new_request_id, usage
from runtime.prompting import text_of
from runtime.service import AdmittedLlm, LlmService


def check_model(service: LlmService, body: OpenAISampling) -> str:
    served = service.info.model_name
    if body.model is not None and body.model != served:
        raise ApiError(
            ErrorKind.NOT_FOUND,
            f"The model `{body.model}` does not exist; this server serves `{served}`",
            param="model",
        )
    return served


def openai_chat_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models", summary="The served model")
    async def list_models(service: AdmittedLlm) -> Response:
        info = service.info
        model = {
            "id": info.model_name,
            "object": "model",
            "created": int(time.time()),
            "owned_by": "llm-runtime",
            "root": info.model_path,
            "max_model_len": info.max_model_len,
        }
        return json_response({"object": "list", "data": [model]})

    @router.post("/chat/completions", summary="OpenAI chat completions")
    async def chat_completions(
        body: ChatCompletionRequest,
        request: Request,
        service: AdmittedLlm,
    ) -> Response:
        return await answer_chat(service, body, request)

    return router


async def answer_chat(
    service: LlmService, body: ChatCompletionRequest, request: Request | None = None
) -> Response:
    """The chat completion, streamed or whole (stopped when `request`'s client leaves)."""
    model = check_model(service, body)
    messages = [
        {"role": m.role, "content": text_of(m.content, f"messages.{i}.content")}
        for i, m in enumerate(body.messages)
    ]
    prompt_ids = service.prompts.encode_chat(messages)
    requested = body.max_completion_tokens or body.max_tokens
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    defaults = service.sampling_defaults
    max_tokens = service.prompts.budget(
        len(prompt_ids), requested, field, defaults.get("max_tokens")
    )
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    sampling = service.check_sampling(body.sampling(max_tokens, logprobs, defaults))
    service.limits.check(1, body.n)
    weigh(request, body.n)
    request_id = new_request_id("chatcmpl")
    head = {"id": request_id, "created": int(time.time()), "model": model}
    runner = service.runner
    if body.stream:
        steps = runner.stream_choices(request_id, [prompt_ids], sampling, body.n)
        return await sse_stream(
            lambda primed: _stream(head, body, len(prompt_ids), primed),
            steps,
            service.keep_alive(request),
        )
    work = runner.complete(request_id, [prompt_ids], sampling, body.n)
    choices = await unless_disconnected(request, work)
    return json_response(
        {
            **head,
            "object": "chat.completion",
            "choices": [
                {
                    "index": index,
                    "message": {"role": "assistant", "content": choice.text},
                    "logprobs": _logprobs(choice.logprobs) if body.logprobs else None,
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": usage(choices, len(prompt_ids)),
        }
    )


def _logprobs(tokens: Sequence[TokenLogprob]) -> dict:
    def entry(token: str, logprob: float) -> dict:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {
        "content": [
            {**entry(t.token, t.logprob), "top_logprobs": [entry(*alt) for alt in t.top]}
            for t in tokens
        ]
    }


async def _stream(
    head: dict, body: ChatCompletionRequest, num_prompt: int, steps: AsyncGenerator
) -> AsyncIterator[bytes]:
    chunk = {**head, "object": "chat.completion.chunk"}
    event_head = sse_head(chunk)  # the same for every chunk: serialized once
    choices = [Choice() for _ in range(body.n)]
    async with aclosing(steps):
        try:
            for index in range(body.n):
                delta = {"role": "assistant", "content": ""}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                yield sse_event_after(event_head, {"choices": [choice]})
            async for index, step in steps:
                choices[index].add(step)
                if not step.text and not step.finish_reason:
                    continue
                choice = {
                    "index": index,
                    "delta": {"content": step.text} if step.text else {},
                    "logprobs": _logprobs(step.logprobs) if body.logprobs else None,
                    "finish_reason": step.finish_reason,
                }
                yield sse_event_after(event_head, {"choices": [choice]})
            if body.include_usage:
                yield sse_event({**chunk, "choices": [], "usage": usage(choices, num_prompt)})
        except Exception as exc:
            yield sse_event(from_exception(exc).body())
    yield SSE_DONE
