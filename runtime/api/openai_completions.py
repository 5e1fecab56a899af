"""`POST /v1/completions`: OpenAI's completions with BladeLLM's chunk superset (PROTOCOLS §4).

Every stream chunk carries a cumulative `usage`, `error_info` (null unless generation failed)
and `finish_reason` "" until a choice ends. OpenAI clients ignore the extra fields, so one route
serves both kinds of client.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing

from fastapi import APIRouter, Request
from starlette.responses import Response

from processors.base import TokenLogprob
from runtime.admission import weigh
from runtime.api.disconnect import unless_disconnected
from runtime.api.fields import refuse_unhonoured
from runtime.api.framing import (
    SSE_DONE,
    json_response,
    sse_event,
    sse_event_after,
    sse_head,
    sse_stream,
)
from runtime.api.openai_schema import CompletionRequest
from runtime.errors import bad_request, from_exception
from runtime.generation import Choice, new_request_id, usage
from runtime.prompting import PromptBuilder
from runtime.service import AdmittedLlm, LlmService


def num_prompts(body: CompletionRequest) -> int:
    """Prompts in the request: one string or one list of token ids is one prompt."""
    value = body.prompt
    if isinstance(value, str) or all(isinstance(item, int) for item in value):
        return 1
    return len(value)


def prompt_token_ids(prompts: PromptBuilder, prompt: CompletionRequest) -> list[list[int]]:
    """Token ids of each prompt: a string, strings, token ids, or lists of token ids."""
    value = prompt.prompt
    if isinstance(value, str):
        return [prompts.encode_text(value)]
    if all(isinstance(item, int) for item in value):
        prompts.check_token_ids(value)  # type: ignore[arg-type]
        return [list(value)]  # type: ignore[arg-type]
    if all(isinstance(item, str) for item in value):
        return [prompts.encode_text(text, f"prompt.{i}") for i, text in enumerate(value)]  # type: ignore[arg-type]
    if all(isinstance(item, list) for item in value):
        for item in value:
            prompts.check_token_ids(item)  # type: ignore[arg-type]
        return [list(item) for item in value]  # type: ignore[arg-type]
    raise bad_request("prompt must be a string, a list of strings, or token ids", "prompt")


def completions_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.post("/completions", summary="OpenAI / BladeLLM completions")
    async def completions(
        body: CompletionRequest,
        request: Request,
        service: AdmittedLlm,
    ) -> Response:
        return await answer_completion(service, body, request)

    return router


async def answer_completion(
    service: LlmService, body: CompletionRequest, request: Request | None = None
) -> Response:
    """The completion, streamed or whole (stopped when `request`'s client leaves)."""
    refuse_unhonoured(body)
    model, adapter = service.model(body.model)
    service.limits.check(num_prompts(body), body.n)  # before any prompt is tokenized
    prompts = prompt_token_ids(service.prompts, body)
    longest = max(len(ids) for ids in prompts)
    if any(not ids for ids in prompts):
        raise bad_request("prompt must not be empty", "prompt")
    defaults = service.sampling_defaults
    max_tokens = service.prompts.budget(
        longest, body.max_tokens, "max_tokens", defaults.get("max_tokens")
    )
    sampling = service.check_sampling(body.sampling(max_tokens, body.logprobs, defaults))
    weigh(request, len(prompts) * body.n)
    request_id = new_request_id("cmpl")
    head = {
        "id": request_id,
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
    }
    echoes = [service.prompts.decode(ids) if body.echo else "" for ids in prompts]
    num_prompt = sum(len(ids) for ids in prompts)
    runner = service.runner
    if body.stream:
        steps = runner.stream_choices(request_id, prompts, sampling, body.n, adapter)
        return await sse_stream(
            lambda primed: _stream(head, body, echoes, num_prompt, primed),
            steps,
            service.keep_alive(request),
        )
    work = runner.complete(request_id, prompts, sampling, body.n, adapter)
    choices = await unless_disconnected(request, work)
    return json_response(
        {
            **head,
            "choices": [
                {
                    "index": index,
                    "text": echoes[index // body.n] + choice.text,
                    "logprobs": _logprobs(choice.logprobs) if body.logprobs is not None else None,
                    "finish_reason": choice.finish_reason,
                }
                for index, choice in enumerate(choices)
            ],
            "usage": usage(choices, num_prompt),
        }
    )


def _logprobs(tokens: Sequence[TokenLogprob]) -> dict:
    offsets, offset = [], 0
    for t in tokens:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in tokens],
        "token_logprobs": [t.logprob for t in tokens],
        "top_logprobs": [dict(t.top) for t in tokens],
        "text_offset": offsets,
    }


async def _stream(
    head: dict, body: CompletionRequest, echoes: list[str], num_prompt: int, steps: AsyncGenerator
) -> AsyncIterator[bytes]:
    choices = [Choice() for _ in range(len(echoes) * body.n)]
    pending_echo = set(range(len(choices))) if body.echo else set()
    with_logprobs = body.logprobs is not None
    event_head = sse_head(head)  # the same for every chunk: serialized once
    async with aclosing(steps):
        try:
            async for index, step in steps:
                choices[index].add(step)
                text = step.text
                if index in pending_echo:
                    pending_echo.discard(index)
                    text = echoes[index // body.n] + text
                if not text and not step.finish_reason:
                    continue
                choice = {
                    "index": index,
                    "text": text,
                    "finish_reason": step.finish_reason or "",
                    "logprobs": _logprobs(step.logprobs) if with_logprobs else None,
                }
                yield sse_event_after(
                    event_head,
                    {"choices": [choice], "usage": usage(choices, num_prompt), "error_info": None},
                )
            if body.include_usage:
                yield sse_event(
                    {**head, "choices": [], "usage": usage(choices, num_prompt), "error_info": None}
                )
        except Exception as exc:
            error = from_exception(exc).body()
            yield sse_event(
                {
                    **head,
                    "choices": [],
                    "usage": usage(choices, num_prompt),
                    "error_info": error["error"],
                    **error,
                }
            )
    yield SSE_DONE
