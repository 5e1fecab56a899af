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
from runtime.api.framing import nul_record, nul_response, primed
from runtime.api.schema import ChatLLMRequest
from runtime.config import ServerConfig
from runtime.errors import ShuttingDown, bad_request, describe_validation_errors, from_exception
from runtime.generation import new_request_id
from runtime.service import AdmittedLlm, LlmService

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
        if not text.strip():
            raise bad_request(
                "the body is empty: send the prompt as text, or a JSON object with a 'prompt'"
            )
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


def prepare_chat(service: LlmService, chat: ChatLLMRequest) -> tuple[list[int], SamplingParams]:
    """The prompt's token ids and the sampling, checked against the context window."""
    prompt_ids = service.prompts.encode_chat(chatllm_messages(chat))
    max_tokens = service.prompts.budget(
        len(prompt_ids), chat.max_new_tokens, "max_new_tokens", DEFAULT_MAX_NEW_TOKENS
    )
    return prompt_ids, service.check_sampling(chat.sampling(max_tokens))


class ChatLLM:
    """One ChatLLM request, parsed and checked: answered whole, or as a stream of records."""

    def __init__(self, service: LlmService, body: bytes, content_type: str, stream_default: bool):
        self.chat, is_plain = parse_chatllm_body(body, content_type)
        self.prompt_ids, self.sampling = prepare_chat(service, self.chat)
        self.streaming = not is_plain and (
            stream_default if self.chat.use_stream_chat is None else self.chat.use_stream_chat
        )
        _, self._adapter = service.model(self.chat.model)
        self._runner = service.runner
        self._request_id = new_request_id("chatllm")

    async def whole(self, request: Request | None = None) -> bytes:
        """The answer as one JSON object (stopped when `request`'s client leaves)."""
        work = self._runner.complete(
            self._request_id, [self.prompt_ids], self.sampling, n=1, adapter=self._adapter
        )
        (choice,) = await unless_disconnected(request, work)
        num_prompt = len(self.prompt_ids)
        return orjson.dumps(_answer(self.chat, choice.text, num_prompt, choice.num_output_tokens))

    def records(self) -> AsyncGenerator[bytes, None]:
        """The streamed answer's records; an error ends it by raising."""
        steps = self._runner.stream(self._request_id, self.prompt_ids, self.sampling, self._adapter)
        return _records(self.chat, len(self.prompt_ids), steps)


async def answer_chatllm(
    service: LlmService, body: bytes, content_type: str, stream_default: bool
) -> tuple[bytes, int]:
    """What `POST /` answers this body, as bytes and a status (queued requests are answered
    so). Raises ShuttingDown when serving ends first, so the work is not lost."""
    try:
        chat = ChatLLM(service, body, content_type, stream_default)
        if not chat.streaming:
            return await chat.whole(), 200
        parts = []
        async with aclosing(chat.records()) as records:
            async for record in _errors_end_the_stream(records, keep=ShuttingDown):
                parts.append(record)
        return b"".join(parts), 200
    except ShuttingDown:
        raise
    except Exception as exc:
        error = from_exception(exc)
        return orjson.dumps(error.body()), error.status


def chatllm_router(config: ServerConfig) -> APIRouter:
    router = APIRouter()
    stream_default = config.chatllm_stream_default

    async def predict(request: Request, service: AdmittedLlm) -> Response:
        body = await request.body()
        chat = ChatLLM(service, body, request.headers.get("content-type", ""), stream_default)
        if chat.streaming:
            records = await primed(chat.records())
            return nul_response(_errors_end_the_stream(records))
        return Response(await chat.whole(request), media_type="application/json")

    for path in config.platform_paths:
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


async def _records(
    chat: ChatLLMRequest, num_prompt: int, steps: AsyncGenerator
) -> AsyncGenerator[bytes, None]:
    text = ""
    async with aclosing(steps):  # a client that leaves closes this, which aborts the request
        async for step in steps:
            text += step.text
            if step.text or step.finish_reason:
                yield nul_record(_answer(chat, text, num_prompt, step.num_output_tokens))


async def _errors_end_the_stream(
    records: AsyncGenerator[bytes, None], keep: type[Exception] | None = None
) -> AsyncIterator[bytes]:
    """The records, and an error that cuts them short as a last record (unless it is a `keep`
    error, which is raised)."""
    async with aclosing(records):
        try:
            async for record in records:
                yield record
        except Exception as exc:
            if keep is not None and isinstance(exc, keep):
                raise
            yield nul_record(from_exception(exc).body())
