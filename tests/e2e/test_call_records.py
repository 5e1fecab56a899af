"""Call records of the real server (its service JSON sets `metadata.call_log.path`): one JSON
line per call from every API, read as jq would."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import uuid

import requests

from tests.e2e.conftest import CALL_LOG, TOKEN, Server, ask


def records_containing(server: Server, marker: str, count: int, timeout: float = 30) -> list:
    """The records whose request mentions `marker`, once there are `count` (written off the
    request path, so they may land a moment after the answer)."""
    path = server.log_path.parent / CALL_LOG
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        found = [json.loads(line) for line in lines if marker in line]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)  # polling a condition with a deadline


def test_every_api_is_recorded_once_complete(server: Server, openai_client):
    marker = uuid.uuid4().hex
    stream = openai_client.chat.completions.create(
        model=openai_client.models.list().data[0].id,
        messages=[{"role": "user", "content": f"OpenAI {marker}"}],
        max_tokens=5,
        stream=True,
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    chat = requests.post(
        f"{server.url}/",
        json={"prompt": f"ChatLLM {marker} {TOKEN}", "max_new_tokens": 4},
        headers=server.headers(),
        timeout=120,
    ).json()
    ws = server.websocket()
    try:
        answer = "".join(ask(ws, {"prompt": f"WebSocket {marker}", "max_new_tokens": 3}))
    finally:
        ws.close()

    openai_record, chat_record, ws_record = records_containing(server, marker, 3)
    assert openai_record["route"] == "/v1/chat/completions"
    assert openai_record["method"] == "POST"
    assert openai_record["response"] == streamed
    assert openai_record["output_tokens"] == 5
    assert chat_record["response"] == chat["response"]
    assert chat_record["prompt_tokens"] == chat["usage"]["prompt_tokens"]
    assert chat_record["request"]["prompt"] == f"ChatLLM {marker} <redacted>"
    assert ws_record["method"] == "WEBSOCKET"
    assert ws_record["response"] == answer
    for record in (openai_record, chat_record, ws_record):
        assert record["status"] == 200
        assert record["finish_reason"] == "length"
        assert 0 < record["ttft_s"] <= record["latency_s"]
        assert record["client"].startswith("127.0.0.1:")
        assert record["request_id"]

    jq = shutil.which("jq")
    if jq:  # the file as a jq user reads it
        path = server.log_path.parent / CALL_LOG
        selected = subprocess.run(
            [jq, "-r", f'select(.request | tostring | contains("{marker}")) | .status'],
            input=path.read_bytes(),
            capture_output=True,
            check=True,
        )
        assert selected.stdout.split() == [b"200"] * 3
