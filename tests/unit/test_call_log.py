"""Call records: one JSON line per call, for every API; rotation, redaction, streams, aborts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from processors.base import Step
from runtime.call_log import CallLog, CallRecord
from runtime.config import CallLogConfig, load_config
from runtime.errors import ApiError, ErrorKind
from tests.unit.conftest import make_client, post_then_leave
from tests.unit.fake_processor import FakeProcessor

TOKEN = 'call-log-"secret"/token'  # JSON escapes it in the file: redacted in both forms


def records(path: Path, client=None) -> list[dict]:
    if client is not None:
        client.served.parts.call_log.flush()
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def log_path(tmp_path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
def logged(fake, log_path):
    client = make_client(fake, call_log=str(log_path), token=TOKEN)
    client.headers["Authorization"] = f"Bearer {TOKEN}"
    yield client
    client.served.parts.call_log.close()


def test_every_api_gets_one_record_with_its_counts_and_text(logged, log_path):
    chat = {"prompt": "hi", "max_new_tokens": 3}
    assert logged.post("/api/predict/llm", json=chat).status_code == 200
    logged.post("/", json={**chat, "use_stream_chat": True})
    logged.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True},
    )
    logged.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2, "n": 2})
    with logged.websocket_connect("/") as ws:
        ws.send_text(json.dumps(chat))
        while ws.receive_text() != "<EOS>":
            pass
    plain, stream, sse, completions, websocket = records(log_path, logged)
    assert [r["route"] for r in (plain, stream, sse, completions, websocket)] == [
        "/api/predict/llm",
        "/",
        "/v1/chat/completions",
        "/v1/completions",
        "/",
    ]
    for record in (plain, stream, websocket):
        assert record["request"] == chat or record["request"]["use_stream_chat"] is True
        assert record["response"] == "w0 w1 w2 "
        assert record["output_tokens"] == 3
        assert record["request_id"].startswith("chatllm-")
        assert record["prompt_tokens"] > 0
        assert record["finish_reason"] == "length"
        assert record["status"] == 200
        assert record["error"] is None
        assert 0 <= record["ttft_s"] <= record["latency_s"]
        assert record["client"] == "testclient:50000"
        assert record["time"].startswith("20")
    assert websocket["method"] == "WEBSOCKET"
    assert stream["method"] == "POST"
    assert sse["response"] == "w0 w1 "
    assert sse["request_id"].startswith("chatcmpl-")
    # two choices: the id without its per-choice suffix, both texts, tokens of both
    assert completions["request_id"].startswith("cmpl-")
    assert completions["request_id"][-2] != "-"
    assert completions["responses"] == ["w0 w1 ", "w0 w1 "]
    assert completions["output_tokens"] == 4


def test_the_token_never_reaches_the_file(logged, log_path):
    logged.post("/", json={"prompt": f"my token is {TOKEN}", "max_new_tokens": 1})
    logged.post("/", content=f"plain {TOKEN}".encode(), headers={"content-type": "text/plain"})
    logged.post("/", json={"prompt": "x"}, headers={"Authorization": TOKEN + "x"})  # a 401
    *_, unauthorized = records(log_path, logged)
    text = log_path.read_text()
    assert "secret" not in text
    assert text.count("<redacted>") == 2
    assert unauthorized["status"] == 401
    assert unauthorized["error"] == "invalid service token"
    assert unauthorized["finish_reason"] is None
    assert unauthorized["output_tokens"] is None


def test_a_timed_out_stream_is_recorded_as_aborted_with_408(demo_tokenizer, log_path):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.02)
    client = make_client(fake, call_log=str(log_path), request_timeout=0.2)
    client.post("/v1/completions", json={"prompt": "x", "max_tokens": 50, "stream": True})
    (record,) = records(log_path, client)
    assert (record["status"], record["finish_reason"]) == (408, "abort")
    assert "request timeout of 0.2 s" in record["error"]
    assert 0 < record["output_tokens"] < 50
    assert record["response"].startswith("w0 w1 ")
    client.served.parts.call_log.close()


def test_a_client_that_leaves_a_stream_is_recorded_as_499(demo_tokenizer, log_path):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)  # 2 s unless aborted
    client = make_client(fake, call_log=str(log_path))
    body = {"prompt": "x", "max_new_tokens": 40, "use_stream_chat": True}
    post_then_leave(client.app, "/", body, lambda received: len(received) >= 3)  # 2 records
    (record,) = records(log_path, client)
    assert (record["status"], record["finish_reason"]) == (499, "abort")
    assert record["error"] == "the client left"
    assert 2 <= record["output_tokens"] < 40
    assert record["client"] == "10.1.2.3:4567"
    assert fake.aborted
    client.served.parts.call_log.close()


def test_raw_processor_answers_are_recorded_as_bytes_in_and_out(log_path):
    from tests.unit.test_custom_processor import ECHO, serve_custom

    client = serve_custom(ECHO, call_log=str(log_path), service_name="echo")
    client.post("/api/predict/echo", content=b"hello")
    client.post("/", content=b"")
    ok, empty = records(log_path, client)
    assert ok["request"] == "hello"
    assert json.loads(ok["response"])["echo"] == "HELLO"
    assert ok["status"] == 200
    assert ok["request_id"] is None
    assert ok["output_tokens"] is None
    assert (empty["status"], empty["error"]) == (400, "send a body to echo")
    client.served.parts.call_log.close()


def test_files_rotate_by_size_and_keep_the_backups_asked_for(tmp_path):
    path = tmp_path / "calls.jsonl"
    call_log = CallLog(CallLogConfig(str(path), max_bytes=2000, backups=2), token=None)
    call_log.open()
    for index in range(60):
        call = CallRecord("POST", "/", ("10.0.0.1", 5), json.dumps({"n": index}).encode())
        call.note_request(f"id-{index}")
        call.note_step(f"id-{index}", Step("x" * 50, 3, 1, "stop"))
        call.finish()
        call_log.record(call)
    call_log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["calls.jsonl", "calls.jsonl.1", "calls.jsonl.2"]
    kept = [
        json.loads(line)
        for name in files
        for line in (tmp_path / name).read_text().split("\n")
        if line
    ]
    assert all((tmp_path / name).stat().st_size <= 2000 for name in files)
    numbers = sorted(record["request"]["n"] for record in kept)
    assert numbers == list(range(60 - len(numbers), 60))  # the newest, none torn
    assert kept[0]["client"] == "10.0.0.1:5"
    assert kept[0]["response"] == "x" * 50


def test_records_are_queued_without_writing_on_the_caller(tmp_path):
    call_log = CallLog(CallLogConfig(str(tmp_path / "c.jsonl")), token=None)
    call = CallRecord("POST", "/", None)
    call.note_error(ApiError(ErrorKind.UNAVAILABLE, "draining"))
    call.finish()
    call_log.record(call)  # not opened yet: it waits in the queue
    assert not (tmp_path / "c.jsonl").exists()
    call_log.open()
    call_log.close()
    (record,) = records(tmp_path / "c.jsonl")
    assert (record["status"], record["error"], record["finish_reason"]) == (503, "draining", None)


def test_config_from_flags_env_and_service_json(tmp_path):
    service = tmp_path / "service.json"
    service.write_text(
        json.dumps({"metadata": {"call_log": {"path": "/x/calls", "max_bytes": 10, "backups": 3}}})
    )
    config = load_config({}, {}, str(service))
    assert config.call_log == CallLogConfig("/x/calls", 10, 3)
    assert not config.ignored_keys
    service.write_text(json.dumps({"metadata": {"call_log": "/y/calls"}}))
    assert load_config({}, {}, str(service)).call_log.path == "/y/calls"
    env = {"LLM_RUNTIME_CALL_LOG": "/z", "LLM_RUNTIME_CALL_LOG_BACKUPS": "1"}
    assert load_config({"call_log_max_bytes": "5"}, env).call_log == CallLogConfig("/z", 5, 1)
