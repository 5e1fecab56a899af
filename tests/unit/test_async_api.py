"""The asynchronous API (--async) over the fake processor: enqueue, sink, 450, drain, auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from processors.custom_processor import CustomProcessor
from processors.settings import CustomSettings, EngineSettings
from runtime.app import LlmApp, RawApp, ServingParts
from runtime.config import load_config
from runtime.errors import ApiError, ErrorKind
from runtime.model_source import ModelSource
from runtime.phase import Phase
from runtime.queue import open_queue
from tests.queue_protos import queue_messages
from tests.unit.conftest import TOKEN, ServedClient, drain_controller, loaded
from tests.unit.fake_processor import FakeProcessor

ROOT = Path(__file__).resolve().parents[2]
KINDS = ROOT / "tests/fixtures/processors/kinds.py"
SINK = "/api/predict/demo/sink"
ID_HEADER = "X-Eas-Queueservice-Request-Id"


def async_client(processor, tmp_path, **settings) -> ServedClient:
    """An --async app, ready, its queue open; no workers take items (see `working`)."""
    settings = {"service_name": "demo", "queue_path": str(tmp_path / "q.sqlite3"), **settings}
    config = load_config({"async": True, **settings}, environ={})
    parts = ServingParts.for_config(config)
    if isinstance(processor, CustomProcessor):
        served = RawApp(parts, processor)
    else:
        served = LlmApp(parts, processor, ModelSource(config.engine, "fake"))
    served, service = loaded(served)
    parts.queue.attach(asyncio.run(open_queue(config)))
    client = ServedClient(served)
    client.answer = served.answers(service)["/api/predict/demo"]
    return client


@contextlib.contextmanager
def working(client: ServedClient):
    """The queue's workers run on the client's loop while the block runs, as the lifecycle
    runs them once the service is ready; stopped after, as when the server has stopped."""
    parts = client.served.parts
    concurrency = client.served.processor.info.max_concurrency
    with client:
        client.portal.call(parts.queue.start, client.answer, parts.admission, concurrency)
        try:
            yield client
        finally:
            client.portal.call(parts.queue.stop)


def enqueue(client, body, path="/api/predict/demo", **kwargs) -> str:
    response = client.post(path, content=body, **kwargs)
    assert response.status_code == 200, response.text
    assert response.text.isdigit()  # the queue index
    return response.headers[ID_HEADER]


def wait_result(client, request_id, **kwargs) -> dict:
    """Poll the sink as clients do; each poll waits up to 5 s on the server for the result."""
    for _ in range(20):
        response = client.get(SINK, params={"requestId": request_id, "_timeout_": "5s"}, **kwargs)
        if response.status_code != 204:
            assert response.status_code == 200, response.text
            (frame,) = response.json()
            return frame
    raise AssertionError(f"no result for {request_id}")


def test_queued_chatllm_requests_get_the_synchronous_answer(fake, tmp_path):
    with working(async_client(fake, tmp_path)) as client:
        ids = [
            enqueue(
                client,
                json.dumps({"prompt": f"p{i}", "max_new_tokens": 3}).encode(),
                headers={"content-type": "application/json"},
            )
            for i in range(6)
        ]
        ids.append(enqueue(client, b"a plain-text prompt", path="/"))
        frames = [wait_result(client, request_id) for request_id in ids]
    for request_id, frame in zip(ids, frames, strict=True):
        assert frame["tags"]["requestId"] == request_id
        assert frame["tags"]["lastCode"] == "200"
    answers = [json.loads(base64.b64decode(frame["data"])) for frame in frames]
    assert [answer["response"] for answer in answers[:6]] == ["w0 w1 w2 "] * 6
    assert answers[6]["response"].startswith("w0 w1 ")  # plain text: up to the context's end
    assert json.loads(base64.b64decode(frames[0]["data"]))["history"] == [["p0", "w0 w1 w2 "]]
    assert len({frame["index"] for frame in frames}) == len(frames)  # the sink's own indexes


def test_a_bad_body_is_a_result_with_its_status_not_a_lost_item(fake, tmp_path):
    with working(async_client(fake, tmp_path)) as client:
        request_id = enqueue(
            client, b'{"prompt": "x", "temperature": -1}', headers={"content-type": "json"}
        )
        broken = enqueue(client, b"{not json", headers={"content-type": "application/json"})
        frame, broken_frame = wait_result(client, request_id), wait_result(client, broken)
    assert frame["tags"]["lastCode"] == "400"
    error = json.loads(base64.b64decode(frame["data"]))["error"]
    assert error["code"] == 400
    assert "temperature" in error["message"]
    assert broken_frame["tags"]["lastCode"] == "400"


def test_sink_answers_204_while_pending_and_404_for_unknown_ids(fake, tmp_path):
    client = async_client(fake, tmp_path)  # no lifespan: no workers, items stay pending
    request_id = enqueue(client, b"hello")
    pending = client.get(SINK, params={"requestId": request_id})
    assert (pending.status_code, pending.content) == (204, b"")
    unknown = client.get(SINK, params={"requestId": "no-such-request"})
    assert unknown.status_code == 404
    assert "no request no-such-request" in unknown.text
    missing = client.get(SINK)
    assert missing.status_code == 400
    assert "requestId" in missing.json()["error"]["message"]
    bad_wait = client.get(SINK, params={"requestId": request_id, "_timeout_": "soon"})
    assert bad_wait.status_code == 400
    assert "_timeout_" in bad_wait.text


def test_a_full_queue_answers_450(fake, tmp_path):
    client = async_client(fake, tmp_path, max_queue_size=2)  # no workers: nothing leaves
    enqueue(client, b"1")
    enqueue(client, b"2")
    refused = client.post("/api/predict/demo", content=b"3")
    assert refused.status_code == 450
    assert refused.json()["error"]["type"] == "queue_full_error"
    assert "maximum of 2 waiting requests" in refused.json()["error"]["message"]
    assert refused.headers["retry-after"] == "5"
    assert client.served.parts.admission.limit is None  # the bound is the queue's, not a 429


def test_sink_options_tags_priority_raw_and_auto_delete(fake, tmp_path):
    with working(async_client(fake, tmp_path)) as client:
        request_id = enqueue(
            client, b"tagged", params={"user": "alice", "_priority_": "1"}
        )  # the platform's SDK sends tags as query parameters
        frame = wait_result(client, request_id)
        assert frame["tags"] == {"user": "alice", "requestId": request_id, "lastCode": "200"}
        raw = client.get(SINK, params={"requestId": request_id, "_raw_": "true"})
        assert raw.content == base64.b64decode(frame["data"])
        read = client.get(SINK, params={"requestId": request_id, "_auto_delete_": "true"})
        assert read.status_code == 200
        assert client.get(SINK, params={"requestId": request_id}).status_code == 404


def test_sink_speaks_the_platform_sdks_protobuf_when_asked(fake, tmp_path):
    pytest.importorskip("google.protobuf.message_factory")
    frames_class = queue_messages()["DataFrameListProto"]
    with working(async_client(fake, tmp_path)) as client:
        request_id = enqueue(client, b"proto", params={"k": "v"})
        frame = wait_result(client, request_id)
        response = client.get(
            SINK,
            params={"requestId": request_id},
            headers={"Accept": "application/vnd.google.protobuf"},
        )
    decoded = frames_class.FromString(response.content)
    (only,) = decoded.index
    assert only.index == frame["index"]
    assert only.data == base64.b64decode(frame["data"])
    assert dict(only.tags) == {"k": "v", "requestId": request_id, "lastCode": "200"}


def test_a_drain_finishes_running_items_claims_no_more_and_leaves_cut_ones_pending(
    demo_tokenizer, tmp_path
):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.1)
    with working(async_client(fake, tmp_path, grace_period=1.0)) as client:
        parts = client.served.parts
        queue = parts.queue.store
        drain, stops = drain_controller(client.served, grace_period=1.0)
        short = enqueue(client, b'{"prompt": "x", "max_new_tokens": 3}')
        long = enqueue(client, b'{"prompt": "x", "max_new_tokens": 40}')  # 4 s unless aborted
        for _ in range(200):  # until both are in the engine (bounded)
            if len(fake.running) == 2:
                break
            client.get(SINK, params={"requestId": short, "_timeout_": "20ms"})
        assert len(fake.running) == 2
        draining = client.portal.start_task_soon(drain.drain, "SIGTERM")
        refused = client.post("/api/predict/demo", content=b"late")
        assert refused.status_code == 503  # a draining server accepts no new work
        waiting = client.portal.call(queue.enqueue, b"already queued")
        assert wait_result(client, short)["tags"]["lastCode"] == "200"  # allowed to finish
        draining.result(timeout=10)  # the grace period ended: the long one was cut short
        assert stops == [0]
        assert parts.admission.num_in_flight == 0
        cut = client.portal.call(queue.state, long)
        not_taken = client.portal.call(queue.state, waiting.request_id)
        pending = client.get(SINK, params={"requestId": long})
    assert cut.value == "pending"  # handed back to the queue, not a 503 result
    assert not_taken.value == "pending"
    assert pending.status_code == 204


def test_auth_and_readiness_apply_to_the_queue_routes(fake, tmp_path):
    client = async_client(fake, tmp_path, token=TOKEN)
    assert client.post("/api/predict/demo", content=b"x").status_code == 401
    assert client.get(SINK, params={"requestId": "x"}).status_code == 401
    request_id = enqueue(client, b"x", headers={"Authorization": f"Bearer {TOKEN}"})
    sink = client.get(SINK, params={"requestId": request_id}, headers={"Authorization": TOKEN})
    assert sink.status_code == 204
    client.served.parts.status.phase = Phase.LOADING
    loading = client.post("/", content=b"x", headers={"Authorization": TOKEN})
    assert loading.status_code == 503


def test_warm_up_requests_are_answered_at_once_not_queued(fake, tmp_path):
    from runtime.warmup import run_warm_up

    client = async_client(fake, tmp_path)
    answers = client.served.answers(client.served.parts.admission.service)
    warm_up = [("/api/predict/demo", {"prompt": "warm", "max_new_tokens": 2})]
    asyncio.run(run_warm_up(answers, warm_up))
    assert [request.sampling.max_tokens for request in fake.requests] == [2]
    assert asyncio.run(client.served.parts.queue.store.counts()).pending == 0


def test_custom_processors_answer_queued_bodies_with_their_status(tmp_path):
    processor = CustomProcessor(
        EngineSettings(model_path=""), CustomSettings(entry=str(KINDS), mainclass="Statuses")
    )
    with working(async_client(processor, tmp_path)) as client:
        created, unknown = enqueue(client, b"created"), enqueue(client, b"nonsense")
        failed = enqueue(client, b"raise")
        frames = [wait_result(client, i) for i in (created, unknown, failed)]
    assert [f["tags"]["lastCode"] for f in frames] == ["201", "404", "500"]
    assert [base64.b64decode(f["data"])[:7] for f in frames[:2]] == [b"made", b"unknown"]


def test_metrics_show_the_queue_length(demo_tokenizer, tmp_path):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.2)
    with working(async_client(fake, tmp_path)) as client:
        for _ in range(5):  # four run at once, the fifth waits
            enqueue(client, b'{"prompt": "x", "max_new_tokens": 20}')
        running = 'llm_runtime_queue_items{state="running"} 4.0'
        for _ in range(200):  # until the workers have taken theirs (bounded)
            text = client.get("/metrics").text
            if running in text:
                break
        client.portal.call(client.served.abort_all, ApiError(ErrorKind.UNAVAILABLE, "end"))
    assert running in text
    assert 'llm_runtime_queue_items{state="pending"} 1.0' in text


def test_a_queue_in_use_stops_the_start_with_exit_code_2(tmp_path, caplog):
    from runtime.cli import main
    from runtime.queue.sqlite import SqliteQueue

    path = tmp_path / "q.sqlite3"
    holder = SqliteQueue(path)  # another runtime has it
    # A child of the embedding process, older than the runtime: not the runtime's to stop.
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    args = ["serve", "--async", "--queue-path", str(path), "--processor-entry", str(KINDS)]
    try:
        assert main([*args, "--processor-mainclass", "Statuses"]) == 2
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()
        asyncio.run(holder.close())
    assert "in use by another process" in caplog.text
