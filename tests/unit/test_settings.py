"""Settings are declared once: every spelling users have (flags, environment names, service-JSON
keys) still reaches its setting, and the README's table is the one the declarations make."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.config import SETTINGS, load_config
from runtime.config.flags import serve_config
from runtime.config.reference import BEGIN, END, settings_table

ROOT = Path(__file__).resolve().parents[2]

# Every flag `llm-runtime serve` took before settings were declared once, with a value and
# where that value must land.
FLAGS = [
    (["--model", "/m"], lambda c: c.engine.model_path == "/m"),
    (["--processor", "transformers"], lambda c: c.processor == "transformers"),
    (["--host", "127.0.0.2"], lambda c: c.server.host == "127.0.0.2"),
    (["--port", "9001"], lambda c: c.server.port == 9001),
    (["--token", "t"], lambda c: c.server.token == "t"),
    (["--service-name", "svc"], lambda c: c.server.service_name == "svc"),
    (["--served-model-name", "m"], lambda c: c.engine.served_model_name == "m"),
    (["--max-model-len", "512"], lambda c: c.engine.max_model_len == 512),
    (["--dtype", "bfloat16"], lambda c: c.engine.dtype == "bfloat16"),
    (["--max-num-seqs", "3"], lambda c: c.engine.max_num_seqs == 3),
    (["--gpu-memory-utilization", "0.5"], lambda c: c.engine.gpu_memory_utilization == 0.5),
    (["--tensor-parallel-size", "2"], lambda c: c.engine.tensor_parallel_size == 2),
    (["--log-level", "debug"], lambda c: c.server.log_level == "debug"),
    (["--grace-period", "7"], lambda c: c.lifecycle.grace_period == 7),
    (["--request-timeout", "3"], lambda c: c.lifecycle.request_timeout == 3),
    (["--stream-interval", "auto"], lambda c: c.server.stream_interval == "auto"),
    (["--max-queue-size", "4"], lambda c: c.lifecycle.max_queue_size == 4),
    (["--max-body-bytes", "99"], lambda c: c.lifecycle.max_body_bytes == 99),
    (["--warm-up", "/w.jsonl"], lambda c: c.lifecycle.warm_up_path == "/w.jsonl"),
    (["--shm-size", "2"], lambda c: c.lifecycle.shm_size_gb == 2),
    (["--shm-policy", "fail"], lambda c: c.lifecycle.shm_policy == "fail"),
    (["--readiness-path", "/r"], lambda c: c.server.readiness_path == "/r"),
    (["--liveness-path", "/l"], lambda c: c.server.liveness_path == "/l"),
    (["--processor-entry", "app.py"], lambda c: c.custom.entry == "app.py"),
    (["--processor-path", "/p"], lambda c: c.custom.path == "/p"),
    (["--processor-mainclass", "P"], lambda c: c.custom.mainclass == "P"),
    (["--model-entry", "e"], lambda c: c.custom.model_entry == "e"),
    (["--model-config", "{}"], lambda c: c.custom.model_config == "{}"),
    (["--worker-threads", "2"], lambda c: c.custom.worker_threads == 2),
    (["--call-log", "/c"], lambda c: c.call_log.path == "/c"),
    (["--call-log-max-bytes", "10"], lambda c: c.call_log.max_bytes == 10),
    (["--call-log-backups", "2"], lambda c: c.call_log.backups == 2),
    (["--queue-path", "/q"], lambda c: c.queue.path == "/q"),
    (["--queue-result-ttl", "5"], lambda c: c.queue.result_ttl == 5),
    (["--queue-url", "redis://h:1/0"], lambda c: c.queue.url == "redis://h:1/0"),
    (["--queue-password", "pw"], lambda c: c.queue.password == "pw"),
    (["--queue-visibility-timeout", "9"], lambda c: c.queue.visibility_timeout == 9),
    (["--engine-arg", "a=1"], lambda c: c.engine.extra_args == {"a": 1}),
    (["--auth-health"], lambda c: c.server.auth_health),
    (["--webui"], lambda c: c.server.webui),
    (["--async"], lambda c: c.queue.enabled),
    (["--chatllm-stream-default"], lambda c: c.server.chatllm_stream_default),
    (["--allowed-origins", '["http://a"]'], lambda c: c.http.allowed_origins == ("http://a",)),
    (["--allowed-methods", '["GET"]'], lambda c: c.http.allowed_methods == ("GET",)),
    (["--allowed-headers", '["x-a"]'], lambda c: c.http.allowed_headers == ("x-a",)),
    (["--allow-credentials"], lambda c: c.http.allow_credentials),
    (["--root-path", "/llm"], lambda c: c.http.root_path == "/llm"),
    (["--disable-fastapi-docs"], lambda c: c.http.disable_fastapi_docs),
    (["--sse-keep-alive", "5"], lambda c: c.http.sse_keep_alive == 5),
    (["--log-format", "json"], lambda c: c.observability.log_format == "json"),
    (["--access-log"], lambda c: c.observability.access_log),
    (["--log-stats-interval", "0"], lambda c: c.observability.log_stats_interval == 0),
    (
        ["--otlp-traces-endpoint", "http://c:4317"],
        lambda c: c.engine.traces_endpoint == "http://c:4317",
    ),
    (["--engine-request-stats"], lambda c: c.engine.engine_request_stats),
]

# Every environment name (LLM_RUNTIME_<setting>) that existed, with a value.
ENVIRONMENT = {
    "HOST": "h",
    "PORT": "1",
    "TOKEN": "t",
    "SERVICE_NAME": "s",
    "CHATLLM_STREAM_DEFAULT": "true",
    "LOG_LEVEL": "debug",
    "AUTH_HEALTH": "1",
    "READINESS_PATH": "/r",
    "LIVENESS_PATH": "/l",
    "WEBUI": "true",
    "STREAM_INTERVAL": "2",
    "GRACE_PERIOD": "1",
    "REQUEST_TIMEOUT": "1",
    "MAX_QUEUE_SIZE": "1",
    "MAX_BODY_BYTES": "1",
    "WARM_UP_PATH": "/w",
    "SHM_SIZE_GB": "1",
    "SHM_POLICY": "fail",
    "HOST_RESOURCES": '{"cpu": 2}',
    "PROCESSOR": "vllm",
    "MODEL_PATH": "/m",
    "SERVED_MODEL_NAME": "m",
    "MAX_MODEL_LEN": "1",
    "DTYPE": "float16",
    "MAX_NUM_SEQS": "1",
    "GPU_MEMORY_UTILIZATION": "0.5",
    "TENSOR_PARALLEL_SIZE": "1",
    "ENGINE_ARGS": '{"a": 1}',
    "PROCESSOR_ENTRY": "app.py",
    "PROCESSOR_PATH": "/p",
    "PROCESSOR_MAINCLASS": "P",
    "MODEL_ENTRY": "e",
    "MODEL_CONFIG": "c",
    "WORKER_THREADS": "1",
    "PYTHON_REQUIREMENTS": "einops",
    "PYTHON_REQUIREMENTS_PATH": "/req.txt",
    "STORAGE_MOUNTS": "/a /b",
    "CALL_LOG": "/c",
    "CALL_LOG_MAX_BYTES": "1",
    "CALL_LOG_BACKUPS": "1",
    "ASYNC": "true",
    "QUEUE_PATH": "/q",
    "QUEUE_RESULT_TTL": "1",
    "ALLOWED_ORIGINS": '["http://a"]',
    "ALLOWED_METHODS": "GET POST",
    "ALLOWED_HEADERS": "x-a",
    "ALLOW_CREDENTIALS": "1",
    "ROOT_PATH": "/llm",
    "DISABLE_FASTAPI_DOCS": "1",
    "SSE_KEEP_ALIVE": "5",
    "LOG_FORMAT": "json",
    "ACCESS_LOG": "1",
    "LOG_STATS_INTERVAL": "0",
    "OTLP_TRACES_ENDPOINT": "http://c:4317",
    "ENGINE_REQUEST_STATS": "1",
    "QUEUE_URL": "rediss://h:1/0",
    "QUEUE_PASSWORD": "pw",
    "QUEUE_VISIBILITY_TIMEOUT": "3",
}

# Every service-JSON key read before, as a document holding it; none may be reported ignored.
JSON_KEYS = [
    {"name": "n"},
    {"metadata": {"name": "n"}},
    {"token": "t"},
    {"model_path": "/m"},
    {"processor": "pytorch_gpu_1.10"},
    {"processor_type": "python"},
    {"processor_entry": "a.py", "processor_path": "/p", "processor_mainclass": "P"},
    {"model_entry": "e", "model_config": {"k": 1}},
    {"warm_up_data_path": "/w"},
    {"containers": [{"port": 1, "env": [{"name": "A", "value": "1"}]}]},
    {"containers": [{"prepare": {"pythonRequirements": ["x"], "pythonRequirementsPath": "/r"}}]},
    {"containers": [{"readiness_check": {"http_get": {"path": "/r"}, "period_seconds": 1}}]},
    {"containers": [{"health_check": {"http_get": {"path": "/r"}}}]},
    {"containers": [{"liveness_check": {"http_get": {"path": "/l"}}}]},
    {"containers": [{"startup_check": {"http_get": {"path": "/l"}}}]},
    {"metadata": {"rpc": {"keepalive": 1, "max_queue_size": 1, "worker_threads": 1}}},
    {"rpc": {"keepalive": 1, "max_queue_size": 1, "worker_threads": 1}},
    {"metadata": {"rpc": {"health_check_path": "/r", "enable_sigterm": False}}},
    {"rpc": {"health_check_path": "/r"}},
    {"metadata": {"workers": 1}},
    {"metadata": {"eas": {"termination_grace_period": 1}}},
    {"runtime": {"termination_grace_period": 1}},
    {"metadata": {"shm_size": 1, "cpu": 1, "memory": 1, "gpu": 0}},
    {"storage": [{"mount_path": "/dev/shm", "empty_dir": {"medium": "memory", "size_limit": 1}}]},
    {"metadata": {"enable_webservice": True, "type": "Async"}},
    {"metadata": {"call_log": {"path": "/c", "max_bytes": 1, "backups": 1}}},
    {"metadata": {"call_log": "/c"}},
    {"metadata": {"queue": {"url": "redis://h:1/0", "password": "p", "visibility_timeout": 5}}},
]


@pytest.mark.parametrize(("argv", "check"), FLAGS, ids=[" ".join(a[:1]) for a, _ in FLAGS])
def test_every_flag_reaches_its_setting(argv, check):
    assert check(serve_config(argv, {}))


def test_every_environment_name_is_read():
    environ = {f"LLM_RUNTIME_{name}": value for name, value in ENVIRONMENT.items()}
    config = load_config({}, environ)
    assert config.redacted() != load_config({}, {}).redacted()
    from runtime.config import env_values

    assert set(env_values(environ)) == {name.lower() for name in ENVIRONMENT}


@pytest.mark.parametrize("document", JSON_KEYS, ids=[json.dumps(d)[:60] for d in JSON_KEYS])
def test_every_service_json_key_is_read(tmp_path, document):
    path = tmp_path / "service.json"
    path.write_text(json.dumps(document))
    config = load_config({}, {}, str(path))
    assert config.ignored_keys == ()
    assert config != load_config({}, {})


def test_every_setting_has_a_help_and_an_environment_name_and_is_in_the_help():
    from runtime.cli import build_parser

    parser = build_parser()
    serve = parser._subparsers._group_actions[0].choices["serve"]  # type: ignore[union-attr]
    text = serve.format_help()
    for setting in SETTINGS.values():
        assert setting.help
        assert setting.env.startswith("LLM_RUNTIME_")
        if setting.flag is not None:
            assert setting.flag in text
            assert setting.env in text


def test_the_readme_holds_the_table_the_declarations_make():
    readme = (ROOT / "README.md").read_text()
    start, end = readme.index(BEGIN) + len(BEGIN), readme.index(END)
    assert readme[start:end].strip() == settings_table().strip(), (
        "the README's settings table is out of date: python -m runtime.config.reference"
    )


def test_a_vllm_serve_command_line_runs_with_the_program_name_changed():
    pytest.importorskip("vllm")
    argv = [
        *("/mnt/models/qwen", "--port", "8001", "--max-model-len", "4096"),
        *("--enable-prefix-caching", "--api-key", "k", "--max-num-batched-tokens", "512"),
        *("--tool-call-parser", "hermes", "--enable-auto-tool-choice"),
    ]
    config = serve_config(argv, {})
    assert config.engine.model_path == "/mnt/models/qwen"  # vLLM's positional model
    assert (config.server.port, config.engine.max_model_len) == (8001, 4096)
    assert config.server.token == "k"  # --api-key is the service token
    assert config.engine.extra_args == {
        "enable_prefix_caching": True,
        "max_num_batched_tokens": 512,
    }
    assert config.server.tool_call_parser == "hermes"
    assert config.server.enable_auto_tool_choice is True
    assert load_config({}, {"VLLM_API_KEY": "from-vllm"}).server.token == "from-vllm"
    both = {"VLLM_API_KEY": "from-vllm", "LLM_RUNTIME_TOKEN": "ours"}
    assert load_config({}, both).server.token == "ours"


def test_vllm_flags_are_checked_by_vllms_parser_and_unimplemented_ones_refused():
    pytest.importorskip("vllm")
    from runtime.config import ConfigError

    with pytest.raises(SystemExit) as exited:  # vLLM's own check of its flag's value
        serve_config(["--block-size", "many"], {})
    assert exited.value.code == 2
    with pytest.raises(ConfigError, match="vLLM's --ssl-keyfile is not supported"):
        serve_config(["--ssl-keyfile", "/k.pem"], {})
    assert serve_config(["--disable-uvicorn-access-log"], {}).engine.extra_args == {}


def test_serve_help_lists_vllms_engine_arguments(capsys):
    pytest.importorskip("vllm")
    with pytest.raises(SystemExit):
        serve_config(["--help"], {})
    text = capsys.readouterr().out
    assert "--grace-period" in text
    assert "vLLM's engine arguments" in text
    assert "--enable-prefix-caching" in text
    assert "--kv-cache-dtype" in text
