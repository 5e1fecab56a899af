"""From what a client sent to the token ids an engine runs: chat templates and token budgets."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from processors.base import Tokenizer
from runtime.errors import bad_request

log = logging.getLogger(__name__)

Message = dict[str, Any]  # role, content, and an assistant's tool_calls or a tool's call id


@dataclass(frozen=True)
class ChatPrompt:
    """What the template renders besides the messages (OpenAI's and vLLM's request fields)."""

    tools: list[dict[str, Any]] | None = None
    template_kwargs: dict[str, Any] | None = None  # e.g. enable_thinking
    add_generation_prompt: bool = True
    continue_final_message: bool = False  # the last (assistant) message is continued


class PromptBuilder:
    """Renders chat messages with the model's template and checks prompts fit the context."""

    def __init__(
        self, tokenizer: Tokenizer, max_model_len: int, chat_template: str | None = None
    ) -> None:
        self._tokenizer = tokenizer
        self.max_model_len = max_model_len
        self._template = chat_template  # --chat-template: instead of the model's own
        self._has_template = bool(chat_template or getattr(tokenizer, "chat_template", None))
        if not self._has_template:
            log.warning("the model has no chat template; chat prompts use a plain fallback")

    def render_chat(self, messages: Sequence[Message], options: ChatPrompt = ChatPrompt()) -> str:
        for index, message in enumerate(messages):
            if isinstance(message.get("content"), str):
                check_encodable(message["content"], f"messages.{index}.content")
        if not self._has_template:
            return _fallback_template(messages)
        if options.continue_final_message and options.add_generation_prompt:
            raise bad_request(
                "continue_final_message and add_generation_prompt exclude each other: set "
                "add_generation_prompt to false to continue the last message",
                param="continue_final_message",
            )
        try:
            rendered = self._tokenizer.apply_chat_template(
                list(messages),
                tokenize=False,
                tools=options.tools,
                chat_template=self._template,
                add_generation_prompt=options.add_generation_prompt,
                continue_final_message=options.continue_final_message,
                **(options.template_kwargs or {}),
            )
        except Exception as exc:  # templates raise on e.g. roles that do not alternate
            raise bad_request(f"the model's chat template rejected the messages: {exc}") from exc
        return str(rendered)

    def encode_chat(
        self, messages: Sequence[Message], options: ChatPrompt = ChatPrompt()
    ) -> list[int]:
        # The template already wrote any BOS token, so the tokenizer must not add another.
        rendered = self.render_chat(messages, options)
        return self._tokenizer.encode(rendered, add_special_tokens=False)

    def encode_text(self, text: str, field: str = "prompt") -> list[int]:
        check_encodable(text, field)
        return self._tokenizer.encode(text, add_special_tokens=True)

    def check_token_ids(self, token_ids: Sequence[int], field: str = "prompt") -> None:
        """Token ids a client sent must be in the vocabulary, or the tokenizer would crash."""
        vocab_size = len(self._tokenizer)
        for token_id in token_ids:
            if not 0 <= token_id < vocab_size:
                raise bad_request(
                    f"{field}: token id {token_id} is outside the vocabulary (0 to "
                    f"{vocab_size - 1})",
                    param=field,
                )

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._tokenizer.decode(token_ids, skip_special_tokens=False)

    def budget(
        self, num_prompt_tokens: int, requested: int | None, field: str, default: int | None = None
    ) -> int:
        """Max tokens to generate. An explicit request that does not fit is an error (vLLM
        clamps it silently); an absent one gets `default`, clamped to what is left."""
        room = self.max_model_len - num_prompt_tokens
        if room < 1:
            raise bad_request(
                f"the prompt is {num_prompt_tokens} tokens, but the model's context window is "
                f"{self.max_model_len} tokens (at least one token must be left to generate)",
                param="prompt",
            )
        if requested is None:
            return room if default is None else min(default, room)
        if requested > room:
            raise bad_request(
                f"{field} is {requested}, but the prompt is {num_prompt_tokens} tokens and the "
                f"model's context window is {self.max_model_len} tokens: at most {room} tokens "
                "can be generated",
                param=field,
            )
        return requested


def check_encodable(text: str, field: str) -> None:
    """Text a tokenizer can take: JSON lets a lone surrogate (e.g. "\\ud800") through, and
    no UTF-8 encoding exists for it."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        character = text[exc.start]
        raise bad_request(
            f"{field}: the text holds a lone surrogate (\\u{ord(character):04x}) at position "
            f"{exc.start}, which is not a character and cannot be encoded",
            param=field,
        ) from None


def text_of(content: Any, field: str = "content") -> str:
    """Message content as text: a string, or a list of `{"type": "text", "text": ...}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind != "text" or not isinstance(part.get("text"), str):
            raise bad_request(
                f"{field}: only text parts are supported, got part type {kind!r}", param=field
            )
        parts.append(part["text"])
    return "".join(parts)


def _fallback_template(messages: Sequence[Message]) -> str:
    lines = []
    for message in messages:
        role = message["role"]
        if role == "system":
            lines.append(message["content"] + "\n")
        else:
            lines.append(f"{role.capitalize()}: {message['content']}")
    lines.append("Assistant:")
    return "\n".join(lines)
