"""Request fields the runtime does not honour are refused by name, never ignored.

A client written for `vllm serve` that sends `logit_bias` or an image part expects it to act; a
200 with an answer that ignored it looks like success and is wrong. So a field outside what the
OpenAI schemas honour is a 400 saying why, unless it is noise: a field clients send with its
default value (`user`, `metadata`, `store: false`, `logit_bias: null`, ...), which asks for
nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from runtime.errors import bad_request

# Accepted with any value: they ask nothing of the answer.
NOISE = {"user", "metadata", "service_tier", "prompt_cache_key", "safety_identifier"}

NOT_IMPLEMENTED = "is not supported by this runtime"
# Fields of OpenAI's or vLLM's requests the runtime does not honour, with their value that asks
# for nothing (accepted) and why another value is refused.
UNHONOURED: dict[str, tuple[Any, str]] = {
    "store": (False, "stored completions are not kept by this runtime"),
    "logit_bias": (None, NOT_IMPLEMENTED),
    "logprob_token_ids": (None, NOT_IMPLEMENTED),
    "use_beam_search": (False, "beam search is not supported by this runtime"),
    "length_penalty": (1.0, "it applies to beam search, which this runtime does not do"),
    "best_of": (None, "best_of is not supported by this runtime (use n)"),
    "stop_token_ids": (None, NOT_IMPLEMENTED),
    "include_stop_str_in_output": (False, NOT_IMPLEMENTED),
    "min_tokens": (0, NOT_IMPLEMENTED),
    "skip_special_tokens": (True, NOT_IMPLEMENTED),
    "spaces_between_special_tokens": (True, NOT_IMPLEMENTED),
    "truncate_prompt_tokens": (None, "prompts are not truncated: one too long is a 400"),
    "truncation_side": (None, "prompts are not truncated: one too long is a 400"),
    "prompt_logprobs": (None, NOT_IMPLEMENTED),
    "allowed_token_ids": (None, NOT_IMPLEMENTED),
    "bad_words": (None, NOT_IMPLEMENTED),
    "add_special_tokens": (None, NOT_IMPLEMENTED),
    "documents": (None, NOT_IMPLEMENTED),
    "chat_template": (
        None,
        "a chat template in a request is not taken (vLLM too needs "
        "--trust-request-chat-template); start the server with --chat-template FILE",
    ),
    "mm_processor_kwargs": (None, "no multimodal model is served"),
    "media_io_kwargs": (None, "no multimodal model is served"),
    "priority": (0, "requests are served in arrival order (no priority scheduling)"),
    "request_id": (None, "the runtime names its requests"),
    "session_id": (None, NOT_IMPLEMENTED),
    "return_tokens_as_token_ids": (None, NOT_IMPLEMENTED),
    "return_token_ids": (None, NOT_IMPLEMENTED),
    "cache_salt": (None, NOT_IMPLEMENTED),
    "kv_transfer_params": (None, "disaggregated serving is not supported by this runtime"),
    "ec_transfer_params": (None, "disaggregated serving is not supported by this runtime"),
    "vllm_xargs": (None, NOT_IMPLEMENTED),
    "reasoning_effort": (None, "thinking is switched through chat_template_kwargs here"),
    "thinking_token_budget": (None, NOT_IMPLEMENTED),
    "suffix": (None, NOT_IMPLEMENTED),
    "prompt_embeds": (None, NOT_IMPLEMENTED),
    "functions": (None, "the legacy functions API is not supported: use tools"),
    "function_call": (None, "the legacy functions API is not supported: use tool_choice"),
    "audio": (None, "no audio model is served"),
    "modalities": (None, "only text is served"),
    "prediction": (None, NOT_IMPLEMENTED),
    "web_search_options": (None, NOT_IMPLEMENTED),
    "stream_interval": (None, "the server sets it (--stream-interval)"),
}
# What clients copy back into the conversation from an earlier answer; it asks nothing.
MESSAGE_NOISE = {"refusal", "annotations", "audio", "function_call", "reasoning_content"}


def refuse_unhonoured(body: BaseModel) -> None:
    """ApiError 400 for the first field of `body` (or of its messages) the runtime would have
    to ignore."""
    _check_extras(body, "", NOISE, UNHONOURED)
    for index, message in enumerate(getattr(body, "messages", None) or ()):
        _check_extras(message, f"messages.{index}.", MESSAGE_NOISE, {})


def _check_extras(
    model: BaseModel, where: str, noise: set[str], unhonoured: dict[str, tuple[Any, str]]
) -> None:
    for name, value in (model.model_extra or {}).items():
        field = f"{where}{name}"
        if name in noise:
            continue
        known = unhonoured.get(name)
        if known is None:
            raise bad_request(f"{field} is not a field this API takes", param=field)
        harmless, reason = known
        if value is None or value == harmless or value in ([], {}, ""):
            continue
        raise bad_request(f"{field}: {reason}", param=field)
