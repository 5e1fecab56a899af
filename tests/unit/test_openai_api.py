"""OpenAI and BladeLLM shapes over HTTP with a fake processor."""

from __future__ import annotations

import json

import pytest

from processors.base import EngineDeadError


def sse_events(response) -> list:
    assert response.headers["content-type"].startswith("text/event-stream")
    lines = [line for line in response.text.split("\n\n") if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_models_lists_the_served_model(client):
    body = client.get("/v1/models").json()
    assert [m["id"] for m in body["data"]] == ["fake-model"]
    assert body["data"][0]["max_model_len"] == 64


def test_chat_accepts_string_and_text_part_content_alike(client, fake):
    messages = [{"role": "user", "content": "hello world"}]
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}],
        }
    ]
    for content in (messages, parts):
        response = client.post("/v1/chat/completions", json={"messages": content, "max_tokens": 2})
        assert response.status_code == 200
        body = response.json()
        assert body["object"] == "chat.completion"
        assert body["choices"][0]["message"] == {"role": "assistant", "content": "w0 w1 "}
        assert body["choices"][0]["finish_reason"] == "length"
    assert fake.requests[0].prompt_token_ids == fake.requests[1].prompt_token_ids


def test_max_completion_tokens_wins_over_max_tokens(client, fake):
    client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 5,
            "max_completion_tokens": 3,
        },
    )
    assert fake.requests[-1].sampling.max_tokens == 3


def test_chat_stream_sends_role_then_deltas_then_usage(client):
    response = client.post(
        "/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": "x"}],
            "max_tokens": 2,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    )
    events = sse_events(response)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [e["choices"][0]["delta"].get("content") for e in events[1:3]] == ["w0 ", "w1 "]
    assert events[2]["choices"][0]["finish_reason"] == "length"
    assert events[3]["choices"] == []
    assert events[3]["usage"]["completion_tokens"] == 2


def test_n_choices_are_generated_separately(client, fake):
    body = client.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "x"}], "max_tokens": 1, "n": 3, "seed": 7},
    ).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert sorted(r.sampling.seed for r in fake.requests) == [7, 8, 9]
    assert body["usage"]["completion_tokens"] == 3


def test_completions_stream_carries_bladellm_fields_on_every_chunk(client):
    response = client.post(
        "/v1/completions", json={"prompt": "hi", "max_tokens": 3, "stream": "true"}
    )
    events = sse_events(response)
    assert [e["choices"][0]["finish_reason"] for e in events] == ["", "", "length"]
    assert [e["usage"]["completion_tokens"] for e in events] == [1, 2, 3]
    assert all(e["error_info"] is None and e["object"] == "text_completion" for e in events)
    prompt_tokens = events[0]["usage"]["prompt_tokens"]
    assert events[-1]["usage"]["total_tokens"] == prompt_tokens + 3


def test_completions_accept_token_ids_and_batches(client, fake):
    body = client.post("/v1/completions", json={"prompt": [[5, 6], [7]], "max_tokens": 1}).json()
    assert len(body["choices"]) == 2
    assert sorted(list(r.prompt_token_ids) for r in fake.requests) == [[5, 6], [7]]
    assert body["usage"]["prompt_tokens"] == 3


def test_echo_prepends_the_prompt(client):
    body = client.post(
        "/v1/completions", json={"prompt": "hello", "max_tokens": 1, "echo": True}
    ).json()
    assert body["choices"][0]["text"] == "hello" + "w0 "


def test_error_mid_stream_is_a_final_error_chunk(client, fake):
    async def failing(request):
        yield_step = fake.__class__.generate(fake, request)
        yield await anext(yield_step)
        raise EngineDeadError("engine died")

    fake.generate = failing
    response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 5, "stream": True})
    events = sse_events(response)
    assert events[0]["choices"][0]["text"] == "w0 "
    assert events[-1]["error_info"]["type"] == "engine_dead"
    assert events[-1]["error"]["code"] == 503


@pytest.mark.parametrize(
    ("path", "body", "needle"),
    [
        ("/v1/completions", {"prompt": "x", "temperature": -0.5}, "temperature"),
        ("/v1/completions", {"prompt": "x", "top_p": 1.5}, "top_p"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 500}, "context window is 64"),
        ("/v1/completions", {"prompt": []}, "prompt"),
        ("/v1/completions", {"prompt": "x", "n": "many"}, "n"),
        ("/v1/completions", {"max_tokens": 1}, "prompt"),
        ("/v1/completions", {"prompt": [5, -3]}, "token id -3 is outside the vocabulary"),
        ("/v1/completions", {"prompt": [[5], [100000]]}, "token id 100000 is outside"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "x"}]}, "role"),
        (
            "/v1/chat/completions",
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "only text parts",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "x"}], "top_logprobs": 99},
            "top_logprobs",
        ),
    ],
)
def test_bad_openai_input_is_400_naming_the_field(client, path, body, needle):
    response = client.post(path, json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert needle in error["message"]
    assert error["type"] == "invalid_request_error"


def test_invalid_json_is_400(client):
    response = client.post(
        "/v1/chat/completions", content=b"{nope", headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert "not valid JSON" in response.json()["error"]["message"]


def test_unknown_model_is_404_openai_style(client):
    response = client.post("/v1/completions", json={"prompt": "x", "model": "gpt-9"})
    assert response.status_code == 404
    assert "gpt-9" in response.json()["error"]["message"]


def test_unknown_route_is_a_json_404(client):
    response = client.get("/v1/nothing")
    assert response.status_code == 404
    assert response.json()["error"]["type"] == "not_found_error"
