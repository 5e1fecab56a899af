"""OpenAI `GET /v1/models` and `POST /v1/chat/completions`, streaming (SSE) and not, with tool
calls, structured outputs and reasoning as `vllm serve` answers them."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from processors.base import TokenLogprob
from runtime.admission import weigh
from runtime.api.chat_output import ChatOutput, ChoiceOutput
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
from runtime.api.openai_schema import ChatCompletionRequest
from runtime.api.tools import check_tools, template_tools, tool_constraint
from runtime.errors import bad_request, from_exception
from runtime.generation import Choice, new_request_id, usage
from runtime.prompting import ChatPrompt, text_of
from runtime.service import AdmittedLlm, LlmService


def openai_chat_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    @router.get("/models", summary="The served model and its LoRA adapters")
    async def list_models(service: AdmittedLlm) -> Response:
        info = service.info
        common = {"object": "model", "created": int(time.time()), "owned_by": "llm-runtime"}
        base = {"id": info.model_name, "root": info.model_path, "parent": None}
        adapters = service.adapters.listed() if service.adapters is not None else []
        models = [
            {**common, **model, "max_model_len": info.max_model_len} for model in [base, *adapters]
        ]
        return json_response({"object": "list", "data": models})

    @router.post("/chat/completions", summary="OpenAI chat completions")
    async def chat_completions(
        body: ChatCompletionRequest, request: Request, service: AdmittedLlm
    ) -> Response:
        return await answer_chat(service, body, request)

    return router


def chat_messages(body: ChatCompletionRequest) -> list[dict[str, Any]]:
    """The messages as the chat template takes them: text content, and the tool calls and
    call ids of a conversation with tools (a call's arguments as an object, as vLLM hands them
    to templates)."""
    messages = []
    for index, message in enumerate(body.messages):
        fields: dict[str, Any] = {
            "role": message.role,
            "content": text_of(message.content, f"messages.{index}.content"),
        }
        for key in ("name", "tool_call_id", "reasoning"):
            if getattr(message, key) is not None:
                fields[key] = getattr(message, key)
        if message.tool_calls:
            fields["tool_calls"] = [_with_parsed_arguments(call) for call in message.tool_calls]
        messages.append(fields)
    return messages


def _with_parsed_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function")
    if isinstance(function, dict) and isinstance(function.get("arguments"), str):
        try:
            arguments = json.loads(function["arguments"])
        except ValueError:
            return call
        return {**call, "function": {**function, "arguments": arguments}}
    return call


async def answer_chat(
    service: LlmService, body: ChatCompletionRequest, request: Request | None = None
) -> Response:
    """The chat completion, streamed or whole (stopped when `request`'s client leaves)."""
    refuse_unhonoured(body)
    model, adapter = service.model(body.model)
    check_tools(body, service.parsing.auto_tools)
    output = ChatOutput(body, service.parsing, service.info.tokenizer)
    messages = chat_messages(body)
    options = ChatPrompt(
        tools=template_tools(body),
        template_kwargs=body.chat_template_kwargs,
        add_generation_prompt=body.add_generation_prompt,
        continue_final_message=body.continue_final_message,
    )
    prompt_ids = service.prompts.encode_chat(messages, options)
    output.prompt_ids = prompt_ids
    requested = body.max_completion_tokens or body.max_tokens
    field = "max_completion_tokens" if body.max_completion_tokens else "max_tokens"
    defaults = service.sampling_defaults
    max_tokens = service.prompts.budget(
        len(prompt_ids), requested, field, defaults.get("max_tokens")
    )
    logprobs = (body.top_logprobs or 0) if body.logprobs else None
    structured = body.structured()
    for_tools = tool_constraint(body)
    if structured is not None and for_tools is not None:
        raise bad_request(
            "a structured output and a required or named tool each constrain the output: send "
            "one of them",
            param="tool_choice",
        )
    sampling = body.sampling(max_tokens, logprobs, defaults, structured or for_tools)
    sampling = dataclasses.replace(sampling, skip_special_tokens=output.skip_special_tokens)
    sampling = service.check_sampling(sampling)
    service.limits.check(1, body.n)
    weigh(request, body.n)
    request_id = new_request_id("chatcmpl")
    head = {"id": request_id, "created": int(time.time()), "model": model}
    # echo: an assistant message being continued starts the answer, as vLLM has it.
    last = messages[-1]
    echo = last["content"] if body.echo and last["role"] == "assistant" else ""
    runner = service.runner
    if body.stream:
        steps = runner.stream_choices(request_id, [prompt_ids], sampling, body.n, adapter)
        return await sse_stream(
            lambda primed: _stream(head, body, output, echo, len(prompt_ids), primed),
            steps,
            service.keep_alive(request),
        )
    work = runner.complete(request_id, [prompt_ids], sampling, body.n, adapter)
    choices = await unless_disconnected(request, work)
    answers = []
    for index, choice in enumerate(choices):
        reading = output.choice()
        message = reading.whole(choice.text, choice.token_ids)
        if echo and message["content"] is not None:
            message["content"] = echo + message["content"]
        answers.append(
            {
                "index": index,
                "message": message,
                "logprobs": _logprobs(choice.logprobs) if body.logprobs else None,
                "finish_reason": _finish_reason(output, reading, choice.finish_reason),
            }
        )
    return json_response(
        {
            **head,
            "object": "chat.completion",
            "choices": answers,
            "usage": usage(choices, len(prompt_ids)),
        }
    )


def _finish_reason(output: ChatOutput, reading: ChoiceOutput, finish: str | None) -> str | None:
    """ "tool_calls" when the model called tools (auto) or had to (required and done); a named
    function's call ends with the engine's reason, as in OpenAI's API."""
    if reading.called_tools and output.named is None and finish in ("stop", None):
        return "tool_calls"
    return finish


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
    head: dict,
    body: ChatCompletionRequest,
    output: ChatOutput,
    echo: str,
    num_prompt: int,
    steps: AsyncGenerator,
) -> AsyncIterator[bytes]:
    chunk = {**head, "object": "chat.completion.chunk"}
    event_head = sse_head(chunk)  # the same for every chunk: serialized once
    choices = [Choice() for _ in range(body.n)]
    readings = [output.choice() for _ in range(body.n)]
    async with aclosing(steps):
        try:
            for index in range(body.n):
                delta = {"role": "assistant", "content": echo}
                choice = {"index": index, "delta": delta, "logprobs": None, "finish_reason": None}
                yield sse_event_after(event_head, {"choices": [choice]})
            async for index, step in steps:
                choices[index].add(step)
                finished = step.finish_reason is not None
                delta = readings[index].delta(step.text, list(step.token_ids), finished)
                if delta is None and not finished:
                    continue
                finish = None
                if finished:
                    finish = _finish_reason(output, readings[index], step.finish_reason)
                choice = {
                    "index": index,
                    "delta": delta or {},
                    "logprobs": _logprobs(step.logprobs) if body.logprobs else None,
                    "finish_reason": finish,
                }
                yield sse_event_after(event_head, {"choices": [choice]})
            if body.include_usage:
                yield sse_event({**chunk, "choices": [], "usage": usage(choices, num_prompt)})
        except Exception as exc:
            yield sse_event(from_exception(exc).body())
    yield SSE_DONE
