"""The asynchronous queue API against the real server and engine, with `requests`: results come
out of the sink, and accepted work survives a kill -9 and a restart on the same queue file.

The runtimes run our own engine (the transformers processor), which starts in seconds where
vLLM's CPU build takes over a minute; the queue does not depend on which engine answers.

Every loop is bounded in count and time; all traffic stays on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import sqlite3
import time

import pytest
import requests

from tests.e2e.conftest import Server, start_server, stop

SERVICE = "queued"
ID_HEADER = "X-Eas-Queueservice-Request-Id"
RESULT_DEADLINE_S = 300
ENGINE = ("--processor", "transformers")


@pytest.fixture(scope="module")
def queue_path(tmp_path_factory):
    return tmp_path_factory.mktemp("async-queue") / "queue.sqlite3"


@pytest.fixture(scope="module")
def async_server(model_cache_dir, demo_model_dir, queue_path):
    """An --async server running one request at a time; the survival test kills it."""
    args = ["--async", "--queue-path", str(queue_path), "--service-name", SERVICE, *ENGINE]
    server = start_server(
        queue_path.parent / "first", model_cache_dir, *args, "--max-num-seqs", "1"
    )
    yield server
    stop(server.process)


def enqueue(server: Server, body: dict) -> str:
    response = requests.post(
        f"{server.url}/api/predict/{SERVICE}", json=body, headers=server.headers(), timeout=30
    )
    assert response.status_code == 200, response.text
    assert response.text.isdigit()
    return response.headers[ID_HEADER]


def sink(server: Server, request_id: str, wait: str = "0s") -> requests.Response:
    return requests.get(
        f"{server.url}/api/predict/{SERVICE}/sink",
        params={"requestId": request_id, "_timeout_": wait},
        headers=server.headers(),
        timeout=60,
    )


def results(server: Server, request_ids: list[str]) -> dict[str, tuple[str, dict]]:
    """Poll the sink as the platform's clients do, until every result is in: lastCode, answer."""
    found: dict[str, tuple[str, dict]] = {}
    deadline = time.monotonic() + RESULT_DEADLINE_S
    while len(found) < len(request_ids) and time.monotonic() < deadline:
        for request_id in request_ids:
            if request_id in found:
                continue
            response = sink(server, request_id, wait="2s")  # the server waits, not the client
            if response.status_code == 204:
                continue
            assert response.status_code == 200, response.text
            (frame,) = response.json()
            assert frame["tags"]["requestId"] == request_id
            found[request_id] = (
                frame["tags"]["lastCode"],
                json.loads(base64.b64decode(frame["data"])),
            )
    missing = [request_id for request_id in request_ids if request_id not in found]
    assert not missing, f"no result within {RESULT_DEADLINE_S} s for {missing}"
    return found


def test_queued_requests_come_out_of_the_sink_with_real_answers(async_server):
    prompts = [f"Question number {i}?" for i in range(5)]
    bodies = [{"prompt": p, "max_new_tokens": 8, "temperature": 0} for p in prompts]
    ids = [enqueue(async_server, body) for body in bodies]
    bad = enqueue(async_server, {"prompt": "x", "top_p": 7})
    answers = results(async_server, [*ids, bad])
    # A queued greedy answer is the one the engine gives the same chat through the OpenAI route.
    direct = requests.post(
        f"{async_server.url}/v1/chat/completions",
        json={
            "messages": [{"role": "user", "content": prompts[0]}],
            "max_tokens": 8,
            "temperature": 0,
        },
        headers=async_server.headers(),
        timeout=60,
    ).json()["choices"][0]["message"]["content"]
    for request_id, prompt in zip(ids, prompts, strict=True):
        code, answer = answers[request_id]
        assert code == "200"
        assert answer["usage"]["completion_tokens"] == 8
        assert answer["history"] == [[prompt, answer["response"]]]
    assert answers[ids[0]][1]["response"] == direct
    code, error = answers[bad]
    assert code == "400"
    assert "top_p" in error["error"]["message"]
    assert sink(async_server, "not-a-request-id").status_code == 404


def test_accepted_work_survives_a_kill_9_and_restart(async_server, queue_path, model_cache_dir):
    body = {"prompt": "Tell me a long story", "max_new_tokens": 200}
    ids = [enqueue(async_server, body) for _ in range(8)]
    # One at a time, 200 tokens each: most still wait when the process dies.
    os.killpg(async_server.process.pid, signal.SIGKILL)  # the runtime and any child, at once
    assert async_server.process.wait(timeout=30) == -signal.SIGKILL
    with contextlib.closing(sqlite3.connect(queue_path)) as db:  # what the dead process left
        left = dict(db.execute("SELECT state, COUNT(*) FROM items GROUP BY state").fetchall())
    assert left.get("pending", 0) >= 1
    assert left.get("running", 0) >= 1

    args = ["--async", "--queue-path", str(queue_path), "--service-name", SERVICE, *ENGINE]
    second = start_server(
        queue_path.parent / "second", model_cache_dir, *args, "--grace-period", "0"
    )
    try:
        recovered = [line for line in second.log().splitlines() if "back to pending" in line]
        assert recovered, "the requests running at the kill were not put back"
        print(f"\nleft at the kill: {left}; {recovered[0].split(': ', 2)[-1]}")
        answers = results(second, ids)
        assert {code for code, _ in answers.values()} == {"200"}
        assert {answer["usage"]["completion_tokens"] for _, answer in answers.values()} == {200}

        # A drain whose grace ends (at once here) before these finish leaves them pending.
        cut = [enqueue(second, {"prompt": "Go on", "max_new_tokens": 1800}) for _ in range(3)]
        running = 'llm_runtime_queue_items{state="running"} 3.0'
        for _ in range(100):  # until the workers have them (bounded)
            metrics = requests.get(f"{second.url}/metrics", timeout=10).text
            if running in metrics:
                break
        assert running in metrics
    finally:
        code = stop(second.process)
    assert code == 0, second.log()[-3000:]
    with contextlib.closing(sqlite3.connect(queue_path)) as db:
        marks = ",".join("?" * len(cut))
        query = f"SELECT state FROM items WHERE request_id IN ({marks})"
        rows = db.execute(query, cut).fetchall()
    assert [state for (state,) in rows] == ["pending"] * 3, rows  # handed back, no result
