"""ChatLLM over WebSocket with a fake processor: framing, conversation, errors, lifecycle."""

from __future__ import annotations

import contextlib
import json
import time

import pytest
from starlette.testclient import WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from runtime.phase import Phase
from tests.unit.conftest import TOKEN, drain_controller, make_client
from tests.unit.fake_processor import FakeProcessor

EOS = "<EOS>"


def ask(ws, request, binary: bool = False) -> list[str]:
    """Send one message; the messages answering it, up to (not including) its <EOS>."""
    payload = request if isinstance(request, str) else json.dumps(request)
    if binary:
        ws.send_bytes(payload.encode())
    else:
        ws.send_text(payload)
    answer = []
    while (message := ws.receive_text()) != EOS:
        answer.append(message)
    return answer


def wait_until(condition, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)  # polling a condition with a deadline


def test_a_multi_round_chat_streams_deltas_and_keeps_the_history(client, fake, demo_tokenizer):
    with client.websocket_connect("/api/predict/demo") as ws:
        first = ask(ws, {"prompt": "hi", "max_new_tokens": 3})
        assert first == ["w0 ", "w1 ", "w2 "]  # streamed by default, one message per step
        second = ask(ws, {"prompt": "and now?", "max_new_tokens": 2})
        assert second == ["w0 ", "w1 "]
    rendered = demo_tokenizer.decode(fake.requests[1].prompt_token_ids)
    assert rendered == (
        "<s><|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\nw0 w1 w2 <|im_end|>\n"
        "<|im_start|>user\nand now?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_streaming_the_whole_answer_is_one_message_and_binary_frames_work(client, fake):
    with client.websocket_connect("/") as ws:
        request = {"prompt": "hi", "max_new_tokens": 3, "use_stream_chat": "false"}
        assert ask(ws, request, binary=True) == ["w0 w1 w2 "]
        answer = ask(ws, "a plain-text prompt")  # the prompt itself, as over HTTP
    prompt = fake.requests[-1].prompt_token_ids
    assert answer == [f"w{i} " for i in range(64 - len(prompt))]  # default: what fits


def test_system_prompt_only_messages_set_it_and_own_history_replaces(client, fake, demo_tokenizer):
    with client.websocket_connect("/") as ws:
        assert ask(ws, {"system_prompt": "be brief"}) == []  # just <EOS>
        ask(ws, {"prompt": "one", "max_new_tokens": 1})
        ask(ws, {"prompt": "two", "history": [["q", "a"]], "max_new_tokens": 1})
        ask(ws, {"prompt": "three", "max_new_tokens": 1})
    prompts = [demo_tokenizer.decode(r.prompt_token_ids) for r in fake.requests]
    assert len(prompts) == 3
    assert all(p.startswith("<s><|im_start|>system\nbe brief<|im_end|>\n") for p in prompts)
    assert "user\none" in prompts[0]
    assert "user\nq<|im_end|>" in prompts[1]
    assert "one" not in prompts[1]
    # the third continues from the history the second brought, plus its answer
    assert "user\nq<|im_end|>" in prompts[2]
    assert "user\ntwo<|im_end|>" in prompts[2]


def test_errors_come_before_their_eos_and_the_connection_stays_open(client):
    with client.websocket_connect("/") as ws:
        for bad, needle in [
            ('{"prompt": "x"', "not valid JSON"),
            ({"prompt": "x", "temperature": -1}, "temperature"),
            ({"prompt": "x " * 200}, "context window is 64 tokens"),
        ]:
            (error,) = ask(ws, bad)
            body = json.loads(error)["error"]
            assert body["code"] == 400
            assert needle in body["message"]
        assert ask(ws, {"prompt": "still here", "max_new_tokens": 1}) == ["w0 "]


def test_the_handshake_needs_the_token(auth_client):
    for headers in ({}, {"Authorization": "wrong"}):
        with pytest.raises(WebSocketDenialResponse) as refused:
            auth_client.websocket_connect("/", headers=headers).__enter__()
        assert refused.value.status_code == 401
        assert json.loads(refused.value.content)["error"]["type"] == "authentication_error"
    for header in (TOKEN, f"Bearer {TOKEN}"):
        with auth_client.websocket_connect("/", headers={"Authorization": header}) as ws:
            assert ask(ws, {"prompt": "hi", "max_new_tokens": 1}) == ["w0 "]


def test_not_ready_refuses_the_handshake_with_503(client):
    client.served.parts.status.phase = Phase.LOADING
    with pytest.raises(WebSocketDenialResponse) as refused:
        client.websocket_connect("/").__enter__()
    assert refused.value.status_code == 503
    assert "loading model" in json.loads(refused.value.content)["error"]["message"]


def test_drain_lets_the_answer_finish_then_closes_with_going_away(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.02)
    client = make_client(fake)
    admission = client.served.parts.admission
    drain, stops = drain_controller(client.served)
    with client, client.websocket_connect("/") as busy, client.websocket_connect("/") as idle:
        assert admission.num_in_flight == 0  # connections are not requests; messages are
        busy.send_text(json.dumps({"prompt": "x", "max_new_tokens": 20}))
        answer = [busy.receive_text()]
        assert admission.num_in_flight == 1
        client.portal.start_task_soon(drain.drain, "SIGTERM")  # on the server's loop
        with pytest.raises(WebSocketDisconnect) as idle_closed:
            idle.receive_text()
        assert idle_closed.value.code == 1001
        while (message := busy.receive_text()) != EOS:
            answer.append(message)
        assert answer == [f"w{i} " for i in range(20)]  # the whole answer
        with pytest.raises(WebSocketDisconnect) as busy_closed:
            busy.receive_text()
        assert busy_closed.value.code == 1001
        wait_until(lambda: stops == [0], "the drain to stop the server")
    assert admission.num_in_flight == 0
    assert not fake.aborted


def test_a_client_that_leaves_aborts_its_request(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.05)  # 2 s unless aborted
    client = make_client(fake)
    with client.websocket_connect("/") as ws:
        ws.send_text(json.dumps({"prompt": "x", "max_new_tokens": 40, "use_stream_chat": False}))
        wait_until(lambda: fake.running, "the request to run")
    wait_until(lambda: fake.aborted and not fake.running, "the abort")
    assert client.served.parts.admission.num_in_flight == 0


def test_the_request_timeout_applies_to_each_message(demo_tokenizer):
    fake = FakeProcessor(demo_tokenizer, step_delay=0.02)
    client = make_client(fake, request_timeout=0.3)
    with client.websocket_connect("/") as ws:
        *streamed, error = ask(ws, {"prompt": "x", "max_new_tokens": 50})
        assert streamed
        assert json.loads(error)["error"]["code"] == 408
        for _ in range(2):  # each message has its own 0.3 s
            assert ask(ws, {"prompt": "x", "max_new_tokens": 5}) == [f"w{i} " for i in range(5)]


def test_messages_over_the_queue_limit_get_429_and_an_eos_and_are_recorded(fake, tmp_path):
    calls = tmp_path / "calls.jsonl"
    client = make_client(fake, max_queue_size=0, call_log=str(calls))
    admission, call_log = client.served.parts.admission, client.served.parts.call_log
    with client.websocket_connect("/") as ws, contextlib.ExitStack() as busy:
        for _ in range(admission.limit):
            busy.enter_context(admission.admitted())
        (error,) = ask(ws, {"prompt": "x", "max_new_tokens": 1})
        assert json.loads(error)["error"]["code"] == 429
        busy.close()
        assert ask(ws, {"prompt": "x", "max_new_tokens": 1}) == ["w0 "]
    call_log.close()
    refused, served = (json.loads(line) for line in calls.read_text().splitlines())
    assert (refused["status"], refused["finish_reason"], refused["method"]) == (
        429,
        None,
        "WEBSOCKET",
    )
    assert (served["status"], served["response"]) == (200, "w0 ")
