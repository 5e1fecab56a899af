"""A bounded fuzz run over the app's own OpenAPI schema: whatever a client sends, never a 5xx.

The processor is the fake one, so every generated case is answered in milliseconds; what is
fuzzed is the HTTP layer, where a user's mistake could turn into a server error. Each
inference route gets inputs valid by the schema and inputs that break it.
"""

from __future__ import annotations

from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode

from tests.unit.conftest import TOKEN, make_client
from tests.unit.fake_processor import FakeProcessor

EXAMPLES_PER_OPERATION = 60
AUTH = {"Authorization": TOKEN}


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
    assert sum(label.startswith("POST") for label in seen) == 8
