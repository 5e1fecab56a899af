"""The platform's ChatLLM API (PROTOCOLS §2): `POST /` and `POST /api/predict/<name>`.

A body is either plain text (the whole body is the prompt, answered with one JSON object) or a
JSON request; streaming answers are JSON objects each followed by NUL, with the cumulative
answer in `response`.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

import orjson
from fastapi import APIRouter, Request
from pydantic import ValidationError
from starlette.responses import Response

from processors.base import SamplingParams
from runtime.api.disconnect import unless_disconnected
from runtime.api.framing import json_response, nul_record, nul_response, primed
from runtime.api.schema import ChatLLMRequest
from runtime.errors import bad_request, describe_validation_errors, from_exception
from runtime.generation import new_request_id
from runtime.state import ServingState

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 2048


def parse_chatllm_body(body: bytes, content_type: str) -> tuple[ChatLLMRequest, bool]:
    """The request, and whether it came as plain text (which is never streamed)."""
    try:
        document = orjson.loads(body) if body.strip() else None
    except orjson.JSONDecodeError as exc:
        if "json" in content_type:
            raise bad_request(f"the body is not valid JSON: {exc}") from exc
        document = None
    if not isinstance(document, dict):
        if "json" in content_type:
            raise bad_request("the JSON body must be an object with a 'prompt' field")
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise bad_request("a plain-text body must be UTF-8") from exc
        return ChatLLMRequest(prompt=text), True
    try:
        return ChatLLMRequest.model_validate(document), False
    except ValidationError as exc:
        raise bad_request(describe_validation_errors(exc.errors())) from exc


def chatllm_messages(chat: ChatLLMRequest) -> list[dict[str, str]]:
    messages = []
    if chat.system_prompt:
        messages.append({"role": "system", "content": chat.system_prompt})
    for user, assistant in chat.history:
        messages.append({"role": "user", "content": user})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": chat.text})
    return messages


def prepare_chat(state: ServingState, chat: ChatLLMRequest) -> tuple[list[int], SamplingParams]:
    """The prompt's token ids and the sampling, checked against the context window."""
    prompt_ids = state.prompts.encode_chat(chatllm_messages(chat))
    max_tokens = state.prompts.budget(
        len(prompt_ids), chat.max_new_tokens, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS
    )
    return prompt_ids, chat.sampling(max_tokens)


def chatllm_router(state: ServingState) -> APIRouter:
    router = APIRouter()
    stream_default = state.config.server.chatllm_stream_default

    async def predict(request: Request) -> Response:
        state.require_ready()
        body = await request.body()
        chat, is_plain = parse_chatllm_body(body, request.headers.get("content-type", ""))
        prompt_ids, sampling = prepare_chat(state, chat)
        request_id = new_request_id("chatllm")
        streaming = not is_plain and (
            stream_default if chat.use_stream_chat is None else chat.use_stream_chat
        )
        if streaming:
            steps = state.generator.stream(request_id, prompt_ids, sampling)
            return nul_response(_stream(chat, len(prompt_ids), await primed(steps)))
        work = state.generator.complete(request_id, [prompt_ids], sampling, n=1)
        (choice,) = await unless_disconnected(request, work)
        return json_response(_answer(chat, choice.text, len(prompt_ids), choice.num_output_tokens))

    for path in state.config.server.platform_paths:
        router.add_api_route(
            path,
            predict,
            methods=["POST"],
            summary="ChatLLM: plain-text or JSON prompt, NUL-delimited streaming",
            openapi_extra={
                "requestBody": {
                    "content": {
                        "application/json": {"schema": ChatLLMRequest.model_json_schema()},
                        "text/plain": {"schema": {"type": "string"}},
                    }
                }
            },
        )
    return router


def _answer(chat: ChatLLMRequest, text: str, num_prompt: int, num_output: int) -> dict:
    return {
        "response": text,
        "history": [*chat.history, [chat.text, text]],
        "usage": {
            "prompt_tokens": num_prompt,
            "completion_tokens": num_output,
            "total_tokens": num_prompt + num_output,
        },
    }


async def _stream(chat: ChatLLMRequest, num_prompt: int, steps: AsyncGenerator) -> AsyncIterator:
    text = ""
    async with aclosing(steps):  # a client that leaves closes this, which aborts the request
        try:
            async for step in steps:
                text += step.text
                if step.text or step.finish_reason:
                    yield nul_record(_answer(chat, text, num_prompt, step.num_output_tokens))
        except Exception as exc:
            yield nul_record(from_exception(exc).body())
