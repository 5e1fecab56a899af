"""Tool calling on the chat API: what a request's tools ask of the model, and its calls read
back from what the model wrote.

`tool_choice: required` and a named function constrain the output with a JSON schema (so they
hold on any model): a named function's arguments are the output itself, and `required` is a
JSON list of `{"name", "parameters"}` objects, as vLLM builds them. `auto` leaves the model free
and reads its calls with vLLM's tool parser for the model's format (--tool-call-parser).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from processors.base import StructuredOutput
from runtime.api.openai_schema import ChatCompletionRequest, NamedToolChoice
from runtime.errors import bad_request


def new_tool_call_id() -> str:
    return f"chatcmpl-tool-{uuid.uuid4().hex[:24]}"


def check_tools(body: ChatCompletionRequest, auto_tools: bool) -> None:
    """The request's tools and tool_choice make sense together, as vLLM checks them."""
    choice, tools = body.tool_choice, body.tools or []
    if choice is not None and choice != "none" and not tools:
        raise bad_request("tool_choice needs tools", param="tool_choice")
    if isinstance(choice, NamedToolChoice):
        names = [tool.function.name for tool in tools]
        if choice.function.name not in names:
            raise bad_request(
                f"tool_choice names {choice.function.name!r}, which is not among the tools "
                f"({', '.join(names)})",
                param="tool_choice",
            )
    if tools and body.effective_tool_choice == "auto" and not auto_tools:
        raise bad_request(
            '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to '
            'be set (or send tool_choice "required", a named function, or "none")',
            param="tool_choice",
        )


def template_tools(body: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools as the model's chat template takes them (OpenAI's shape)."""
    if not body.tools:
        return None
    return [tool.model_dump(exclude_none=True) for tool in body.tools]


def tool_constraint(body: ChatCompletionRequest) -> StructuredOutput | None:
    """The JSON schema the output must follow for `required` or a named function."""
    choice, tools = body.effective_tool_choice, body.tools or []
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == choice.function.name)
        return StructuredOutput(json_schema=_parameters(tool.function.parameters))
    if choice != "required":
        return None
    calls = [
        {
            "properties": {
                "name": {"type": "string", "enum": [tool.function.name]},
                "parameters": _parameters(tool.function.parameters),
            },
            "required": ["name", "parameters"],
        }
        for tool in tools
    ]
    schema: dict[str, Any] = {
        "type": "array",
        "minItems": 1,
        "items": {"type": "object", "anyOf": calls},
    }
    if body.parallel_tool_calls is False:
        schema["maxItems"] = 1
    return StructuredOutput(json_schema=schema)


def _parameters(schema: dict[str, Any] | None) -> dict[str, Any]:
    return schema or {"type": "object", "properties": {}}


def calls_from_constrained(body: ChatCompletionRequest, text: str) -> list[dict[str, Any]]:
    """The calls a constrained output (`required` or a named function) makes."""
    choice = body.effective_tool_choice
    if isinstance(choice, NamedToolChoice):
        return [tool_call(choice.function.name, text)] if text.strip() else []
    try:
        listed = json.loads(text)
    except ValueError:
        return []  # cut short (max_tokens): no complete call
    return [
        tool_call(item["name"], json.dumps(item.get("parameters", {}), ensure_ascii=False))
        for item in listed
        if isinstance(item, dict) and isinstance(item.get("name"), str)
    ]


def tool_call(name: str, arguments: str, call_id: str | None = None) -> dict[str, Any]:
    return {
        "id": call_id or new_tool_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }
