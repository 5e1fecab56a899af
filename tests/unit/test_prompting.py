"""Chat templates and token budgets."""

from __future__ import annotations

import pytest

from runtime.api.chatllm import chatllm_messages
from runtime.api.schema import ChatLLMRequest
from runtime.errors import ApiError
from runtime.prompting import PromptBuilder, text_of


def test_chatllm_messages_order_system_history_prompt():
    chat = ChatLLMRequest(prompt="q2", system_prompt="sys", history=[["q1", "a1"]])
    assert chatllm_messages(chat) == [
        {"role": "system", "content": "sys"},
        {"role": "user", "content": "q1"},
        {"role": "assistant", "content": "a1"},
        {"role": "user", "content": "q2"},
    ]
    assert chatllm_messages(ChatLLMRequest(prompt="only"))[0]["role"] == "user"


def test_template_is_rendered_without_a_second_bos(demo_tokenizer):
    builder = PromptBuilder(demo_tokenizer, 2048)
    ids = builder.encode_chat([{"role": "user", "content": "hi"}])
    assert ids.count(demo_tokenizer.bos_token_id) == 1


def test_fallback_template_without_a_chat_template(demo_tokenizer):
    class NoTemplate:
        chat_template = None

    builder = PromptBuilder(NoTemplate(), 2048)  # type: ignore[arg-type]
    text = builder.render_chat(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    )
    assert text == "S\n\nUser: U\nAssistant:"


def test_budget_defaults_clamp_and_explicit_requests_must_fit(demo_tokenizer):
    builder = PromptBuilder(demo_tokenizer, 100)
    assert builder.budget(40, None, "max_tokens") == 60
    assert builder.budget(40, None, "max_new_tokens", default=2048) == 60
    assert builder.budget(40, None, "max_new_tokens", default=10) == 10
    assert builder.budget(40, 60, "max_tokens") == 60
    with pytest.raises(ApiError, match="max_tokens is 61.*40 tokens.*100 tokens.*at most 60"):
        builder.budget(40, 61, "max_tokens")
    with pytest.raises(ApiError, match="prompt is 100 tokens"):
        builder.budget(100, None, "max_tokens")


def test_text_parts_are_joined_and_other_parts_rejected():
    assert text_of([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert text_of(None) == ""
    with pytest.raises(ApiError, match="only text parts"):
        text_of([{"type": "image_url"}])
