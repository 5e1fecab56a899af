from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from runtime.app import LlmApp, ServingParts
from runtime.config import load_config
from runtime.model_source import ModelSource
from runtime.phase import Phase
from tests.unit.fake_processor import FakeProcessor

TOKEN = "unit-test-token"


@pytest.fixture
def fake(demo_tokenizer) -> FakeProcessor:
    return FakeProcessor(demo_tokenizer)


def loaded(served, phase: Phase = Phase.READY):
    """`served` loaded, in `phase`, as the lifecycle leaves an app; and its service."""
    if served.parts.call_log is not None:
        served.parts.call_log.open()
    service = asyncio.run(served.load())
    served.parts.admission.open(service, served.processor.info.max_concurrency)
    served.parts.status.phase = phase
    return served, service


def served_app(processor, ready: bool = True, **settings) -> LlmApp:
    """The LLM app over `processor`; loaded and ready unless `ready` is false (then it is as
    the lifecycle starts it: nothing loaded yet)."""
    config = load_config(settings, environ={})
    served = LlmApp(ServingParts.for_config(config), processor, ModelSource(config.engine, "fake"))
    return loaded(served)[0] if ready else served


def drain_controller(served, grace_period: float = 30.0):
    """The lifecycle's drain policy over `served`; the exit codes it stopped the server with."""
    from runtime.drain import DrainController

    stops: list[int] = []
    parts = served.parts
    drain = DrainController(
        parts.status, parts.admission, served.abort_all, stops.append, grace_period
    )
    return drain, stops


class ServedClient(TestClient):
    """A test client of a served app; `served` gives the parts tests look into."""

    def __init__(self, served) -> None:
        super().__init__(served.asgi, raise_server_exceptions=False)
        self.served = served


def make_client(processor, **settings) -> ServedClient:
    return ServedClient(served_app(processor, **settings))


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

    asyncio.run(app(post_scope(path), receive, send))


def post_scope(path: str) -> dict:
    """The ASGI scope of a JSON POST from client 10.1.2.3:4567, for tests that play the client
    message by message."""
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [(b"content-type", b"application/json")],
        "query_string": b"",
        "http_version": "1.1",
        "client": ("10.1.2.3", 4567),
    }
