"""Custom processors on the platform's Python API: loading, statuses, concurrency, errors."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from processors.custom_processor import CustomProcessor, CustomProcessorError
from processors.settings import CustomSettings, EngineSettings
from runtime.app import RawApp, ServingParts
from runtime.config import load_config
from tests.unit.conftest import ServedClient, loaded

ROOT = Path(__file__).resolve().parents[2]
KINDS = ROOT / "tests/fixtures/processors/kinds.py"
ECHO = ROOT / "examples/custom_processors/echo/app.py"


def serve_custom(entry: Path, mainclass: str | None = None, model_path: str = "", **settings):
    config = load_config(settings, environ={})
    processor = CustomProcessor(
        EngineSettings(model_path=model_path),
        CustomSettings(
            entry=str(entry), mainclass=mainclass, worker_threads=settings.get("worker_threads")
        ),
    )
    return ServedClient(loaded(RawApp(ServingParts.for_config(config), processor))[0])


def test_the_echo_example_serves_both_platform_routes(demo_model_dir):
    client = serve_custom(ECHO, model_path=str(demo_model_dir), service_name="echo")
    response = client.post("/", content=b"hello")
    assert response.status_code == 200
    assert response.json()["echo"] == "HELLO"
    assert "config.json" in response.json()["model_files"]  # get_model_path() worked
    assert client.post("/api/predict/echo", content=b"x").json()["echo"] == "X"
    empty = client.post("/")
    assert (empty.status_code, empty.content) == (400, b"send a body to echo")


@pytest.mark.parametrize(
    ("command", "status", "body"),
    [
        ("zero", 200, b"ok with 0"),
        ("created", 201, b"made"),
        ("bare", 200, b"a bare str"),
        ("other", 404, b"unknown command"),
    ],
)
def test_statuses_pass_through_and_0_means_200(command, status, body):
    response = serve_custom(KINDS, "Statuses").post("/", content=command.encode())
    assert (response.status_code, response.content) == (status, body)


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("raise", "process() raised ValueError: the user's code failed"),
        ("bogus-status", "status 999, not an HTTP status"),
    ],
)
def test_errors_in_user_code_are_500_with_the_message(command, needle):
    client = serve_custom(KINDS, "Statuses")
    response = client.post("/", content=command.encode())
    assert response.status_code == 500
    assert needle in response.json()["error"]["message"]
    assert client.post("/", content=b"zero").status_code == 200  # and the server lives on


def test_worker_threads_calls_run_at_once():
    client = serve_custom(KINDS, "ThreeAtOnce", worker_threads=3)
    with ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda _: client.post("/", content=b"go"), range(3)))
    assert [r.status_code for r in responses] == [200, 200, 200]


def test_the_request_timeout_applies_to_custom_processors():
    client = serve_custom(KINDS, "Sleeper", request_timeout=0.2)
    response = client.post("/", content=b"5")
    assert response.status_code == 408
    assert "request timeout of 0.2 s" in response.json()["error"]["message"]
    client.served.processor._user.release.set()  # let the thread finish


def test_openai_routes_explain_what_a_custom_processor_takes():
    response = serve_custom(KINDS, "Statuses").post("/v1/completions", json={"prompt": "x"})
    assert response.status_code == 400
    assert "send the request body to POST /" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("entry", "mainclass", "needle"),
    [
        (ROOT / "nope/app.py", None, "processor entry .*nope/app.py does not exist"),
        (KINDS, "Missing", "has no class Missing derived from allspark.BaseProcessor"),
        (KINDS, None, "exactly one allspark.BaseProcessor subclass.*found: FailsToInitialize"),
        (KINDS, "FailsToInitialize", r"initialize\(\) failed: RuntimeError: weights missing"),
    ],
)
def test_processors_that_cannot_start_say_why(entry, mainclass, needle):
    processor = CustomProcessor(
        EngineSettings(model_path=""), CustomSettings(entry=str(entry), mainclass=mainclass)
    )
    with pytest.raises(CustomProcessorError, match=needle):
        asyncio.run(processor.start())


def test_a_syntax_error_in_the_users_file_is_reported(tmp_path):
    (tmp_path / "app.py").write_text("import allspark\nclass Broken(:\n")
    processor = CustomProcessor(
        EngineSettings(model_path=""), CustomSettings(entry="app.py", path=str(tmp_path))
    )
    with pytest.raises(CustomProcessorError, match="importing .*app.py failed: SyntaxError"):
        asyncio.run(processor.start())
