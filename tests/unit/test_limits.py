"""Admission (503 / 429), body limit (413), request timeout (408), aborts and probes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from runtime.errors import ApiError, ErrorKind
from runtime.phase import Phase
from tests.unit.conftest import make_client, post_scope, post_then_leave, served_app
from tests.unit.fake_processor import FakeProcessor


def started_app(processor, **settings):
    served = served_app(processor, **settings)
    return served, served.asgi


async def post_all(app, requests):
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await asyncio.gather(*(client.post(path, json=body) for path, body in requests))


def test_requests_beyond_running_plus_queue_get_429_at_once(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.01)  # runs 4 at once
    served, app = started_app(fake, max_queue_size=2)
    body = {"prompt": "x", "max_new_tokens": 20}
    responses = asyncio.run(post_all(app, [("/", body)] * 10))
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * 6 + [429] * 4
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers["retry-after"] == "1"
    assert "limit of 6 requests" in rejected.json()["error"]["message"]
    assert served.parts.admission.num_in_flight == 0


def test_auto_stream_interval_lets_two_tokens_share_a_step_once_the_server_is_busy(
    demo_tokenizer,
):
    from runtime.generation import BUSY_RUNNING

    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)  # none ends before all have started
    _, app = started_app(fake, stream_interval="auto")
    body = {"prompt": "x", "max_new_tokens": 5}
    responses = asyncio.run(post_all(app, [("/", body)] * (BUSY_RUNNING + 8)))
    assert [r.status_code for r in responses] == [200] * (BUSY_RUNNING + 8)
    intervals = [request.stream_interval for request in fake.requests]
    assert intervals == [1] * BUSY_RUNNING + [2] * 8

    fixed = FakeProcessor(demo_tokenizer)
    _, app = started_app(fixed, stream_interval="3")
    asyncio.run(post_all(app, [("/v1/completions", {"prompt": "x", "max_tokens": 5})]))
    assert [request.stream_interval for request in fixed.requests] == [3]


def test_draining_refuses_new_requests_with_503_and_readiness_says_so(fake):
    client = make_client(fake)
    client.served.parts.status.phase = Phase.DRAINING
    response = client.post("/", json={"prompt": "x"})
    assert response.status_code == 503
    assert "shutting down" in response.json()["error"]["message"]
    assert client.get("/ready").json()["phase"] == "draining"
    assert client.get("/health").status_code == 200


def test_body_over_the_limit_is_413_before_parsing(fake):
    client = make_client(fake, max_body_bytes=100)
    response = client.post("/v1/completions", content=b"x" * 101)
    assert response.status_code == 413
    assert "101 bytes, over the limit of 100" in response.json()["error"]["message"]

    def chunks():  # no Content-Length: counted as it arrives
        yield b'{"prompt": "'
        yield b"y" * 200
        yield b'"}'

    response = client.post("/", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert client.post("/", json={"prompt": "ok", "max_new_tokens": 1}).status_code == 200


def test_request_timeout_is_408_and_an_error_chunk_once_streaming(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.02)
    client = make_client(fake, request_timeout=0.2)
    response = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 50})
    assert response.status_code == 408
    assert "request timeout of 0.2 s" in response.json()["error"]["message"]
    assert fake.aborted  # the engine was told
    stream = client.post("/v1/completions", json={"prompt": "x", "max_tokens": 50, "stream": True})
    events = [json.loads(e[6:]) for e in stream.text.split("\n\n") if e.startswith("data: {")]
    assert events[0]["choices"][0]["text"] == "w0 "
    assert events[-1]["error"]["code"] == 408
    assert events[-1]["error_info"]["code"] == 408
    assert stream.text.endswith("data: [DONE]\n\n")


def test_abort_all_ends_every_stream_with_the_reason(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.01)
    served, app = started_app(fake)

    async def scenario():
        reason = ApiError(ErrorKind.UNAVAILABLE, "shutting down")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            body = {"prompt": "x", "max_new_tokens": 40, "use_stream_chat": True}
            requests = [asyncio.create_task(client.post("/", json=body)) for _ in range(3)]
            while served.runner.num_running < 3:
                await asyncio.sleep(0.01)
            assert served.runner.abort_all(reason) == 3
            return await asyncio.gather(*requests)

    for response in asyncio.run(scenario()):
        records = [json.loads(r) for r in response.content.split(b"\0") if r]
        assert records[-1] == {
            "error": {"message": "shutting down", "type": "service_unavailable", "code": 503}
        }
        assert all("response" in record for record in records[:-1])  # progress, then the error


def test_auth_health_protects_the_probes_too(fake):
    client = make_client(fake, token="t0k", auth_health=True)
    assert client.get("/health").status_code == 401
    assert client.get("/health", headers={"Authorization": "t0k"}).status_code == 200
    open_client = make_client(fake, token="t0k")
    assert open_client.get("/ready").status_code == 200


def test_renamed_probe_paths_answer_alongside_the_defaults(fake):
    client = make_client(fake, readiness_path="/eas/ready", liveness_path="/eas/live", token="k")
    assert client.get("/eas/ready").json() == {"status": "ready"}
    assert client.get("/eas/live").json()["status"] == "alive"
    assert client.get("/ready").status_code == 200


def test_liveness_reports_engine_load_and_death(fake):
    client = make_client(fake)
    with client.served.parts.admission.admitted():
        body = client.get("/health").json()
    assert (body["num_in_flight"], body["num_running"], body["num_waiting"]) == (1, 0, 0)

    async def dead():
        raise RuntimeError("engine core exited")

    fake.check_health = dead
    response = client.get("/health")
    assert response.status_code == 503
    assert "engine core exited" in response.json()["reason"]


@pytest.mark.parametrize("path", ["/", "/v1/completions"])
def test_client_disconnect_aborts_a_non_streaming_request(demo_tokenizer, path):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)
    served, app = started_app(fake)
    length = "max_new_tokens" if path == "/" else "max_tokens"
    body = {"prompt": "x", length: 40}  # 2 s unless aborted

    # leave once generation is under way
    post_then_leave(app, path, body, lambda _: served.runner.num_running > 0)
    assert len(fake.aborted) == 1
    assert not fake.running
    assert served.parts.admission.num_in_flight == 0


def test_the_bound_counts_engine_requests_not_http_requests(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)  # runs 4 at once; bound 4 + 2 = 6
    served, app = started_app(fake, max_queue_size=2)
    many = {"prompt": [[1, 2, 3]] * 3, "n": 2, "max_tokens": 20}  # 6 engine requests

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            heavy = asyncio.ensure_future(client.post("/v1/completions", json=many))
            while len(fake.running) < 4:
                await asyncio.sleep(0.01)
            health = (await client.get("/health")).json()
            small = await client.post("/v1/completions", json={"prompt": "x", "max_tokens": 4})
            chatllm = await client.post("/", json={"prompt": "x", "max_new_tokens": 4})
            return await heavy, health, small, chatllm

    heavy, health, small, chatllm = asyncio.run(scenario())
    assert heavy.status_code == 200
    assert len(heavy.json()["choices"]) == 6
    assert (health["num_in_flight"], health["num_engine_requests"]) == (1, 6)
    for refused in (small, chatllm):  # refused at once, not queued behind the 6
        assert refused.status_code == 429
        assert "limit of 6 requests" in refused.json()["error"]["message"]
    assert served.parts.admission.num_engine_requests == 0


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"prompt": [[1, 2, 3]] * 1000, "n": 16, "max_tokens": 1},
            "1000 prompts in one request; this server takes at most 256 (max_prompts_per_request)",
        ),
        (
            {"prompt": [[1, 2, 3]] * 20, "n": 16, "max_tokens": 1},
            "n: 20 prompts x n 16 = 320 completions in one request; this server makes at most "
            "256 (max_choices_per_request)",
        ),
        (
            {"prompt": [[1, 2, 3]] * 4, "n": 2, "max_tokens": 1},
            "asks for 8 completions at once (prompts x n), more than this server runs and "
            "queues together (6)",
        ),
    ],
)
def test_requests_asking_for_more_than_allowed_are_400_naming_the_limit(fake, body, needle):
    _, app = started_app(fake, max_queue_size=2)
    response = asyncio.run(post_all(app, [("/v1/completions", body)]))[0]
    assert response.status_code == 400
    assert needle in response.json()["error"]["message"]
    assert not fake.requests  # nothing reached the engine


def test_a_client_that_leaves_while_sending_is_499_in_metrics_and_call_log(fake, tmp_path, caplog):
    caplog.set_level("INFO")
    calls = tmp_path / "calls.jsonl"
    served, app = started_app(fake, call_log=str(calls))
    messages = iter(
        [
            {"type": "http.request", "body": b'{"prompt": ', "more_body": True},
            {"type": "http.disconnect"},
        ]
    )

    async def receive():
        return next(messages)

    async def send(message):
        pass

    scope = post_scope("/")
    asyncio.run(app(scope, receive, send))
    served.parts.call_log.close()
    (record,) = [json.loads(line) for line in calls.read_text().splitlines()]
    assert record["status"] == 499
    metrics = served.parts.metrics.render(None, 0, False).decode()
    assert 'llm_runtime_http_requests_total{method="POST",route="/",status="499"} 1.0' in metrics
    logged = [r for r in caplog.records if r.name.startswith("runtime")]
    assert [r.levelname for r in logged if "left before" in r.getMessage()] == ["INFO"]
    assert not [r for r in caplog.records if r.levelname == "ERROR"]


def test_a_body_that_stops_arriving_is_408(fake):
    _, app = started_app(fake, request_read_timeout=0.2)
    sent: list[dict] = []
    first = {"type": "http.request", "body": b'{"prompt": ', "more_body": True}

    async def receive():
        if first in sent:
            await asyncio.sleep(30)  # the rest never comes
        sent.append(first)
        return first

    async def send(message):
        sent.append(message)

    scope = post_scope("/v1/completions")
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 5))
    start = next(m for m in sent if m.get("type") == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m.get("type") == "http.response.body")
    assert start["status"] == 408
    assert "did not arrive within 0.2 s" in json.loads(body)["error"]["message"]
