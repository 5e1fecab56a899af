"""Config precedence, the service JSON's keys and aliases, and clear errors for bad values."""

from __future__ import annotations

import json

import pytest

from runtime.cli import build_parser
from runtime.config import ConfigError, load_config
from runtime.config.flags import parse_key_values as parse_engine_args


def write_json(tmp_path, document) -> str:
    path = tmp_path / "service.json"
    path.write_text(json.dumps(document))
    return str(path)


SERVICE = {
    "name": "qwen-chat",
    "token": "from-json",
    "model_path": "/mnt/model",
    "storage": [{"mount_path": "/mnt/model", "oss": {"path": "oss://bucket/qwen"}}],
    "containers": [
        {
            "image": "registry/llm-runtime:latest",
            "port": 9000,
            "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "2"}],
            "prepare": {"pythonRequirements": ["einops==0.8.0"]},
        }
    ],
    "metadata": {"instance": 1, "rpc": {"keepalive": 60000}},
}


def test_service_json_keys_become_settings(tmp_path):
    config = load_config({}, {}, write_json(tmp_path, SERVICE))
    assert config.server.service_name == "qwen-chat"
    assert config.server.token == "from-json"
    assert config.server.port == 9000
    assert config.engine.model_path == "/mnt/model"
    assert config.prepare.storage_mounts == ("/mnt/model",)
    assert config.prepare.python_requirements == ("einops==0.8.0",)
    assert config.prepare.container_env == (("VLLM_CPU_KVCACHE_SPACE", "2"),)


def test_unknown_keys_are_reported_not_fatal(tmp_path):
    config = load_config({}, {}, write_json(tmp_path, SERVICE))
    assert set(config.ignored_keys) == {"containers.0.image", "metadata.instance"}


def test_lifecycle_keys_and_their_units(tmp_path):
    document = {
        "metadata": {
            "rpc": {"keepalive": 60000, "max_queue_size": 8, "health_check_path": "/probe"},
            "eas": {"termination_grace_period": 45},
            "shm_size": 4,
            "cpu": 8,
            "memory": 32000,
            "gpu": 1,
        },
        "warm_up_data_path": "/data/warm.jsonl",
        "containers": [{"liveness_check": {"http_get": {"path": "/alive"}, "period_seconds": 5}}],
    }
    config = load_config({}, {}, write_json(tmp_path, document))
    lifecycle = config.lifecycle
    assert lifecycle.request_timeout == 60.0  # keepalive is in milliseconds
    assert (lifecycle.max_queue_size, lifecycle.grace_period) == (8, 45.0)
    assert (lifecycle.shm_size_gb, lifecycle.warm_up_path) == (4.0, "/data/warm.jsonl")
    assert dict(lifecycle.host_resources) == {"cpu": 8, "memory": 32000, "gpu": 1}
    assert (config.server.readiness_path, config.server.liveness_path) == ("/probe", "/alive")
    assert config.ignored_keys == ()  # probe timing is the orchestrator's, not ignored


def test_lifecycle_aliases(tmp_path):
    document = {
        "rpc": {"keepalive": 500, "max_queue_size": 3},
        "runtime": {"termination_grace_period": 12},
        "containers": [{"readiness_check": {"http_get": {"path": "/r"}}}],
        "storage": [
            {"mount_path": "/dev/shm", "empty_dir": {"medium": "memory", "size_limit": 16}}
        ],
    }
    config = load_config({}, {}, write_json(tmp_path, document))
    assert config.lifecycle.request_timeout == 0.5
    assert (config.lifecycle.max_queue_size, config.lifecycle.grace_period) == (3, 12.0)
    assert config.lifecycle.shm_size_gb == 16.0
    assert config.server.readiness_path == "/r"


def test_disabled_sigterm_means_no_drain_unless_a_grace_is_given(tmp_path):
    document = {"metadata": {"rpc": {"enable_sigterm": False}}}
    assert load_config({}, {}, write_json(tmp_path, document)).lifecycle.grace_period == 0
    document["metadata"]["eas"] = {"termination_grace_period": 20}
    assert load_config({}, {}, write_json(tmp_path, document)).lifecycle.grace_period == 20


