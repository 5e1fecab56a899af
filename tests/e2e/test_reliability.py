"""What an orchestrator relies on, against the real server and engine: drain on SIGTERM, grace
expiry, request timeouts, the queue bound, client disconnects, body limits and engine death.

Every loop here is bounded in count and time; all traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.e2e.conftest import (
    EOS,
    Server,
    arriving_together,
    assert_children_gone,
    close_code,
    engine_children,
    engine_core,
    engine_paused,
)

DEADLINE_S = 120


def completion_stream(
    server: Server, max_tokens: int, start_reading: threading.Event | None = None
) -> dict:
    """Stream /v1/completions; what arrived: tokens, chunks, a final error, [DONE].

    With `start_reading`, the stream is opened, then read only once the event is set: a client
    busy parsing would delay the other requests' arrival on these 2 cores.
    """
    prompt = "Tell me a story"
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    result = {"status": None, "tokens": 0, "error": None, "done": False}
    with requests.post(
        f"{server.url}/v1/completions",
        json=body,
        headers=server.headers(),
        stream=True,
        timeout=DEADLINE_S,
    ) as response:
        result["status"] = response.status_code
        if response.status_code != 200:
            result["error"] = response.json()["error"]
            return result
        if start_reading is not None:
            start_reading.wait(DEADLINE_S)
        for line in response.iter_lines():
            if line == b"data: [DONE]":
                result["done"] = True
            elif line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                result["tokens"] = chunk["usage"]["completion_tokens"]
                result["error"] = chunk.get("error_info") or result["error"]
    return result


def chatllm_stream(
    server: Server, max_tokens: int, start_reading: threading.Event | None = None
) -> dict:
    body = {
        "prompt": "Hello",
        "max_new_tokens": max_tokens,
        "use_stream_chat": True,
        "do_sample": False,
    }
    with requests.post(
        f"{server.url}/", json=body, headers=server.headers(), stream=True, timeout=DEADLINE_S
    ) as response:
        if start_reading is not None:
            start_reading.wait(DEADLINE_S)
        records = [json.loads(r) for r in response.iter_lines(delimiter=b"\0") if r]
    last = records[-1]
    return {
        "status": response.status_code,
        "error": last.get("error"),
        "tokens": last.get("usage", {}).get("completion_tokens", 0),
    }


def chat_whole(server: Server, max_tokens: int, _: threading.Event | None = None) -> dict:
    """A non-streaming chat completion: its thread just waits, costing the client nothing."""
    body = {
        "messages": [{"role": "user", "content": "Hi"}],
        "max_tokens": max_tokens,
        "temperature": 0,
    }
    response = requests.post(
        f"{server.url}/v1/chat/completions", json=body, headers=server.headers(), timeout=DEADLINE_S
    )
    payload = response.json()
    return {
        "status": response.status_code,
        "error": payload.get("error"),
        "tokens": payload.get("usage", {}).get("completion_tokens", 0),
    }


def websocket_chat(
    server: Server, max_tokens: int, start_reading: threading.Event | None = None
) -> dict:
    """A ChatLLM answer over WebSocket; a draining server then closes with 1001 (going away).
    Its token count is in the call log (streamed steps may carry several tokens each)."""
    ws = server.websocket()
    try:
        ws.send(json.dumps({"prompt": "Hello", "max_new_tokens": max_tokens, "do_sample": False}))
        if start_reading is not None:
            start_reading.wait(DEADLINE_S)
        messages = []
        while (message := ws.recv()) != EOS:
            messages.append(message)
        closed = close_code(ws)
    finally:
        ws.close()
    error = json.loads(messages[-1])["error"] if messages[-1].startswith('{"error"') else None
    return {"status": 200, "error": error, "tokens": None, "closed": closed}


def in_flight(server: Server) -> int:
    return requests.get(f"{server.url}/health", timeout=10).json().get("num_in_flight", 0)


def engine_load(server: Server) -> tuple[int, int]:
    body = requests.get(f"{server.url}/health", timeout=10).json()
    return body.get("num_running", 0), body.get("num_waiting", 0)


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)  # polling a condition with a deadline
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def sigterm_then_refused(server: Server) -> None:
    """SIGTERM: readiness turns 503 at once, and a new request is refused with 503."""
    server.process.send_signal(signal.SIGTERM)
    wait_for(
        lambda: requests.get(f"{server.url}/ready", timeout=5).status_code == 503,
        5,
        "readiness to turn 503",
    )
    refused = requests.post(
        f"{server.url}/v1/completions",
        headers=server.headers(),
        json={"prompt": "late", "max_tokens": 5},
        timeout=10,
    )
    assert refused.status_code == 503
    assert "shutting down" in refused.json()["error"]["message"]


def test_sigterm_drains_every_kind_of_request_to_completion(launch, tmp_path):
    call_log = tmp_path / "calls.jsonl"
    server = launch("--grace-period", "90", "--max-num-seqs", "32", "--call-log", str(call_log))
    children = engine_children(server)
    kinds = [completion_stream] * 12 + [chatllm_stream] * 6 + [chat_whole] * 6
    kinds += [websocket_chat] * 4
    max_tokens = 1000
    start_reading = threading.Event()
    idle = server.websocket()  # a connection between messages is not a request in flight
    with ThreadPoolExecutor(len(kinds)) as pool:
        with engine_paused(server):  # so all are in flight when the signal comes
            futures = [pool.submit(kind, server, max_tokens, start_reading) for kind in kinds]
            wait_for(lambda: in_flight(server) == len(kinds), 60, "all requests in flight")
            signalled = time.monotonic()
            sigterm_then_refused(server)
            assert close_code(idle) == 1001  # at once: it has nothing to finish
            idle.close()
        start_reading.set()
        results = [future.result(timeout=DEADLINE_S) for future in futures]
    code = server.process.wait(timeout=60)
    # Every record was written before the exit: the refused one and all the drained ones.
    records = [json.loads(line) for line in call_log.read_text().splitlines()]
    print(
        f"\nSIGTERM with {len(kinds)} requests in flight: "
        f"{sum(r['output_tokens'] == max_tokens for r in records)} completed with all "
        f"{max_tokens} tokens (call log); exit {code} {time.monotonic() - signalled:.1f} s after "
        "the signal"
    )
    assert [r["status"] for r in results] == [200] * len(kinds)
    assert [r["error"] for r in results] == [None] * len(kinds)
    assert [r["tokens"] for r in results if r["tokens"] is not None] == [max_tokens] * 24
    assert [r["closed"] for r in results if "closed" in r] == [1001] * 4  # after the answer
    assert code == 0
    assert_children_gone(children)
    outcomes = sorted((r["status"], r["output_tokens"], r["method"]) for r in records)
    assert outcomes == [(200, max_tokens, "POST")] * 24 + [(200, max_tokens, "WEBSOCKET")] * 4 + [
        (503, None, "POST")
    ]


def test_when_the_grace_period_ends_open_streams_get_a_final_error(launch):
    server = launch("--grace-period", "1")
    children = engine_children(server)
    start_reading = threading.Event()
    with ThreadPoolExecutor(8) as pool:
        with engine_paused(server):
            futures = [
                pool.submit(completion_stream, server, 1900, start_reading) for _ in range(8)
            ]
            wait_for(lambda: in_flight(server) == 8, 60, "all streams in flight")
            server.process.send_signal(signal.SIGTERM)
        start_reading.set()
        results = [future.result(timeout=DEADLINE_S) for future in futures]
    assert server.process.wait(timeout=60) == 0
    for result in results:
        assert result["tokens"] < 1900
        assert result["error"]["type"] == "service_unavailable"
        assert "drain period of 1 s ended" in result["error"]["message"]
        assert result["done"]  # still a well-formed stream
    assert_children_gone(children)


@pytest.fixture(scope="module")
def limited(model_cache_dir, demo_model_dir, tmp_path_factory):
    from tests.e2e.conftest import start_server, stop

    workdir = tmp_path_factory.mktemp("limited")
    warm_up = workdir / "warm-up.jsonl"
    warm_up.write_text(
        json.dumps({"prompt": "warm", "max_tokens": 4})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        + "\n"
    )
    server = start_server(
        workdir,
        model_cache_dir,
        "--warm-up",
        str(warm_up),
        "--request-timeout",
        "1.5",
        "--max-num-seqs",
        "4",
        "--max-queue-size",
        "2",
        "--max-body-bytes",
        "4096",
    )
    yield server
    assert stop(server.process) == 0


def test_warm_up_requests_ran_before_readiness(limited):
    log = limited.log()
    assert "warm-up: 2 requests replayed" in log
    assert log.index("warm-up: 2 requests replayed") < log.index("ready on port")


def test_a_request_past_its_timeout_is_408_and_aborted(limited):
    started = time.monotonic()
    response = requests.post(
        f"{limited.url}/v1/completions",
        headers=limited.headers(),
        json={"prompt": "x", "max_tokens": 1900, "temperature": 0},
        timeout=DEADLINE_S,
    )
    assert response.status_code == 408
    assert "request timeout of 1.5 s" in response.json()["error"]["message"]
    assert time.monotonic() - started < 10
    streamed = completion_stream(limited, 1900)
    assert streamed["error"]["code"] == 408
    assert streamed["done"]
    wait_for(lambda: engine_load(limited) == (0, 0), 10, "the engine to be idle")


def test_beyond_the_running_set_and_the_queue_requests_get_429_at_once(launch):
    # The admission bound is the runtime's, whatever the engine; our own engine starts fastest.
    server = launch("--processor", "transformers", "--max-num-seqs", "4", "--max-queue-size", "2")
    start_reading = threading.Event()
    with ThreadPoolExecutor(6) as pool:
        with arriving_together(server, 6):
            holders = [
                pool.submit(completion_stream, server, 1500, start_reading) for _ in range(6)
            ]
        wait_for(lambda: in_flight(server) == 6, 60, "4 running and 2 queued")

        def one(_):
            response = requests.post(
                f"{server.url}/v1/completions",
                headers=server.headers(),
                json={"prompt": "burst", "max_tokens": 5},
                timeout=DEADLINE_S,
            )
            return response.status_code, response.headers.get("retry-after")

        with ThreadPoolExecutor(10) as burst:
            outcomes = list(burst.map(one, range(10)))
        assert outcomes == [(429, "1")] * 10
        assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
        start_reading.set()
        assert [h.result(timeout=DEADLINE_S)["tokens"] for h in holders] == [1500] * 6
    assert one(0) == (200, None)  # room again once the holders are done


def disconnects(server: Server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("llm_runtime_client_disconnects_t"))
    return float(line.split()[-1])


def test_clients_that_leave_free_the_engine_at_once(server):
    # ignore_eos: a sampled stream of the random demo model may end early on its own.
    body = {"prompt": "leave", "max_tokens": 2000, "ignore_eos": True, "stream": True}

    def open_stream(_):
        response = requests.post(
            f"{server.url}/v1/completions",
            json=body,
            headers=server.headers(),
            stream=True,
            timeout=DEADLINE_S,
        )
        assert response.status_code == 200, response.text
        lines = response.iter_lines()  # kept: dropping it would close the connection now
        next(lines)
        return response, lines

    before = disconnects(server)
    with ThreadPoolExecutor(16) as pool:
        with arriving_together(server, 16):
            opening = [pool.submit(open_stream, i) for i in range(16)]
        # Started together, 16 streams of 2,000 tokens keep the engine busy for many seconds.
        streams = [future.result(timeout=DEADLINE_S) for future in opening]
    assert in_flight(server) == 16, requests.get(f"{server.url}/health", timeout=10).text
    assert sum(engine_load(server)) > 0
    left = time.monotonic()
    for response, _ in streams:
        response.close()
    wait_for(lambda: engine_load(server) == (0, 0), 10, "the engine to be idle")
    print(
        f"\n16 streams closed by their clients: engine idle after "
        f"{(time.monotonic() - left) * 1000:.0f} ms"
    )
    wait_for(lambda: in_flight(server) == 0, 10, "nothing in flight")
    assert disconnects(server) - before == 16  # aborted, not finished


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "code"),
    [
        ("post", "/v1/completions", {"data": b"x" * 5000}, 413),
        (
            "post",
            "/v1/completions",
            {"data": b"{not json", "headers": {"content-type": "application/json"}},
            400,
        ),
        ("post", "/v1/completions", {"json": {"prompt": "x", "max_tokens": "many"}}, 400),
        ("post", "/v1/completions", {"json": {"prompt": "x", "max_tokens": 99999}}, 400),
        ("post", "/v1/completions", {"json": {"prompt": "x", "top_p": 0}}, 400),
        ("post", "/v1/completions", {"json": {"prompt": [99999]}}, 400),
        ("post", "/v1/chat/completions", {"json": {"messages": "hi"}}, 400),
        (
            "post",
            "/v1/chat/completions",
            {"json": {"model": "nope", "messages": [{"role": "user", "content": "x"}]}},
            404,
        ),
        ("post", "/", {"json": {"prompt": "x", "history": "none"}}, 400),
        ("post", "/", {"data": "é".encode("latin-1")}, 400),
        ("get", "/v1/completions", {}, 405),
        ("get", "/no/such/route", {}, 404),
    ],
)
def test_bad_input_gets_its_code_never_a_500(limited, method, path, kwargs, code):
    headers = {**limited.headers(), **kwargs.pop("headers", {})}
    response = getattr(requests, method)(
        f"{limited.url}{path}", headers=headers, timeout=30, **kwargs
    )
    assert response.status_code == code, response.text
    assert response.json()["error"]["code"] == code


def test_a_dead_engine_fails_liveness_and_exits_non_zero(launch):
    server = launch()
    children = engine_children(server)
    core = engine_core(server)
    results: list[dict] = []
    reader = threading.Thread(target=lambda: results.append(completion_stream(server, 1900)))
    reader.start()
    wait_for(lambda: engine_load(server)[0] == 1, 30, "the stream to run")
    core.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: requests.get(f"{server.url}/health", timeout=5).status_code == 503,
        10,
        "liveness to turn 503",
    )
    code = server.process.wait(timeout=10)
    reader.join(timeout=30)
    print(f"\nengine core killed: exit {code} after {time.monotonic() - killed:.1f} s")
    assert code != 0
    assert results
    assert results[0]["error"] is not None
    assert results[0]["tokens"] < 1900
    assert_children_gone(children)


def test_sigterm_while_loading_stops_and_a_second_one_exits_at_once(model_cache_dir, tmp_path):
    from tests.e2e.conftest import free_port, runtime_command

    port = free_port()
    with (tmp_path / "server.log").open("w") as log:
        process = subprocess.Popen(
            runtime_command("serve", "--host", "127.0.0.1", "--port", str(port)),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "VLLM_CPU_KVCACHE_SPACE": "1",
                "LLM_RUNTIME_CACHE_DIR": str(model_cache_dir),
            },
        )
    url = f"http://127.0.0.1:{port}"

    def loading() -> bool:
        try:
            ready = requests.get(f"{url}/ready", timeout=5)
        except requests.ConnectionError:
            return False
        return ready.status_code == 503 and ready.json()["phase"] == "loading model"

    wait_for(loading, 60, "the model to be loading, with the port already answering")
    assert requests.get(f"{url}/health", timeout=5).status_code == 200
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGTERM)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    code = process.wait(timeout=15)
    print(f"\ntwo SIGTERMs while loading: exit {code} after {time.monotonic() - signalled:.1f} s")
    assert code in (0, 128 + signal.SIGTERM)
    assert_children_gone(children)
