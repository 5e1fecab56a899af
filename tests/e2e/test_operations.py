"""What an operator's log shipper reads from the real `serve` command: JSON lines on stderr
(the runtime's and the access log), call records on stdout; and the Kubernetes service link
that used to stop the start. A custom processor serves, so the server is up in seconds."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import requests

from tests.e2e.conftest import free_port, runtime_command, stop, wait_until_ready

KINDS = Path(__file__).resolve().parents[1] / "fixtures" / "processors" / "kinds.py"


def test_json_logs_on_stderr_and_call_records_on_stdout(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        # A Service named llm-runtime in the namespace: Kubernetes sets this in the pod.
        "LLM_RUNTIME_PORT": "tcp://10.96.0.12:8000",
        "LLM_RUNTIME_LOG_FORMAT": "json",
    }
    stdout, stderr = tmp_path / "stdout", tmp_path / "stderr"
    with stdout.open("w") as out, stderr.open("w") as err:
        process = subprocess.Popen(
            runtime_command(
                *("serve", "--host", "127.0.0.1", "--port", str(port)),
                *("--processor-entry", str(KINDS), "--processor-mainclass", "Statuses"),
                *("--access-log", "--call-log", "/dev/stdout"),
            ),
            stdout=out,
            stderr=err,
            env=env,
            start_new_session=True,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 120)
        assert requests.post(f"{url}/api/predict/llm", data=b"created", timeout=30).text == "made"
    finally:
        assert stop(process) == 0
    logs = [json.loads(line) for line in stderr.read_text().splitlines()]  # every line JSON
    assert {"time", "level", "logger", "message"} <= logs[0].keys()
    assert not any("color_message" in r for r in logs)  # no terminal colours in shipped logs
    (link,) = [r for r in logs if "Kubernetes service link" in r["message"]]
    assert link["level"] == "WARNING"
    access = [r for r in logs if r["logger"] == "uvicorn.access" and r.get("method") == "POST"]
    assert [(r["path"], r["status"]) for r in access] == [("/api/predict/llm", 201)]
    assert any(r["message"].startswith("ready on port") for r in logs)
    (record,) = [json.loads(line) for line in stdout.read_text().splitlines()]  # stdout: calls
    assert (record["route"], record["status"], record["request"]) == (
        "/api/predict/llm",
        201,
        "created",
    )
