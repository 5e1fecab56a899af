"""The OpenAI API against the real server and engine, through the `openai` SDK."""

from __future__ import annotations

import openai
import pytest
import requests

DEMO = "llm-runtime-demo"
GREEDY = {"temperature": 0, "max_tokens": 12}


def test_models_list_names_the_demo_model(openai_client):
    assert [model.id for model in openai_client.models.list().data] == [DEMO]


def test_chat_completion(openai_client):
    reply = openai_client.chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": "Hello!"}], **GREEDY
    )
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content
    assert choice.finish_reason == "length"  # the demo model never emits EOS
    assert reply.usage.completion_tokens == 12
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 12


def test_chat_stream_adds_up_to_the_same_text(openai_client):
    messages = [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "Hi"}]
    whole = openai_client.chat.completions.create(model=DEMO, messages=messages, **GREEDY)
    chunks = list(
        openai_client.chat.completions.create(
            model=DEMO,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            **GREEDY,
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == 12
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == ["length"]


def test_content_parts_equal_plain_content(openai_client):
    plain = openai_client.chat.completions.create(
        model=DEMO, messages=[{"role": "user", "content": "tell me"}], **GREEDY
    )
    parts = openai_client.chat.completions.create(
        model=DEMO,
        messages=[
            {
                "role": "user",
                "content": [{"type": "text", "text": "tell "}, {"type": "text", "text": "me"}],
            }
        ],
        **GREEDY,
    )
    assert parts.choices[0].message.content == plain.choices[0].message.content


def test_max_completion_tokens_is_honoured(openai_client):
    reply = openai_client.chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "x"}],
        max_completion_tokens=5,
        temperature=0,
    )
    assert reply.usage.completion_tokens == 5


def test_completions_stream_and_not(openai_client):
    whole = openai_client.completions.create(model=DEMO, prompt="The server", **GREEDY)
    chunks = list(
        openai_client.completions.create(model=DEMO, prompt="The server", stream=True, **GREEDY)
    )
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    assert whole.usage.completion_tokens == 12


def test_stop_strings_end_the_text_and_are_trimmed(openai_client):
    text = openai_client.completions.create(model=DEMO, prompt="Once", **GREEDY).choices[0].text
    stop = text[4:7]
    expected = text[: text.index(stop)]
    reply = openai_client.completions.create(model=DEMO, prompt="Once", stop=[stop], **GREEDY)
    assert reply.choices[0].text == expected
    assert reply.choices[0].finish_reason == "stop"


def test_seeded_sampling_repeats_and_greedy_is_deterministic(openai_client):
    def sample(**kwargs):
        return (
            openai_client.completions.create(
                model=DEMO, prompt="Once upon", max_tokens=16, **kwargs
            )
            .choices[0]
            .text
        )

    assert sample(temperature=1.0, seed=1234) == sample(temperature=1.0, seed=1234)
    assert sample(temperature=0) == sample(temperature=0)


def test_n_choices_and_logprobs(openai_client):
    reply = openai_client.completions.create(
        model=DEMO, prompt="Hello", max_tokens=4, n=2, temperature=1.0, seed=5, logprobs=2
    )
    assert [c.index for c in reply.choices] == [0, 1]
    logprobs = reply.choices[0].logprobs
    assert len(logprobs.tokens) == 4
    assert all(lp <= 0 for lp in logprobs.token_logprobs)
    assert "".join(logprobs.tokens) == reply.choices[0].text
    chat = openai_client.chat.completions.create(
        model=DEMO,
        messages=[{"role": "user", "content": "x"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content
    assert len(content) == 3
    assert all(len(t.top_logprobs) >= 2 for t in content)


def test_unknown_model_is_404(openai_client):
    with pytest.raises(openai.NotFoundError, match="gpt-4o"):
        openai_client.completions.create(model="gpt-4o", prompt="x", max_tokens=1)


def test_prompt_longer_than_the_context_is_400_with_both_numbers(openai_client):
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client.completions.create(model=DEMO, prompt="word " * 3000, max_tokens=1)
    message = str(caught.value)
    assert "2048 tokens" in message
    assert "the prompt is" in message


def test_wrong_token_is_401_for_the_sdk(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert requests.get(f"{server.url}/v1/models", timeout=10).status_code == 401
