"""`POST /tokenize` and `POST /detokenize`, with vLLM's request and response shapes: a prompt
or chat messages to token ids (rendered by the chat template), and token ids back to text."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from pydantic import Field
from starlette.responses import Response

from runtime.api.fields import refuse_unhonoured
from runtime.api.framing import json_response
from runtime.api.openai_chat import chat_messages
from runtime.api.openai_schema import ChatCompletionRequest, ChatMessage, OpenAIBody, Tool
from runtime.api.tools import template_tools
from runtime.errors import bad_request
from runtime.prompting import ChatPrompt, check_encodable
from runtime.service import AdmittedLlm, LlmService


class TokenizeRequest(OpenAIBody):
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool | None = None  # default: true for a prompt, false for messages
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None
    tools: list[Tool] | None = None
    return_token_strs: bool = False


class DetokenizeRequest(OpenAIBody):
    model: str | None = None
    tokens: list[int]


def tokenize_router() -> APIRouter:
    router = APIRouter()

    @router.post("/tokenize", summary="a prompt or chat messages to token ids (vLLM's)")
    async def tokenize(body: TokenizeRequest, service: AdmittedLlm) -> Response:
        return json_response(tokenized(service, body))

    @router.post("/detokenize", summary="token ids to text (vLLM's)")
    async def detokenize(body: DetokenizeRequest, service: AdmittedLlm) -> Response:
        refuse_unhonoured(body)
        service.model(body.model)
        service.prompts.check_token_ids(body.tokens, "tokens")
        return json_response({"prompt": service.prompts.decode(body.tokens)})

    return router


def tokenized(service: LlmService, body: TokenizeRequest) -> dict[str, Any]:
    refuse_unhonoured(body)
    service.model(body.model)
    tokenizer = service.info.tokenizer
    if (body.prompt is None) == (body.messages is None):
        raise bad_request("send a prompt or messages, one of them", param="prompt")
    if body.messages is not None:
        chat = ChatCompletionRequest(messages=body.messages, tools=body.tools)
        options = ChatPrompt(
            tools=template_tools(chat),
            template_kwargs=body.chat_template_kwargs,
            add_generation_prompt=body.add_generation_prompt,
            continue_final_message=body.continue_final_message,
        )
        text = service.prompts.render_chat(chat_messages(chat), options)
        add_special = bool(body.add_special_tokens)  # the template wrote any BOS token
    else:
        text, add_special = str(body.prompt), body.add_special_tokens is not False
    check_encodable(text, "prompt")
    tokens = tokenizer.encode(text, add_special_tokens=add_special)
    return {
        "count": len(tokens),
        "max_model_len": service.info.max_model_len,
        "tokens": tokens,
        "token_strs": tokenizer.convert_ids_to_tokens(tokens) if body.return_token_strs else None,
    }
