"""Logs an operator can ship: JSON lines for the runtime, the access log and vLLM alike, on
stderr; the throughput line; call records on stdout."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys

import pytest

from runtime.logs import (
    AccessFields,
    configure_logging,
    make_formatter,
    vllm_logging_config,
    write_vllm_logging_config,
)
from runtime.metrics import Metrics
from runtime.stats_log import ThroughputLog
from tests.unit.conftest import served_app


@pytest.fixture
def root_logging():
    """The root logger with one handler writing to a buffer; restored afterwards."""
    root = logging.getLogger()
    saved = (root.level, root.handlers[:], os.environ.get("VLLM_LOGGING_CONFIG_PATH"))
    buffer = io.StringIO()
    root.handlers = [logging.StreamHandler(buffer)]
    yield buffer
    root.setLevel(saved[0])
    root.handlers = saved[1]
    if saved[2] is None:
        os.environ.pop("VLLM_LOGGING_CONFIG_PATH", None)


def test_json_lines_have_time_level_logger_message_and_the_traceback(root_logging, tmp_path):
    configure_logging("json", "info", tmp_path)
    log = logging.getLogger("runtime.test")
    log.debug("not at info")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("failed with %s", "details")
    (line,) = root_logging.getvalue().splitlines()
    record = json.loads(line)
    assert record["level"] == "ERROR"
    assert record["logger"] == "runtime.test"
    assert record["message"] == "failed with details"
    assert record["time"].startswith("20")
    assert "T" in record["time"]
    assert "ValueError: boom" in record["exc_info"]


def test_the_access_log_line_carries_its_parts_as_fields(root_logging, tmp_path, monkeypatch):
    configure_logging("json", "info", tmp_path)
    access = logging.getLogger("uvicorn.access")
    # As uvicorn leaves it with --access-log (another test's server may have turned it off).
    monkeypatch.setattr(access, "propagate", True)
    monkeypatch.setattr(access, "handlers", [])
    # What uvicorn logs for each request (its format and arguments).
    access.info('%s - "%s %s HTTP/%s" %d', "10.0.0.7:51234", "POST", "/v1/completions", "1.1", 200)
    record = json.loads(root_logging.getvalue())
    assert record["message"] == '10.0.0.7:51234 - "POST /v1/completions HTTP/1.1" 200'
    assert (record["method"], record["path"], record["status"]) == ("POST", "/v1/completions", 200)
    assert record["client"] == "10.0.0.7:51234"
    assert sum(isinstance(f, AccessFields) for f in access.filters) == 1


def test_text_stays_the_default_format(root_logging, tmp_path):
    configure_logging("text", "warning", tmp_path)
    logging.getLogger("runtime.test").warning("plain %d", 1)
    assert root_logging.getvalue().rstrip().endswith("WARNING runtime.test: plain 1")


def test_vllm_logs_like_the_runtime_on_stderr_in_its_own_processes(tmp_path):
    pytest.importorskip("vllm")
    path = write_vllm_logging_config(tmp_path, "json", "info")
    # What vLLM's engine does as it starts, in the runtime's process and in each of its own.
    code = (
        "from vllm.config.logging import LoggingConfig\n"
        "from vllm.logger import configure_logging, init_logger\n"
        "configure_logging(LoggingConfig())\n"
        "init_logger('vllm.engine.x').info('hello %s', 1)\n"
    )
    env = {**os.environ, "VLLM_LOGGING_CONFIG_PATH": str(path), "VLLM_CONFIGURE_LOGGING": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # stdout is left to call records
    lines = [json.loads(line) for line in done.stderr.splitlines() if "hello" in line]
    assert [(r["logger"], r["level"], r["message"]) for r in lines] == [
        ("vllm.engine.x", "INFO", "hello 1")
    ]


def test_vllm_keeps_the_runtimes_loggers_when_it_applies_its_config():
    config = vllm_logging_config("text", "debug")
    assert config["disable_existing_loggers"] is False
    assert config["loggers"]["vllm"]["level"] == "DEBUG"
    assert config["handlers"]["runtime"]["stream"] == "ext://sys.stderr"


def test_a_user_set_vllm_logging_config_is_left_alone(root_logging, tmp_path, monkeypatch):
    monkeypatch.setenv("VLLM_LOGGING_CONFIG_PATH", "/etc/mine.json")
    configure_logging("json", "info", tmp_path)
    assert os.environ["VLLM_LOGGING_CONFIG_PATH"] == "/etc/mine.json"
    assert not (tmp_path / "logging").exists()


def test_the_throughput_line_while_busy_and_once_when_idle(fake):
    served = served_app(fake)
    metrics: Metrics = served.parts.metrics
    throughput = ThroughputLog(metrics, fake, served.parts.admission)
    assert throughput.line() is None  # idle: nothing to say
    timer = metrics.request()
    for _ in range(5):
        timer.step(num_new_tokens=2, num_prompt_tokens=7)
    fake.running.add("r1")  # the engine reports one running
    text, fields = throughput.line()
    assert fields["generation_tokens_per_s"] > 0
    assert fields["prompt_tokens_per_s"] > 0
    assert fields["num_running"] == 1
    assert "engine: 1 running, 0 waiting" in text
    assert metrics.tokens.generation == 10
    assert metrics.tokens.prompt == 7
    fake.running.clear()
    text, fields = throughput.line()  # the line that says it went idle
    assert fields["generation_tokens_per_s"] == 0.0
    assert throughput.line() is None


def test_json_formatter_serializes_extra_fields():
    record = logging.LogRecord("runtime.stats_log", logging.INFO, "", 0, "line", (), None)
    record.num_running = 3
    assert json.loads(make_formatter("json").format(record))["num_running"] == 3


def test_python_warnings_become_log_lines_of_the_format(root_logging, tmp_path):
    import warnings

    logging.captureWarnings(False)  # pytest swaps the warning hooks per test: start from none
    configure_logging("json", "info", tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.warn("an old API", FutureWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
    record = json.loads(root_logging.getvalue())
    assert record["logger"] == "py.warnings"
    assert "FutureWarning: an old API" in record["message"]
