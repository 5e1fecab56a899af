from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from runtime.app import build_app
from runtime.config import load_config
from runtime.state import ServingState
from tests.unit.fake_processor import FakeProcessor

TOKEN = "unit-test-token"


@pytest.fixture
def fake(demo_tokenizer) -> FakeProcessor:
    return FakeProcessor(demo_tokenizer)


def make_client(processor, **settings) -> TestClient:
    config = load_config(settings, environ={})
    state = ServingState(config, processor)
    asyncio.run(state.start())
    return TestClient(build_app(state), raise_server_exceptions=False)


@pytest.fixture
def client(fake) -> TestClient:
    return make_client(fake, service_name="demo")


@pytest.fixture
def auth_client(fake) -> TestClient:
    return make_client(fake, token=TOKEN)


def post_then_leave(app, path: str, body: dict, leave_when: Callable[[list[bytes]], bool]) -> None:
    """POST `body` straight to the ASGI app from a client that disconnects once
    `leave_when(body chunks received so far)` holds."""
    messages = iter([{"type": "http.request", "body": json.dumps(body).encode()}])
    received: list[bytes] = []

    async def receive():
        message = next(messages, None)
        if message is not None:
            return message
        while not leave_when(received):
            await asyncio.sleep(0.01)
        return {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.body":
            received.append(message.get("body", b""))

    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "http_version": "1.1",
        "client": ("10.1.2.3", 4567),
    }
    asyncio.run(app(scope, receive, send))
