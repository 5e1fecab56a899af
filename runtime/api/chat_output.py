"""What a chat choice answers, read from the generated text: content, the model's reasoning and
its tool calls, whole or as stream deltas.

vLLM's parsers do the reading where the model's format needs them (`--reasoning-parser`,
`--tool-call-parser` with `--enable-auto-tool-choice`): the runtime composes them as `vllm serve`
does and hands them vLLM's own request object. Calls of a constrained output (`required`, a
named function) are read here, so they work with no parser at all (runtime/api/tools.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from runtime.api.openai_schema import ChatCompletionRequest, NamedToolChoice
from runtime.api.tools import calls_from_constrained, new_tool_call_id, tool_call

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputParsing:
    """The server's parsers: vLLM's parser class composed of the tool and reasoning parsers
    asked for, or None."""

    parser_cls: Any = None
    auto_tools: bool = False

    @classmethod
    def load(
        cls,
        tool_call_parser: str | None,
        reasoning_parser: str | None,
        enable_auto_tool_choice: bool,
        tool_parser_plugin: str | None,
        tokenizer: Any,
    ) -> OutputParsing:
        if enable_auto_tool_choice and not tool_call_parser:
            raise ValueError("--enable-auto-tool-choice needs --tool-call-parser")
        if not tool_call_parser and not reasoning_parser:
            return cls()
        try:
            from vllm.parser.parser_manager import ParserManager
            from vllm.tool_parsers import ToolParserManager
        except ImportError:
            raise ValueError(
                "--tool-call-parser and --reasoning-parser use vLLM's parsers: install vLLM "
                "(the 'cpu' or 'gpu' extra)"
            ) from None
        if tool_parser_plugin:
            ToolParserManager.import_tool_parser(tool_parser_plugin)
        try:
            parser_cls = ParserManager.get_parser(
                tool_parser_name=tool_call_parser,
                reasoning_parser_name=reasoning_parser,
                enable_auto_tools=enable_auto_tool_choice,
                tokenizer=tokenizer,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"cannot use the parsers asked for: {exc}") from None
        log.info(
            "output parsing: tool calls %s, reasoning %s",
            tool_call_parser or "(none)",
            reasoning_parser or "(none)",
        )
        return cls(parser_cls, enable_auto_tool_choice)


class ChatOutput:
    """One request's reading of its choices; `choice(i)` holds each choice's own state."""

    def __init__(self, body: ChatCompletionRequest, parsing: OutputParsing, tokenizer: Any) -> None:
        self.body = body
        self.parsing = parsing
        self.tokenizer = tokenizer
        choice = body.effective_tool_choice
        self.named = choice.function.name if isinstance(choice, NamedToolChoice) else None
        self.required = choice == "required"
        self.prompt_ids: list[int] = []  # the rendered prompt: parsers check its reasoning state
        self.vllm_request: Any = None
        if parsing.parser_cls is not None:
            from vllm.entrypoints.openai.chat_completion.protocol import (
                ChatCompletionRequest as VllmChatRequest,
            )

            fields = body.model_dump(by_alias=True, exclude_none=True)
            self.vllm_request = VllmChatRequest.model_validate(fields)
            # Parsers adjust the request (e.g. hermes keeps special tokens in the text).
            self.vllm_request = self._new_parser().adjust_request(self.vllm_request)

    @property
    def skip_special_tokens(self) -> bool:
        request = self.vllm_request
        return True if request is None else bool(request.skip_special_tokens)

    def _new_parser(self) -> Any:
        tools = self.vllm_request.tools if self.vllm_request is not None else None
        return self.parsing.parser_cls(self.tokenizer, tools)

    def choice(self) -> ChoiceOutput:
        return ChoiceOutput(self, self._new_parser() if self.parsing.parser_cls else None)


class ChoiceOutput:
    """The reading of one choice (vLLM's parsers hold state per stream)."""

    def __init__(self, output: ChatOutput, parser: Any) -> None:
        self._output = output
        self._parser = parser
        self._calls: list[dict[str, Any]] = []  # streamed so far
        self._constrained_text = ""  # of a `required` choice, read whole at its end
        self._named_id = new_tool_call_id()

    @property
    def called_tools(self) -> bool:
        return bool(self._calls)

    def whole(self, text: str, token_ids: list[int]) -> dict[str, Any]:
        """The answer's message, with `tool_calls` and `reasoning` where there are any."""
        output = self._output
        reasoning: str | None = None
        content: str | None = text
        calls: list[dict[str, Any]] = []
        if self._parser is not None:
            self._parser.set_prompt_token_ids(output.prompt_ids)
            reasoning, content, found = self._parser.parse(
                text,
                output.vllm_request,
                enable_auto_tools=output.parsing.auto_tools,
                model_output_token_ids=token_ids,
            )
            calls = [tool_call(c.name, c.arguments, c.id) for c in found or ()]
        if (output.named or output.required) and not calls:
            calls, content = calls_from_constrained(output.body, content or ""), None
        self._calls = calls
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if calls:
            message["tool_calls"] = calls
        if reasoning is not None and output.body.include_reasoning:
            message["reasoning"] = reasoning
        return message

    def delta(self, text: str, token_ids: list[int], finished: bool) -> dict[str, Any] | None:
        """What one streamed step adds to the message, or None when it adds nothing yet."""
        output = self._output
        delta: dict[str, Any] = {"content": text} if text else {}
        if self._parser is not None:
            parsed = self._parser.parse_delta(
                text, list(token_ids), output.vllm_request, output.prompt_ids, finished=finished
            )
            delta = parsed.model_dump(exclude_none=True) if parsed is not None else {}
            delta.pop("role", None)
            self._calls += delta.get("tool_calls") or []
        if not output.body.include_reasoning:
            delta.pop("reasoning", None)
        if (output.named or output.required) and not self._parser_reads_calls():
            delta = self._constrained_delta(delta, finished)
        return delta or None

    def _parser_reads_calls(self) -> bool:
        return self._parser is not None and self._parser.tool_parser is not None

    def _constrained_delta(self, delta: dict[str, Any], finished: bool) -> dict[str, Any]:
        """Content of a constrained output as tool-call deltas: a named function's arguments
        as they come; `required`'s list once it is complete."""
        content = delta.pop("content", "")
        if self._output.named is not None:
            if not content:
                return delta
            call: dict[str, Any] = {"index": 0, "function": {"arguments": content}}
            if not self._calls:  # the first delta names the call
                call.update(id=self._named_id, type="function")
                call["function"]["name"] = self._output.named
            self._calls.append(call)
            return {**delta, "tool_calls": [call]}
        self._constrained_text += content
        if not finished:
            return delta
        calls = calls_from_constrained(self._output.body, self._constrained_text)
        self._calls = calls
        if calls:
            delta["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
        return delta
