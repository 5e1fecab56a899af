"""What `vllm serve` clients send beyond plain chat, over the fake processor: tool calls (named,
required, auto through vLLM's hermes parser in awkward chunks), structured outputs, reasoning,
/tokenize and /detokenize, and fields refused by name rather than ignored."""

from __future__ import annotations

import json

import pytest

from processors.base import StructuredOutput
from tests.unit.conftest import make_client

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]


def chat(client, **body):
    return client.post("/v1/chat/completions", json={"messages": ASK, "max_tokens": 40, **body})


def stream_events(response) -> list[dict]:
    lines = [line[6:] for line in response.text.split("\n\n") if line.startswith("data: {")]
    return [json.loads(line) for line in lines]


def accumulated_calls(events: list[dict]) -> list[dict]:
    """Tool-call deltas put together as the OpenAI SDK does: by index, arguments appended."""
    calls: dict[int, dict] = {}
    for event in events:
        for choice in event.get("choices", []):
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
                function = delta.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
    return [calls[i] for i in sorted(calls)]


def test_a_named_tool_constrains_the_output_and_comes_back_as_its_call(fake):
    client = make_client(fake)
    fake.reply = '{"city": "Paris"}'
    choice = {"type": "function", "function": {"name": "get_weather"}}
    answer = chat(client, tools=[WEATHER], tool_choice=choice).json()["choices"][0]
    (call,) = answer["message"]["tool_calls"]
    assert call["function"] == {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    assert call["id"].startswith("chatcmpl-tool-")
    assert answer["message"]["content"] is None
    assert answer["finish_reason"] == "stop"  # named: the engine's reason, as OpenAI has it
    constraint = fake.requests[-1].sampling.structured
    assert constraint == StructuredOutput(json_schema=WEATHER["function"]["parameters"])
    events = stream_events(chat(client, tools=[WEATHER], tool_choice=choice, stream=True))
    assert accumulated_calls(events) == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_required_tools_are_a_json_list_read_back_into_calls(fake):
    client = make_client(fake)
    fake.reply = '[{"name": "get_weather", "parameters": {"city": "Paris"}}]'
    body = {"tools": [WEATHER, TIME], "tool_choice": "required"}
    answer = chat(client, **body).json()["choices"][0]
    (call,) = answer["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert answer["finish_reason"] == "tool_calls"
    schema = fake.requests[-1].sampling.structured.json_schema
    assert schema["type"] == "array"
    assert schema["minItems"] == 1
    names = [item["properties"]["name"]["enum"] for item in schema["items"]["anyOf"]]
    assert names == [["get_weather"], ["get_time"]]
    events = stream_events(chat(client, **body, stream=True))
    assert accumulated_calls(events) == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"
    chat(client, **body, parallel_tool_calls=False)
    assert fake.requests[-1].sampling.structured.json_schema["maxItems"] == 1


@pytest.mark.parametrize("chunk", [1, 2, 5, 7, 1000])
def test_auto_tool_calls_are_read_by_vllms_hermes_parser_in_any_chunking(demo_tokenizer, chunk):
    pytest.importorskip("vllm")
    from tests.unit.fake_processor import FakeProcessor

    fake = FakeProcessor(demo_tokenizer, max_model_len=512)
    client = make_client(fake, enable_auto_tool_choice=True, tool_call_parser="hermes")
    fake.chunk = chunk
    call = {"name": "get_weather", "arguments": {"city": "Paris"}}
    fake.reply = f"Let me see. <tool_call>\n{json.dumps(call)}\n</tool_call>"
    whole = chat(client, tools=[WEATHER]).json()["choices"][0]
    (call,) = whole["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert whole["message"]["content"].strip() == "Let me see."
    assert whole["finish_reason"] == "tool_calls"
    events = stream_events(chat(client, tools=[WEATHER], stream=True))
    (streamed,) = accumulated_calls(events)
    assert streamed["name"] == "get_weather"
    assert json.loads(streamed["arguments"]) == {"city": "Paris"}
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text.strip() == "Let me see."
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_auto_tools_without_a_parser_are_refused_as_vllm_does(fake):
    response = chat(make_client(fake), tools=[WEATHER])
    assert response.status_code == 400
    assert "--enable-auto-tool-choice and --tool-call-parser" in response.text
    named_elsewhere = {"type": "function", "function": {"name": "nope"}}
    response = chat(make_client(fake), tools=[WEATHER], tool_choice=named_elsewhere)
    assert response.status_code == 400
    assert "'nope', which is not among the tools" in response.text


def test_a_tool_conversation_reaches_the_template(fake):
    client = make_client(fake)
    call = {
        "id": "call-1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        *ASK,
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call-1", "content": "sunny, 21 C"},
    ]
    response = client.post(
        "/v1/chat/completions",
        json={"messages": messages, "tools": [WEATHER], "tool_choice": "none", "max_tokens": 2},
    )
    assert response.status_code == 200, response.text
    prompt = fake.info.tokenizer.decode(fake.requests[-1].prompt_token_ids)
    assert "sunny, 21 C" in prompt


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": "object"}},
                }
            },
            StructuredOutput(json_schema={"type": "object"}),
        ),
        ({"response_format": {"type": "json_object"}}, StructuredOutput(json_object=True)),
        ({"response_format": {"type": "text"}}, None),
        ({"structured_outputs": {"regex": "[0-9]+"}}, StructuredOutput(regex="[0-9]+")),
        ({"structured_outputs": {"choice": ["yes", "no"]}}, StructuredOutput(choice=("yes", "no"))),
        (
            {"structured_outputs": {"grammar": 'root ::= "a"'}},
            StructuredOutput(grammar='root ::= "a"'),
        ),
    ],
)
def test_structured_outputs_reach_the_processor_on_both_apis(fake, body, expected):
    client = make_client(fake)
    assert chat(client, **body).status_code == 200
    assert fake.requests[-1].sampling.structured == expected
    completion = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 2, **body})
    assert completion.status_code == 200
    assert fake.requests[-1].sampling.structured == expected


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "exactly one of json, regex"),
        (
            {"structured_outputs": {"regex": "a"}, "response_format": {"type": "json_object"}},
            "send one of them",
        ),
        ({"response_format": {"type": "json_schema"}}, "needs its json_schema"),
        ({"logit_bias": {"50": -100}}, "logit_bias: is not supported by this runtime"),
        ({"use_beam_search": True}, "beam search is not supported"),
        ({"min_tokens": 5}, "min_tokens: is not supported"),
        ({"frobnicate": 1}, "frobnicate is not a field this API takes"),
        ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages.0.extra"),
        (
            {
                "messages": [
                    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
                ]
            },
            "only text parts",
        ),
    ],
)
def test_fields_the_runtime_does_not_honour_are_400_naming_them(fake, body, needle):
    response = chat(make_client(fake), **body)
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]
    assert not fake.requests  # nothing reached the engine


