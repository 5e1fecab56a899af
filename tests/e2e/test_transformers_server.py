"""Every API and lifecycle behaviour, unchanged, on our own transformers/torch engine.

The client tests written for the vLLM server are collected here a second time (the star imports
below): this module's `server` fixture hands them the transformers server instead, so the same
assertions hold for both processors.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.e2e.conftest import held, server_processes
from tests.e2e.test_openai_clients import *  # noqa: F403
from tests.e2e.test_platform_clients import *  # noqa: F403
from tests.e2e.test_reliability import (
    DEADLINE_S,
    chatllm_stream,
    completion_stream,
    engine_load,
    in_flight,
    sigterm_then_refused,
    started_streams,
    test_clients_that_leave_free_the_engine_at_once,  # noqa: F401
    wait_for,
)
from tests.e2e.test_websocket_chat import *  # noqa: F403


@pytest.fixture(scope="module")
def server(transformers_server):
    return transformers_server


@pytest.fixture(scope="module")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)


def test_the_transformers_processor_serves(server):
    info = requests.get(f"{server.url}/info", headers=server.headers(), timeout=10).json()
    assert info["processor"] == "transformers"
    assert info["model"]["dtype"] == "float32"  # auto on the CPU


def test_sigterm_drains_streams_to_completion(launch):
    server = launch("--processor", "transformers", "--grace-period", "90")
    kinds = [completion_stream] * 8 + [chatllm_stream] * 4
    max_tokens = 400
    release = threading.Event()  # held in flight by their bodies until the signal
    with ThreadPoolExecutor(len(kinds)) as pool:
        futures = [pool.submit(kind, server, max_tokens, release) for kind in kinds]
        wait_for(lambda: in_flight(server) == len(kinds), 60, "all requests in flight")
        sigterm_then_refused(server)
        release.set()
        results = [future.result(timeout=DEADLINE_S) for future in futures]
    assert [(r["status"], r["error"], r["tokens"]) for r in results] == [
        (200, None, max_tokens)
    ] * len(kinds)
    assert server.process.wait(timeout=60) == 0


def test_a_request_past_its_timeout_is_408_and_leaves_the_engine(launch):
    """Our engine can answer 2000 tokens of the demo model within the timeout (a clean-clone
    run did), so once the request runs the server is held (SIGSTOP) until its deadline is past."""
    timeout_s = 1.5
    server = launch("--processor", "transformers", "--request-timeout", str(timeout_s))
    body = {"prompt": "x", "max_tokens": 2000, "ignore_eos": True}
    with ThreadPoolExecutor(1) as client:
        started = time.monotonic()
        answer = client.submit(
            requests.post,
            f"{server.url}/v1/completions",
            headers=server.headers(),
            json=body,
            timeout=DEADLINE_S,
        )
        wait_for(lambda: engine_load(server)[0] == 1, 30, "the request to run")
        with held(server_processes(server)):
            time.sleep(max(0.0, started + timeout_s + 0.5 - time.monotonic()))  # the deadline
        response = answer.result(timeout=DEADLINE_S)
    assert response.status_code == 408, response.text
    assert f"request timeout of {timeout_s} s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10
    wait_for(lambda: engine_load(server) == (0, 0), 10, "the engine to be idle")


def test_when_the_grace_period_ends_streams_get_a_final_error(launch):
    server = launch("--processor", "transformers", "--grace-period", "1")
    with ThreadPoolExecutor(4) as pool:
        futures = started_streams(server, 4, 2000, pool)  # many seconds of work left
        server.process.send_signal(signal.SIGTERM)
        results = [future.result(timeout=DEADLINE_S) for future in futures]
    assert server.process.wait(timeout=60) == 0
    for result in results:
        assert result["tokens"] < 2000
        assert result["done"]
        assert "drain period of 1 s ended" in result["error"]["message"]
