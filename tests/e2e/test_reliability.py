"""What an orchestrator relies on, against the real server and engine: drain on SIGTERM, grace
expiry, request timeouts, the queue bound, client disconnects, body limits and engine death.

Every loop here is bounded in count and time; all traffic stays on loopback.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest
import requests

from tests.e2e.conftest import (
    EOS,
    Gate,
    Server,
    assert_children_gone,
    close_code,
    engine_children,
    engine_core,
    held,
    held_body,
    released,
    run_in_slices,
    server_processes,
)

DEADLINE_S = 120


def post(server: Server, path: str, body: dict, hold: threading.Event | None, **kwargs):
    """POST a JSON body; with `hold`, its second part is sent only once `hold` is set, so the
    request is in flight until then (see held_body)."""
    headers = server.headers(**{"content-type": "application/json"})
    data = held_body(body, hold) if hold is not None else json.dumps(body)
    return requests.post(
        f"{server.url}{path}", data=data, headers=headers, timeout=DEADLINE_S, **kwargs
    )


def completion_stream(
    server: Server,
    max_tokens: int,
    hold: threading.Event | None = None,
    begun: threading.Semaphore | None = None,
) -> dict:
    """Stream /v1/completions; what arrived: tokens, chunks, a final error, [DONE]. `begun` is
    released once the first chunk has arrived."""
    body = {"prompt": "Tell me a story", "max_tokens": max_tokens, "temperature": 0}
    body["stream"] = True
    result = {"status": None, "tokens": 0, "error": None, "done": False}
    with post(server, "/v1/completions", body, hold, stream=True) as response:
        result["status"] = response.status_code
        if response.status_code != 200:
            result["error"] = response.json()["error"]
            return result
        for line in response.iter_lines():
            if begun is not None and result["tokens"] == 0 and line.startswith(b"data: {"):
                begun.release()
            if line == b"data: [DONE]":
                result["done"] = True
            elif line.startswith(b"data: "):
                chunk = json.loads(line[6:])
                result["tokens"] = chunk["usage"]["completion_tokens"]
                result["error"] = chunk.get("error_info") or result["error"]
    return result


def chatllm_stream(server: Server, max_tokens: int, hold: threading.Event | None = None) -> dict:
    body = {"prompt": "Hello", "max_new_tokens": max_tokens, "use_stream_chat": True}
    body["do_sample"] = False
    with post(server, "/", body, hold, stream=True) as response:
        records = [json.loads(r) for r in response.iter_lines(delimiter=b"\0") if r]
    last = records[-1]
    return {
        "status": response.status_code,
        "error": last.get("error"),
        "tokens": last.get("usage", {}).get("completion_tokens", 0),
    }


def chat_whole(server: Server, max_tokens: int, hold: threading.Event | None = None) -> dict:
    """A non-streaming chat completion: its thread just waits, costing the client nothing."""
    body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": max_tokens}
    body["temperature"] = 0
    response = post(server, "/v1/chat/completions", body, hold)
    payload = response.json()
    return {
        "status": response.status_code,
        "error": payload.get("error"),
        "tokens": payload.get("usage", {}).get("completion_tokens", 0),
    }


def websocket_chat(server: Server, max_tokens: int) -> dict:
    """A ChatLLM answer over WebSocket; a draining server then closes with 1001 (going away).
    Its token count is in the call log (streamed steps may carry several tokens each)."""
    ws = server.websocket()
    try:
        ws.send(json.dumps({"prompt": "Hello", "max_new_tokens": max_tokens, "do_sample": False}))
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
    """The one drain test on the real vLLM engine: 24 HTTP requests held in flight by their
    bodies, and 4 WebSocket answers generating, when SIGTERM comes; all finish whole."""
    call_log = tmp_path / "calls.jsonl"
    server = launch("--grace-period", "90", "--max-num-seqs", "32", "--call-log", str(call_log))
    children = engine_children(server)
    held = [completion_stream] * 12 + [chatllm_stream] * 6 + [chat_whole] * 6
    max_tokens, ws_tokens = 300, 1000
    release = threading.Event()
    idle = server.websocket()  # a connection between messages is not a request in flight
    with ThreadPoolExecutor(len(held) + 4) as pool:
        futures = [pool.submit(kind, server, max_tokens, release) for kind in held]
        wait_for(lambda: in_flight(server) == len(held), 60, "the held requests in flight")
        # Sent last, so they are still generating when the signal comes.
        answering = [pool.submit(websocket_chat, server, ws_tokens) for _ in range(4)]
        wait_for(lambda: in_flight(server) == len(held) + 4, 60, "the WebSocket answers")
        signalled = time.monotonic()
        sigterm_then_refused(server)
        assert close_code(idle) == 1001  # at once: it has nothing to finish
        idle.close()
        release.set()
        results = [future.result(timeout=DEADLINE_S) for future in futures]
        spoken = [future.result(timeout=DEADLINE_S) for future in answering]
    code = server.process.wait(timeout=60)
    # Every record was written before the exit: the refused one and all the drained ones.
    records = [json.loads(line) for line in call_log.read_text().splitlines()]
    print(
        f"\nSIGTERM with {len(held) + 4} requests in flight: all finished (call log); exit "
        f"{code} {time.monotonic() - signalled:.1f} s after the signal"
    )
    assert [r["status"] for r in results] == [200] * len(held)
    assert [r["error"] for r in results] == [None] * len(held)
    assert [r["tokens"] for r in results] == [max_tokens] * len(held)
    assert [(r["error"], r["closed"]) for r in spoken] == [(None, 1001)] * 4  # after the answer
    assert code == 0
    assert_children_gone(children)
    outcomes = sorted((r["status"], r["output_tokens"], r["method"]) for r in records)
    assert outcomes == [(200, max_tokens, "POST")] * len(held) + [
        (200, ws_tokens, "WEBSOCKET")
    ] * 4 + [(503, None, "POST")]


def started_streams(server: Server, count: int, max_tokens: int, pool) -> list:
    """`count` completion streams, returned once each has its first chunk: all generating."""
    begun = threading.Semaphore(0)
    futures = [
        pool.submit(completion_stream, server, max_tokens, None, begun) for _ in range(count)
    ]
    for _ in range(count):
        assert begun.acquire(timeout=DEADLINE_S), "a stream did not begin"
    return futures


def test_when_the_grace_period_ends_open_streams_get_a_final_error(launch):
    server = launch("--grace-period", "1")
    children = engine_children(server)
    with ThreadPoolExecutor(8) as pool:
        futures = started_streams(server, 8, 1900, pool)  # many seconds of work left
        server.process.send_signal(signal.SIGTERM)
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


def test_beyond_the_running_set_and_the_queue_requests_get_429_at_once(launch, tmp_path):
    # The admission bound is the runtime's, whatever the processor: the gated test processor
    # holds its requests (4 in its threads, 2 waiting) until the test opens the gate.
    gate = Gate(tmp_path / "gate")
    server = launch(*gate.server_args(), "--worker-threads", "4", "--max-queue-size", "2")

    def call(body: bytes) -> tuple[int, str | None, bytes]:
        response = requests.post(server.url, data=body, headers=server.headers(), timeout=60)
        return response.status_code, response.headers.get("retry-after"), response.content

    with ThreadPoolExecutor(6) as pool:
        holders = [pool.submit(call, b"held %d" % i) for i in range(6)]
        wait_for(lambda: in_flight(server) == 6, 60, "4 running and 2 queued")
        with ThreadPoolExecutor(10) as burst:
            outcomes = [status for status, _, _ in burst.map(call, [b"burst"] * 10)]
        assert outcomes == [429] * 10
        assert call(b"one more")[:2] == (429, "1")
        assert requests.get(f"{server.url}/ready", timeout=5).status_code == 200
        gate.open()
        answers = sorted(holder.result(timeout=DEADLINE_S) for holder in holders)
    assert answers == [(200, None, b"released held %d" % i) for i in range(6)]
    assert call(b"after")[::2] == (200, b"released after")  # room again once they are done


def disconnects(server: Server) -> float:
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("llm_runtime_client_disconnects_t"))
    return float(line.split()[-1])


def test_clients_that_leave_free_the_engine_at_once(server):
    """Four streams running in the engine, closed by their clients: all four are aborted.

    A stream's unread tokens fill the socket buffers, not a wait, so a client slower than the
    engine finds its streams already ended: in a CI run none of four 2000-token streams was still
    in flight once the fourth had opened. So the server and its engine are held (SIGSTOP) while
    the four are sent and let run in 10 ms slices until each client has read a first token;
    the clients leave while they are held."""
    # ignore_eos: a sampled stream of the random demo model may end early on its own.
    body = {"prompt": "leave", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    before = disconnects(server)

    def open_stream() -> tuple[requests.Response, Iterator[bytes]]:
        response = requests.post(
            f"{server.url}/v1/completions",
            json=body,
            headers=server.headers(),
            stream=True,
            timeout=DEADLINE_S,
        )
        assert response.status_code == 200, response.text
        lines = response.iter_lines()  # kept: dropping it would close the connection now
        assert next(lines).startswith(b"data: {")  # its first token
        return response, lines

    processes = server_processes(server)
    with held(processes), ThreadPoolExecutor(4) as clients:
        opening = [clients.submit(open_stream) for _ in range(4)]
        run_in_slices(processes, lambda: all(f.done() for f in opening), 60, "4 first tokens")
        streams = [future.result() for future in opening]
        with released(processes):  # for two questions: the answers have 1,999 tokens to go
            assert in_flight(server) == 4
            assert sum(engine_load(server)) > 0
        for response, _ in streams:
            response.close()
    left = time.monotonic()
    wait_for(lambda: disconnects(server) - before == 4, 10, "the server to see 4 clients go")
    wait_for(lambda: engine_load(server) == (0, 0), 10, "the engine to be idle")
    idle_s = time.monotonic() - left
    print(f"\n4 streams closed by their clients: engine idle {idle_s:.3f} s after the release")
    wait_for(lambda: in_flight(server) == 0, 10, "nothing in flight")
    assert disconnects(server) - before == 4  # aborted, not finished


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
        # Past what vLLM accepts though the schema allows it, before and after a stream starts:
        ("post", "/", {"json": {"prompt": "x", "temperature": 5}}, 400),
        (
            "post",
            "/v1/completions",
            {"json": {"prompt": "x", "temperature": 9, "stream": True}},
            400,
        ),
        ("post", "/v1/completions", {"json": {"prompt": "x", "seed": 2**64}}, 400),
        (
            "post",
            "/v1/chat/completions",
            {
                "data": b'{"messages": [{"role": "user", "content": "\\ud800"}]}',
                "headers": {"content-type": "application/json"},
            },
            400,
        ),
        (
            "post",
            "/v1/completions",
            {"json": {"prompt": [[1, 2, 3]] * 200, "n": 16, "max_tokens": 1}},  # < 4 KiB
            400,
        ),
        ("post", "/", {"data": b""}, 400),
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


def test_an_empty_stop_string_stops_nothing(limited):
    body = {"prompt": "x", "max_tokens": 3, "stop": "", "temperature": 0}
    response = requests.post(
        f"{limited.url}/v1/completions", json=body, headers=limited.headers(), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] == 3


def test_connections_that_never_send_a_whole_request_are_answered_408_and_closed(launch, tmp_path):
    server = launch(
        *Gate(tmp_path / "gate").server_args(),
        *("--request-read-timeout", "1", "--timeout-keep-alive", "1"),
    )
    address = ("127.0.0.1", int(server.url.rsplit(":", 1)[1]))
    auth = f"Authorization: {server.token}\r\n".encode()
    openings = {
        "silent": b"",
        "half the headers": b"POST / HTTP/1.1\r\nHost: x\r\n",
        "half the body": b"POST / HTTP/1.1\r\nHost: x\r\n"
        + auth
        + b"Content-Length: 100\r\n\r\n0123456789",
    }
    started = time.monotonic()
    for what, opening in openings.items():
        with socket.create_connection(address, timeout=10) as sock:
            sock.sendall(opening)
            answer = b""
            while chunk := sock.recv(4096):  # until the server closes the connection
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 408"), (what, answer)
            assert b"did not arrive" in answer, (what, answer)
    assert time.monotonic() - started < 10  # about 1 s each, not for ever
    with socket.create_connection(address, timeout=10) as sock:  # idle after an answer
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")  # then closed by the keep-alive timeout


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
            runtime_command(
                "serve", "--host", "127.0.0.1", "--port", str(port), "--model", "builtin:demo"
            ),
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
