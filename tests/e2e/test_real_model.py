"""The real-model tier: SmolLM2-135M-Instruct (the default model) served by a plain
`llm-runtime serve` started with a clean environment, spoken to by real clients.

The demo model's random weights cannot tell whether a chat template, an end-of-turn token or a
conversation reached the engine right; a real chat model can.
"""

from __future__ import annotations

import json
import os

import pytest
import requests

from tests.e2e.conftest import TOKEN, ask, free_port, spawn_server, stop

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def real_server(tmp_path_factory):
    """`llm-runtime serve` without --model and without any variable but PATH and HOME: what a
    user or an image runs. The converted model stays in the user's cache between runs."""
    port = free_port()
    env = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root")}
    if "PYTHONPATH" in os.environ:  # a checkout run from another folder: its code, not ours
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    server = spawn_server(
        tmp_path_factory.mktemp("real-model"), port, ["--port", str(port), "--token", TOKEN], env
    )
    print(f"\nSmolLM2 server ready in {server.seconds_to_ready:.1f} s")
    yield server
    assert stop(server.process) == 0


@pytest.fixture(scope="module")
def tokenizer(real_server):
    from transformers import AutoTokenizer

    info = requests.get(f"{real_server.url}/info", headers=real_server.headers(), timeout=10)
    return AutoTokenizer.from_pretrained(info.json()["model"]["path"])


@pytest.fixture(scope="module")
def client(real_server):
    import openai

    return openai.OpenAI(base_url=f"{real_server.url}/v1", api_key=TOKEN, max_retries=0)


def test_the_default_model_is_smollm2_with_a_kv_cache_sized_by_the_runtime(real_server, client):
    assert [model.id for model in client.models.list()] == ["SmolLM2-135M-Instruct"]
    log = real_server.log()
    assert "vLLM's CPU KV cache:" in log
    assert "VLLM_CPU_KVCACHE_SPACE (GiB)" in log


def test_a_greedy_answer_says_paris_and_ends_at_the_end_of_turn(client):
    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": QUESTION}],
        temperature=0,
        max_tokens=100,
    )
    choice = answer.choices[0]
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"  # <|im_end|>, long before max_tokens
    assert answer.usage.completion_tokens < 100


def test_every_api_gives_the_same_greedy_answer_to_the_same_conversation(real_server, client):
    chat = (
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=[{"role": "user", "content": QUESTION}],
            temperature=0,
            max_tokens=60,
        )
        .choices[0]
        .message.content
    )
    body = {"prompt": QUESTION, "do_sample": False, "max_new_tokens": 60}
    chatllm = requests.post(
        f"{real_server.url}/", json=body, headers=real_server.headers(), timeout=120
    ).json()["response"]
    ws = real_server.websocket()
    try:
        spoken = "".join(ask(ws, {**body, "use_stream_chat": True}))
    finally:
        ws.close()
    assert chat == chatllm == spoken
    assert "Paris" in chat


def test_chatllm_history_and_system_prompt_reach_the_engine_through_the_template(
    real_server, tokenizer
):
    system, history = "You are a terse geography teacher.", [["Capital of Japan?", "Tokyo."]]
    body = {
        "prompt": QUESTION,
        "system_prompt": system,
        "history": history,
        "do_sample": False,
        "max_new_tokens": 40,
    }
    answer = requests.post(
        f"{real_server.url}/", json=body, headers=real_server.headers(), timeout=120
    ).json()
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": history[0][0]},
        {"role": "assistant", "content": history[0][1]},
        {"role": "user", "content": QUESTION},
    ]
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    ids = list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids)
    # The template's token ids sent as they are: the engine must see the same prompt.
    direct = requests.post(
        f"{real_server.url}/v1/completions",
        json={"prompt": ids, "max_tokens": 40, "temperature": 0},
        headers=real_server.headers(),
        timeout=120,
    ).json()
    assert answer["usage"]["prompt_tokens"] == len(ids) == direct["usage"]["prompt_tokens"]
    assert answer["response"] == direct["choices"][0]["text"]
    assert answer["history"] == [*history, [QUESTION, answer["response"]]]


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city", "unit"],
            "additionalProperties": False,
        },
    },
}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather like in Paris?"}]


def test_a_named_tool_call_validates_against_its_schema_streamed_or_not(client):
    import jsonschema

    choice = {"type": "function", "function": {"name": "get_weather"}}
    whole = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=WEATHER_QUESTION,
        tools=[WEATHER],
        tool_choice=choice,
        temperature=0,
        max_tokens=60,
    )
    (call,) = whole.choices[0].message.tool_calls
    assert call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    jsonschema.validate(arguments, WEATHER["function"]["parameters"])
    streamed = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=WEATHER_QUESTION,
        tools=[WEATHER],
        tool_choice=choice,
        temperature=0,
        max_tokens=60,
        stream=True,
    )
    pieces = [c.choices[0].delta.tool_calls for c in streamed if c.choices]
    deltas = [delta for part in pieces if part for delta in part]
    assert deltas[0].function.name == "get_weather"
    assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments


def test_required_tool_calls_validate_and_a_tool_result_round_trips(client):
    import jsonschema

    answer = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=WEATHER_QUESTION,
        tools=[WEATHER],
        tool_choice="required",
        temperature=0,
        max_tokens=80,
    ).choices[0]
    assert answer.finish_reason == "tool_calls"
    assert answer.message.tool_calls
    for call in answer.message.tool_calls:
        assert call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), WEATHER["function"]["parameters"])
    call = answer.message.tool_calls[0]
    follow_up = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[
            *WEATHER_QUESTION,
            {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
            {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21}'},
        ],
        tools=[WEATHER],
        tool_choice="none",
        temperature=0,
        max_tokens=40,
    )
    assert follow_up.choices[0].message.content


def test_structured_outputs_hold_json_schema_choice_and_regex(client):
    from pydantic import BaseModel

    class City(BaseModel):
        name: str
        country: str

    parsed = client.chat.completions.parse(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Give me a city in France as JSON."}],
        response_format=City,
        temperature=0,
        max_tokens=60,
    )
    city = parsed.choices[0].message.parsed
    assert isinstance(city, City)
    assert city.name
    pick = client.chat.completions.create(
        model="SmolLM2-135M-Instruct",
        messages=[{"role": "user", "content": "Is Paris in France? Answer yes or no."}],
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
        temperature=0,
        max_tokens=5,
    )
    assert pick.choices[0].message.content in ("yes", "no")
    digits = client.completions.create(
        model="SmolLM2-135M-Instruct",
        prompt="The year the Eiffel Tower was built:",
        extra_body={"structured_outputs": {"regex": "[0-9]{4}"}},
        temperature=0,
        max_tokens=8,
    )
    assert len(digits.choices[0].text) == 4
    assert digits.choices[0].text.isdigit()


def test_a_schema_the_backend_cannot_compile_is_a_400(client):
    import openai

    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="SmolLM2-135M-Instruct",
            messages=WEATHER_QUESTION,
            extra_body={"structured_outputs": {"regex": "(unclosed"}},
            max_tokens=5,
        )
    assert "regex" in str(refused.value).lower()