def test_noise_clients_send_with_its_default_is_accepted(fake):
    noise = {"user": "u-1", "metadata": {"a": "b"}, "store": False, "logit_bias": None}
    assert chat(make_client(fake), **noise).status_code == 200


def test_tokenize_and_detokenize_have_vllms_shapes(fake, demo_tokenizer):
    client = make_client(fake)
    plain = client.post("/tokenize", json={"prompt": "Hello there"}).json()
    assert plain["tokens"] == demo_tokenizer.encode("Hello there")
    assert (plain["count"], plain["max_model_len"], plain["token_strs"]) == (
        len(plain["tokens"]),
        64,
        None,
    )
    messages = client.post("/tokenize", json={"messages": ASK, "return_token_strs": True}).json()
    rendered = demo_tokenizer.apply_chat_template(ASK, tokenize=False, add_generation_prompt=True)
    assert messages["tokens"] == demo_tokenizer.encode(rendered, add_special_tokens=False)
    assert len(messages["token_strs"]) == messages["count"]
    back = client.post("/detokenize", json={"tokens": plain["tokens"]}).json()
    assert back == {"prompt": demo_tokenizer.decode(plain["tokens"])}
    bad = client.post("/detokenize", json={"tokens": [10**9]})
    assert bad.status_code == 400
    assert "outside the vocabulary" in bad.text


def test_chat_template_kwargs_and_continuing_the_last_message_reach_the_template(fake):
    client = make_client(fake)
    partial = [*ASK, {"role": "assistant", "content": "It is"}]
    body = {"messages": partial, "max_tokens": 2, "add_generation_prompt": False}
    response = client.post(
        "/v1/chat/completions", json={**body, "continue_final_message": True, "echo": True}
    )
    assert response.status_code == 200, response.text
    prompt = fake.info.tokenizer.decode(fake.requests[-1].prompt_token_ids)
    assert prompt.endswith("It is")  # continued, not closed with an end of turn
    assert response.json()["choices"][0]["message"]["content"].startswith("It is")
    both = client.post(
        "/v1/chat/completions",
        json={**body, "add_generation_prompt": True, "continue_final_message": True},
    )
    assert both.status_code == 400
