"""ChatLLM over HTTP with a fake processor: body forms, templates, streaming framing."""

from __future__ import annotations

import json

import pytest

from processors.base import ProcessorInputError


def nul_records(response) -> list[dict]:
    raw = response.content
    assert raw.endswith(b"\0")
    return [json.loads(part) for part in raw.split(b"\0")[:-1]]


def test_plain_text_body_is_the_prompt_and_gets_one_json_answer(client, fake):
    response = client.post("/", content=b"Hello there", headers={"content-type": "text/plain"})
    assert response.status_code == 200
    body = response.json()
    assert body["history"] == [["Hello there", body["response"]]]
    # max_new_tokens defaults to 2048, clamped to what the 64-token context leaves
    prompt_len = len(fake.requests[0].prompt_token_ids)
    assert body["usage"] == {
        "prompt_tokens": prompt_len,
        "completion_tokens": 64 - prompt_len,
        "total_tokens": 64,
    }


def test_json_body_builds_the_chat_template_from_system_and_history(client, fake, demo_tokenizer):
    request = {
        "prompt": "and now?",
        "system_prompt": "be brief",
        "history": [["hi", "hello"]],
        "max_new_tokens": 3,
    }
    response = client.post("/api/predict/demo", json=request)
    assert response.status_code == 200
    rendered = demo_tokenizer.decode(fake.requests[0].prompt_token_ids)
    assert rendered == (
        "<s><|im_start|>system\nbe brief<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
        "<|im_start|>assistant\nhello<|im_end|>\n<|im_start|>user\nand now?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    body = response.json()
    assert body["response"] == "w0 w1 w2 "
    assert body["history"] == [["hi", "hello"], ["and now?", "w0 w1 w2 "]]
    assert body["usage"]["completion_tokens"] == 3


def test_stream_is_nul_delimited_cumulative_json(client):
    response = client.post(
        "/", json={"prompt": "hi", "max_new_tokens": 3, "use_stream_chat": "true"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    records = nul_records(response)
    assert [r["response"] for r in records] == ["w0 ", "w0 w1 ", "w0 w1 w2 "]
    assert records[-1]["history"] == [["hi", "w0 w1 w2 "]]
    assert [r["usage"]["completion_tokens"] for r in records] == [1, 2, 3]


@pytest.mark.parametrize("flag", ["True", "false", True])
def test_use_stream_chat_accepts_bools_and_strings(client, flag):
    response = client.post("/", json={"prompt": "hi", "max_new_tokens": 2, "use_stream_chat": flag})
    streamed = response.content.endswith(b"\0")
    assert streamed == (str(flag).lower() == "true")


def test_stream_default_flag_streams_requests_without_the_field(fake):
    from tests.unit.conftest import make_client

    client = make_client(fake, chatllm_stream_default=True)
    response = client.post("/", json={"prompt": "hi", "max_new_tokens": 2})
    assert len(nul_records(response)) == 2


def test_input_ids_is_the_prompt_of_older_clients_and_unknown_fields_are_ignored(
    client, fake, demo_tokenizer
):
    response = client.post("/", json={"input_ids": "legacy", "max_new_tokens": 1, "foo": [1]})
    assert response.status_code == 200
    assert "user\nlegacy<|im_end|>" in demo_tokenizer.decode(fake.requests[0].prompt_token_ids)


def test_sampling_fields_map_onto_the_engine(client, fake):
    client.post(
        "/",
        json={
            "prompt": "x",
            "max_new_tokens": 1,
            "temperature": 0.5,
            "top_k": -1,
            "top_p": 0.9,
            "stop": "END",
        },
    )
    sampling = fake.requests[-1].sampling
    assert (sampling.temperature, sampling.top_k, sampling.top_p, sampling.stop) == (
        0.5,
        0,
        0.9,
        ("END",),
    )
    client.post(
        "/",
        json={"prompt": "x", "max_new_tokens": 1, "do_sample": False, "stop_sequences": ["a", "b"]},
    )
    sampling = fake.requests[-1].sampling
    assert (sampling.temperature, sampling.stop) == (0.0, ("a", "b"))
    client.post("/", json={"prompt": "x", "max_new_tokens": 1, "temperature": 0})
    assert fake.requests[-1].sampling.temperature == 0.0
    client.post("/", json={"prompt": "x", "max_new_tokens": 1})
    defaults = fake.requests[-1].sampling
    assert (defaults.temperature, defaults.top_k, defaults.top_p) == (0.95, 30, 0.8)


@pytest.mark.parametrize(
    ("body", "content_type", "field"),
    [
        (b'{"prompt": "x", "temperature": -1}', "application/json", "temperature"),
        (b'{"prompt": "x", "top_p": 0}', "application/json", "top_p"),
        (b'{"prompt": "x", "max_new_tokens": 0}', "application/json", "max_new_tokens"),
        (b'{"prompt": 5}', "application/json", "prompt"),
        (b'{"prompt": "x", "history": [["only one"]]}', "application/json", "history"),
        (b'{"prompt": "x", "max_new_tokens": 1000}', "application/json", "max_new_tokens"),
        (b'{"prompt": ', "application/json", "JSON"),
        (b"[1, 2]", "application/json", "object"),
    ],
)
def test_bad_input_is_400_naming_the_problem(client, body, content_type, field):
    response = client.post("/", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]


def test_prompt_longer_than_the_context_says_both_numbers(client):
    response = client.post("/", json={"prompt": "word " * 200})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert "64 tokens" in message
    assert "the prompt is" in message


def test_engine_rejection_before_streaming_is_a_400_not_a_broken_stream(client, fake):
    fake.fail_with = ProcessorInputError("token id 9999 is out of vocabulary")
    response = client.post("/", json={"prompt": "x", "use_stream_chat": True})
    assert response.status_code == 400
    assert "out of vocabulary" in response.json()["error"]["message"]


def test_unknown_service_name_is_404(client):
    assert client.post("/api/predict/other", json={"prompt": "x"}).status_code == 404