def test_the_processor_key_selects_a_processor(tmp_path):
    def processor(document: dict) -> tuple[str, tuple[str, ...]]:
        config = load_config({}, {}, write_json(tmp_path, document))
        return config.processor, config.ignored_keys

    assert processor({"processor": "transformers"}) == ("transformers", ())
    assert processor({"processor": "pytorch_gpu_1.10"}) == ("transformers", ())
    assert processor({"processor": "tensorflow_cpu_2.3"}) == ("auto", ("processor",))
    assert processor({"processor": "vllm", "processor_type": "python"})[0] == "custom"


def test_metadata_name_is_an_alias_of_name(tmp_path):
    document = {"metadata": {"name": "aliased"}}
    assert load_config({}, {}, write_json(tmp_path, document)).server.service_name == "aliased"
    document["name"] = "top"
    assert load_config({}, {}, write_json(tmp_path, document)).server.service_name == "top"


def test_precedence_is_defaults_json_env_cli(tmp_path):
    path = write_json(tmp_path, SERVICE)
    assert load_config({}, {}).server.port == 8000
    assert load_config({}, {}, path).server.port == 9000
    env = {"LLM_RUNTIME_PORT": "9100", "LLM_RUNTIME_TOKEN": "from-env"}
    config = load_config({}, env, path)
    assert (config.server.port, config.server.token) == (9100, "from-env")
    config = load_config({"port": "9200"}, env, path)
    assert (config.server.port, config.server.token) == (9200, "from-env")


def test_real_environment_outranks_the_files_container_env(tmp_path):
    from runtime.prepare import apply_container_env

    config = load_config({}, {}, write_json(tmp_path, SERVICE))
    environ = {"VLLM_CPU_KVCACHE_SPACE": "5"}
    apply_container_env(config.prepare, environ)
    assert environ["VLLM_CPU_KVCACHE_SPACE"] == "5"
    environ = {}
    apply_container_env(config.prepare, environ)
    assert environ["VLLM_CPU_KVCACHE_SPACE"] == "2"


def test_container_env_can_set_runtime_settings(tmp_path):
    document = {"containers": [{"env": [{"name": "LLM_RUNTIME_MAX_MODEL_LEN", "value": "512"}]}]}
    assert load_config({}, {}, write_json(tmp_path, document)).engine.max_model_len == 512


def test_cli_flags_parse_into_settings():
    args = vars(
        build_parser().parse_args(
            [
                "serve",
                "--model",
                "/m",
                "--port",
                "1234",
                "--engine-arg",
                "enforce_eager=true",
                "--engine-arg",
                "swap-space=4",
                "--chatllm-stream-default",
                "--stream-interval",
                "auto",
            ]
        )
    )
    assert args["model_path"] == "/m"
    assert "host" not in args
    args.pop("command"), args.pop("config")
    args["engine_args"] = parse_engine_args(args["engine_args"])
    config = load_config(args, {})
    assert config.engine.extra_args == {"enforce_eager": True, "swap_space": 4}
    assert config.server.chatllm_stream_default is True
    assert config.server.port == 1234
    assert config.server.stream_interval == "auto"
    assert load_config({}, {"LLM_RUNTIME_STREAM_INTERVAL": "3"}).server.stream_interval == "3"


