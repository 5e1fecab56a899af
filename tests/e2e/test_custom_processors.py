"""Custom processors through the real `serve` command, and a user's file run with python."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import (
    TOKEN,
    free_port,
    runtime_command,
    spawn_server,
    stop,
    wait_until_ready,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples/custom_processors"


def test_service_json_deploys_the_llm_example_unmodified(demo_model_dir, demo_tokenizer, tmp_path):
    port = free_port()
    service = {
        "name": "tiny",
        "token": TOKEN,
        "processor_type": "python",
        "processor_path": str(EXAMPLES / "tiny_llm"),
        "processor_entry": "app.py",
        "processor_mainclass": "TinyLLMProcessor",
        "model_path": str(demo_model_dir),
        "metadata": {"rpc": {"worker_threads": 2}},
        "containers": [{"port": port}],
    }
    (tmp_path / "service.json").write_text(json.dumps(service))
    server = spawn_server(
        tmp_path, port, ["--config", str(tmp_path / "service.json")], dict(os.environ)
    )
    try:
        body = {"prompt": "Once upon a time", "max_new_tokens": 8}
        response = requests.post(
            f"{server.url}/api/predict/tiny", json=body, headers=server.headers(), timeout=120
        )
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["completion_tokens"] == 8
        # the same greedy text as transformers gives in this process
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(demo_model_dir, dtype=torch.float32)
        inputs = demo_tokenizer(body["prompt"], return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
        expected = demo_tokenizer.decode(
            output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
        )
        assert answer["response"] == expected
        assert requests.post(f"{server.url}/", data=b"{}", timeout=30).status_code == 401
        bad = requests.post(
            f"{server.url}/", data=b"not json", headers=server.headers(), timeout=30
        )
        assert bad.status_code == 400
        assert b"expected JSON" in bad.content
        health = requests.get(f"{server.url}/health", timeout=10).json()
        assert health["status"] == "alive"
    finally:
        assert stop(server.process) == 0


def test_a_users_file_run_directly_with_python_serves(demo_model_dir, tmp_path):
    port = free_port()
    with (tmp_path / "run.log").open("w") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                str(EXAMPLES / "echo/app.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--model",
                str(demo_model_dir),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=tmp_path,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, 60)
        response = requests.post(url, data=b"direct", timeout=30)
        assert response.json()["echo"] == "DIRECT"
        assert "model.safetensors" in response.json()["model_files"]
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--processor-entry", "missing.py"], "processor entry missing.py does not exist"),
        (
            [
                "--processor-entry",
                str(ROOT / "tests/fixtures/processors/kinds.py"),
                "--processor-mainclass",
                "FailsToInitialize",
            ],
            "initialize() failed: RuntimeError: weights missing",
        ),
    ],
)
def test_a_processor_that_cannot_start_exits_2_saying_why(args, needle, tmp_path):
    result = subprocess.run(
        runtime_command("serve", "--port", str(free_port()), *args),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert needle in result.stderr
