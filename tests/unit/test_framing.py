"""Stream events serialized with their head once per stream are the same bytes as whole ones."""

from __future__ import annotations

import pytest

from runtime.api.framing import sse_event, sse_event_after, sse_head

HEAD = {"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "m\u00e9"}


@pytest.mark.parametrize(
    "rest",
    [
        {"choices": [{"index": 0, "text": 'a\n"b"', "finish_reason": ""}], "error_info": None},
        {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}},
        {"choices": [{"index": 3, "delta": {}, "logprobs": None, "finish_reason": "stop"}]},
    ],
)
def test_event_after_a_serialized_head_matches_the_whole_event(rest):
    assert sse_event_after(sse_head(HEAD), rest) == sse_event({**HEAD, **rest})
