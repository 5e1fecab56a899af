from __future__ import annotations

import asyncio

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
