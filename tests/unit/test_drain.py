"""The drain and watchdog policy (runtime/drain.py) over the fake processor, on one event loop:
requests in flight at SIGTERM finish, new work gets 503, the grace period's end cuts the rest
short with a final error, and a dead engine fails what is in flight and exits 1."""

from __future__ import annotations

import asyncio
import json

import httpx

from processors.custom_processor import CustomProcessor
from processors.settings import CustomSettings, EngineSettings
from runtime.app import RawApp, ServingParts
from runtime.config import load_config
from runtime.phase import Phase
from tests.unit.conftest import drain_controller, loaded, served_app
from tests.unit.fake_processor import FakeProcessor
from tests.unit.test_custom_processor import KINDS

STREAM = {"prompt": "x", "max_tokens": 30, "stream": True}


def events(response: httpx.Response) -> list[dict]:
    return [json.loads(e[6:]) for e in response.text.split("\n\n") if e.startswith("data: {")]


async def until(condition, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)  # polling a condition with a deadline


def test_requests_in_flight_finish_and_new_ones_get_503(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.01)
    served = served_app(fake)
    drain, stops = drain_controller(served, grace_period=30)

    async def scenario():
        transport = httpx.ASGITransport(app=served.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            streams = [client.post("/v1/completions", json=STREAM) for _ in range(3)]
            whole = client.post("/", json={"prompt": "x", "max_new_tokens": 30})
            running = [asyncio.ensure_future(r) for r in [*streams, whole]]
            await until(lambda: len(fake.running) == 4)
            draining = asyncio.ensure_future(drain.drain("SIGTERM"))
            await until(lambda: served.parts.status.phase is Phase.DRAINING)
            late = await client.post("/v1/completions", json=STREAM)
            ready = await client.get("/ready")
            answers = await asyncio.gather(*running)
            await draining
            return answers, late, ready

    answers, late, ready = asyncio.run(scenario())
    for response in answers[:3]:
        assert events(response)[-1]["choices"][0]["finish_reason"] == "length"
        assert events(response)[-1]["usage"]["completion_tokens"] == 30
    assert answers[3].json()["usage"]["completion_tokens"] == 30
    assert late.status_code == 503
    assert "shutting down" in late.json()["error"]["message"]
    assert late.headers["retry-after"] == "5"
    assert ready.status_code == 503
    assert ready.json()["phase"] == "draining"
    assert stops == [0]
    assert not fake.aborted


def test_when_the_grace_period_ends_the_rest_get_a_final_error(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)  # 2 s unless cut short
    served = served_app(fake)
    drain, stops = drain_controller(served, grace_period=0.2)

    async def scenario():
        transport = httpx.ASGITransport(app=served.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            stream = asyncio.ensure_future(
                client.post("/v1/completions", json={**STREAM, "max_tokens": 40})
            )
            whole = asyncio.ensure_future(client.post("/", json={"prompt": "x"}))
            await until(lambda: len(fake.running) == 2)
            await drain.drain("SIGTERM")
            return await stream, await whole

    stream, whole = asyncio.run(scenario())
    last = events(stream)[-1]
    assert last["error"]["code"] == 503
    assert "drain period of 0.2 s ended" in last["error_info"]["message"]
    assert last["usage"]["completion_tokens"] < 40
    assert stream.text.endswith("data: [DONE]\n\n")  # still a well-formed stream
    assert whole.status_code == 503
    assert "drain period" in whole.json()["error"]["message"]
    assert stops == [0]
    assert len(fake.aborted) == 2


def test_a_dead_engine_fails_what_is_in_flight_and_exits_1(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)
    served = served_app(fake)
    drain, stops = drain_controller(served)
    dead = asyncio.Event()

    async def check_health():
        if dead.is_set():
            raise RuntimeError("engine core exited")

    async def scenario():
        transport = httpx.ASGITransport(app=served.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            watchdog = asyncio.ensure_future(drain.watch(check_health, interval=0.01))
            stream = asyncio.ensure_future(
                client.post("/v1/completions", json={**STREAM, "max_tokens": 40})
            )
            await until(lambda: fake.running)
            dead.set()
            await watchdog
            return await stream, await client.get("/health")

    stream, health = asyncio.run(scenario())
    # A final error chunk, or an error answer if it came before the first token.
    assert '"type":"engine_dead"' in stream.text
    assert served.parts.status.phase is Phase.FAILED
    assert stops == [1]
    assert health.status_code == 503


def test_a_raw_processor_call_past_the_grace_period_gets_503(tmp_path):
    config = load_config({"processor_entry": str(KINDS), "processor_mainclass": "Sleeper"}, {})
    processor = CustomProcessor(EngineSettings(), CustomSettings(str(KINDS), mainclass="Sleeper"))
    # The user's thread is released at the end, so no thread outlives the test.
    served, _ = loaded(RawApp(ServingParts.for_config(config), processor))
    drain, stops = drain_controller(served, grace_period=0.2)

    async def scenario():
        transport = httpx.ASGITransport(app=served.asgi)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            held = asyncio.ensure_future(client.post("/", content=b"30"))  # sleeps 30 s
            await until(lambda: served.parts.admission.num_in_flight == 1)
            await drain.drain("SIGTERM")
            return await held

    held = asyncio.run(scenario())
    processor._user.release.set()  # type: ignore[union-attr]  # let the user's thread end
    assert held.status_code == 503
    assert "drain period of 0.2 s ended" in held.text
    assert stops == [0]
