"""The command line: `check`, `demo-model`, and `serve` failing fast with a clear message."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from tests.e2e.conftest import free_port, runtime_command


def run(*args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        runtime_command(*args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
    )


def test_check_describes_a_good_model(demo_model_dir):
    result = run("check", "--model", str(demo_model_dir))
    assert result.returncode == 0, result.stderr
    assert "LlamaForCausalLM" in result.stdout
    assert "max context:    2048" in result.stdout


def test_check_names_what_is_missing(demo_model_dir, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(demo_model_dir, broken)
    (broken / "tokenizer.json").unlink()
    result = run("check", "--model", str(broken))
    assert result.returncode == 1
    assert "no tokenizer" in result.stderr


def test_check_rejects_a_context_smaller_than_asked(demo_model_dir):
    result = run("check", "--model", str(demo_model_dir), "--max-model-len", "8192")
    assert result.returncode == 1
    assert "only 2048" in result.stderr


def test_check_rejects_an_architecture_vllm_cannot_run(demo_model_dir, tmp_path):
    odd = tmp_path / "odd"
    shutil.copytree(demo_model_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (odd / "config.json").write_text(json.dumps(config))
    result = run("check", "--model", str(odd))
    assert result.returncode == 1
    assert "cannot run architecture NoSuchModel" in result.stderr


def test_demo_model_command_writes_a_model_that_checks(tmp_path):
    result = run("demo-model", str(tmp_path / "demo"))
    assert result.returncode == 0
    assert run("check", "--model", str(tmp_path / "demo")).returncode == 0


def test_serve_refuses_a_broken_model_before_loading(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    result = run("serve", "--model", str(tmp_path), "--port", "1")
    assert result.returncode == 2
    assert "no weights" in result.stderr


def test_serve_refuses_a_missing_storage_mount(tmp_path):
    service = {"storage": [{"mount_path": str(tmp_path / "not-mounted"), "nfs": {}}]}
    (tmp_path / "service.json").write_text(json.dumps(service))
    result = run("serve", "--config", str(tmp_path / "service.json"))
    assert result.returncode == 2
    assert "not-mounted does not exist" in result.stderr


def test_serve_reports_failed_requirements(tmp_path):
    service = {"containers": [{"prepare": {"pythonRequirements": ["not a requirement!!"]}}]}
    (tmp_path / "service.json").write_text(json.dumps(service))
    result = run("serve", "--config", str(tmp_path / "service.json"))
    assert result.returncode == 2
    assert "installing python requirements" in result.stderr


def test_serve_rejects_bad_settings_with_their_source():
    result = run("serve", "--port", "99999")
    assert result.returncode == 2
    assert "port must be between 1 and 65535" in result.stderr
    result = run("serve", LLM_RUNTIME_MAX_NUM_SEQS="many")
    assert result.returncode == 2
    assert "max_num_seqs (from environment)" in result.stderr


def test_serve_rejects_unknown_engine_args(demo_model_dir):
    result = run(
        "serve",
        "--model",
        str(demo_model_dir),
        "--engine-arg",
        "no_such_arg=1",
        "--port",
        str(free_port()),
        timeout=300,
    )
    assert result.returncode != 0
    assert "unknown vLLM engine argument(s): no_such_arg" in result.stderr