@pytest.mark.parametrize(
    ("cli", "env", "needle"),
    [
        ({"port": "eighty"}, {}, "port (from command line)"),
        ({}, {"LLM_RUNTIME_PORT": "70000"}, "port must be between"),
        ({"gpu_memory_utilization": "1.5"}, {}, "gpu_memory_utilization"),
        ({"dtype": "int3"}, {}, "dtype must be one of"),
        ({"tensor_parallel_size": "0"}, {}, "tensor_parallel_size"),
        ({}, {"LLM_RUNTIME_CHATLLM_STREAM_DEFAULT": "maybe"}, "chatllm_stream_default"),
        ({"service_name": "a/b"}, {}, "service_name"),
        ({"log_level": "loud"}, {}, "log_level must be one of"),
        ({"grace_period": "-1"}, {}, "grace_period"),
        ({"request_timeout": "0"}, {}, "request_timeout must be positive"),
        ({"max_body_bytes": "0"}, {}, "max_body_bytes"),
        ({"shm_policy": "pray"}, {}, "shm_policy must be one of"),
        ({"queue_result_ttl": "0"}, {}, "queue_result_ttl must be positive"),
        ({}, {"LLM_RUNTIME_ASYNC": "sometimes"}, "async (from environment)"),
        ({"stream_interval": "0"}, {}, "stream_interval must be auto or a positive integer"),
        ({"stream_interval": "fast"}, {}, "stream_interval must be auto or a positive integer"),
        ({"root_path": "llm/"}, {}, "root_path must be empty or a path"),
        ({"log_format": "xml"}, {}, "log_format must be one of text, json"),
        ({"sse_keep_alive": "-1"}, {}, "sse_keep_alive must be 0 or more"),
        ({"allowed_origins": '["http://a"'}, {}, "allowed_origins (from command line)"),
        ({"port": "tcp://10.0.0.1:8000"}, {}, "port (from command line)"),
    ],
)
def test_bad_values_fail_with_the_setting_named(cli, env, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(cli, env)


def test_bad_engine_arg_syntax_is_a_config_error():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_engine_args(["novalue"])


def test_unreadable_or_invalid_service_json_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config({}, {}, str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config({}, {}, str(bad))


def test_redacted_config_hides_the_token():
    config = load_config({"token": "s3cret"}, {})
    assert "s3cret" not in repr(config)
    assert "s3cret" not in str(config.redacted())


def test_a_malformed_token_is_not_echoed_in_the_error(tmp_path):
    document = {"token": {"secret": "hunter2"}}
    with pytest.raises(ConfigError) as caught:
        load_config({}, {}, write_json(tmp_path, document))
    assert "token" in str(caught.value)
    assert "hunter2" not in str(caught.value)
    assert caught.value.__cause__ is None  # nor in a chained traceback


def test_the_async_queue_from_every_source(tmp_path):
    assert load_config({}, {}).queue.enabled is False
    document = {"metadata": {"type": "Async", "rpc": {"max_queue_size": 100}}}
    config = load_config({}, {}, write_json(tmp_path, document))
    assert config.queue.enabled
    assert config.lifecycle.max_queue_size == 100
    assert config.ignored_keys == ()
    assert load_config({}, {"LLM_RUNTIME_ASYNC": "true"}).queue.enabled
    args = vars(
        build_parser().parse_args(
            ["serve", "--async", "--queue-path", "/q.db", "--queue-result-ttl", "60"]
        )
    )
    args.pop("command"), args.pop("config")
    queue = load_config(args, {}).queue
    assert (queue.enabled, queue.path, queue.result_ttl) == (True, "/q.db", 60.0)
    standard = {"metadata": {"type": "Standard"}}
    assert load_config({}, {}, write_json(tmp_path, standard)).queue.enabled is False


# What Kubernetes sets in every pod of a namespace holding a Service named llm-runtime.
SERVICE_LINK_ENV = {
    "LLM_RUNTIME_SERVICE_HOST": "10.96.0.12",
    "LLM_RUNTIME_SERVICE_PORT": "8000",
    "LLM_RUNTIME_SERVICE_PORT_HTTP": "8000",
    "LLM_RUNTIME_PORT": "tcp://10.96.0.12:8000",
    "LLM_RUNTIME_PORT_8000_TCP": "tcp://10.96.0.12:8000",
    "LLM_RUNTIME_PORT_8000_TCP_PROTO": "tcp",
    "LLM_RUNTIME_PORT_8000_TCP_PORT": "8000",
    "LLM_RUNTIME_PORT_8000_TCP_ADDR": "10.96.0.12",
}


def test_a_kubernetes_service_link_is_not_taken_for_the_port(caplog):
    config = load_config({}, SERVICE_LINK_ENV)
    assert config.server.port == 8000  # the default, not "not a valid int"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "LLM_RUNTIME_PORT=tcp://10.96.0.12:8000 is a Kubernetes service link" in warning
    assert "Service named llm-runtime" in warning
    assert "enableServiceLinks: false" in warning
    # A port set explicitly still wins, and so does the service JSON under a link.
    assert load_config({"port": "9000"}, SERVICE_LINK_ENV).server.port == 9000


def test_service_link_variables_name_no_other_setting():
    from runtime.config import env_values

    assert set(env_values(SERVICE_LINK_ENV)) == set()
    assert env_values({**SERVICE_LINK_ENV, "LLM_RUNTIME_PORT": "9000"}) == {"port": "9000"}
