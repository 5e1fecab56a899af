"""A bounded fuzz run over the app's own OpenAPI schema: whatever a client sends, never a 5xx.

The processor is the fake one, so every generated case is answered in milliseconds; what is
fuzzed is the HTTP layer, where a user's mistake could turn into a server error. Each
inference route gets inputs valid by the schema and inputs that break it.
"""

from __future__ import annotations

import json
from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.unit.conftest import TOKEN, make_client
from tests.unit.fake_processor import FakeProcessor

EXAMPLES_PER_OPERATION = 60
AUTH = {"Authorization": TOKEN}
JSON = {**AUTH, "content-type": "application/json"}


def fuzz(operation, mode: GenerationMode, seen: Counter) -> None:
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        derandomize=True,  # the same cases on every run, so a failure reproduces
        database=None,
    )
    def check(case):
        seen[f"{operation.label} ({mode.value})"] += 1
        response = case.call(headers=AUTH)
        assert response.status_code < 500, (case.path, case.body, response.text)

    check()


# Client mistakes a probe found answered 500 before they were checked: values past what the
# processor accepts (the schema allows them), an empty stop string, a seed beyond 64 bits, a
# lone surrogate (valid JSON, not text).
MISSED = [
    {"temperature": 5.0},
    {"temperature": 99.5, "stream": True},
    {"stop": ""},
    {"stop": ["", "x"]},
    {"seed": 2**64},
    {"seed": -(2**70), "stream": True},
]
SURROGATE = "\ud800"


def missed_cases() -> list[tuple[str, dict]]:
    cases = []
    for extra in MISSED:
        cases.append(("/v1/completions", {"prompt": "x", "max_tokens": 2, **extra}))
        chat = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 2}
        cases.append(("/v1/chat/completions", {**chat, **extra}))
        cases.append(("/", {"prompt": "x", "max_new_tokens": 2, **extra}))
    cases.append(("/v1/completions", {"prompt": SURROGATE}))
    cases.append(("/v1/completions", {"prompt": ["ok", SURROGATE]}))
    cases.append(("/v1/chat/completions", {"messages": [{"role": "user", "content": SURROGATE}]}))
    return cases


def test_the_cases_a_probe_found_are_400_or_served_never_500(demo_tokenizer):
    client = make_client(FakeProcessor(demo_tokenizer), token=TOKEN)
    for path, body in missed_cases():
        response = client.post(path, content=json.dumps(body), headers=JSON)
        assert response.status_code in (200, 400), (path, body, response.text)
        if response.status_code == 200 and body.get("stream"):
            assert '"error"' not in response.text, (path, body, response.text)
    empty_stop = client.post(
        "/v1/completions", json={"prompt": "x", "max_tokens": 2, "stop": ""}, headers=AUTH
    )
    assert empty_stop.status_code == 200  # an empty stop string stops nothing
    too_hot = client.post("/", json={"prompt": "x", "temperature": 5}, headers=AUTH)
    assert too_hot.status_code == 400
    assert "temperature must be in [0, 2]" in too_hot.json()["error"]["message"]
    lone = client.post(
        "/v1/completions", content=json.dumps({"prompt": SURROGATE}), headers=JSON
    ).json()["error"]["message"]
    assert "prompt: the text holds a lone surrogate (\\ud800)" in lone


def test_no_input_makes_the_server_fail(demo_tokenizer):
    client = make_client(FakeProcessor(demo_tokenizer), token=TOKEN, service_name="fuzz")
    schema = schemathesis.openapi.from_asgi("/openapi.json", client.app, headers=AUTH)
    seen: Counter = Counter()
    for result in schema.get_all_operations():
        operation = result.ok()
        fuzz(operation, GenerationMode.POSITIVE, seen)
        if operation.method.upper() == "POST":  # only bodies can be broken
            fuzz(operation, GenerationMode.NEGATIVE, seen)
    print(f"\nfuzzed {sum(seen.values())} cases: {dict(seen)}")
    assert sum(label.startswith("POST") for label in seen) == 12  # 6 routes, 2 modes
