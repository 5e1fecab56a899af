"""The runtime's settings, one frozen dataclass per concern, each field declared once.

A field's declaration (processors/declaration.py) names its help, flag and service-JSON keys;
its environment name is LLM_RUNTIME_<NAME>. Everything that reads or shows settings derives from
these fields: the parser, the readers, the README's table (`python -m runtime.config.reference`)
and the config dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from processors.declaration import (
    SKIP,
    JsonKey,
    Read,
    at_least,
    declared,
    non_negative,
    one_of,
    positive,
)
from processors.registry import PROCESSOR_NAMES
from processors.settings import CustomSettings, EngineSettings
from runtime.config.frontend import HttpConfig, ObservabilityConfig
from runtime.config.stores import CallLogConfig, QueueConfig, without_password

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SHM_POLICIES = ("fallback", "fail")


def _port(value: int) -> str | None:
    return None if 0 < value < 65536 else "must be between 1 and 65535"


def _service_name(value: str) -> str | None:
    return None if value and "/" not in value else "must be a non-empty name without '/'"


def _log_level(value: str) -> str | None:
    return None if value.lower() in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"


def _stream_interval(value: str) -> str | None:
    if value == "auto" or (value.isdigit() and int(value) >= 1):
        return None
    return "must be auto or a positive integer"


def _probe(name: str) -> JsonKey:
    """A probe's path; probe timing (delays, periods) is the orchestrator's, so reading the path
    accounts for the whole probe."""
    path = f"containers.0.{name}.http_get.path"
    return JsonKey(path, lambda value: Read(value, (f"containers.0.{name}",)))


@dataclass(frozen=True)
class ServerConfig:
    host: str = declared("0.0.0.0", "address to bind")
    port: int = declared(8000, "port to bind", json=["containers.0.port"], check=_port)
    token: str | None = declared(
        None,
        "service token required in the Authorization header (none: no auth)",
        json=["token"],
        secret=True,
        aliases=["--api-key", "VLLM_API_KEY"],  # vLLM's spellings
    )
    service_name: str = declared(
        "llm",
        "service name, served at /api/predict/<name>",
        json=["name", "metadata.name"],
        check=_service_name,
    )
    chatllm_stream_default: bool = declared(False, "ChatLLM streams when use_stream_chat is absent")
    log_level: str = declared("info", "logging level", check=_log_level)
    auth_health: bool = declared(
        False, "require the token on health, readiness and metrics routes too"
    )
    readiness_path: str | None = declared(
        None,
        "extra path answering readiness (the platform's probe path)",
        json=[
            "metadata.rpc.health_check_path",
            "rpc.health_check_path",
            _probe("readiness_check"),
            _probe("health_check"),
        ],
    )
    # A startup probe must pass while the model loads, so it gets liveness semantics.
    liveness_path: str | None = declared(
        None,
        "extra path answering liveness",
        json=[_probe("liveness_check"), _probe("startup_check")],
    )
    webui: bool = declared(
        False,
        "serve the chat web page at /webui (and GET / for browsers)",
        json=["metadata.enable_webservice"],
    )
    generation_config: str = declared(
        "auto",
        "sampling defaults of the OpenAI routes: auto (the model's generation_config.json), "
        "vllm (none), or a folder holding a generation_config.json",
    )
    allow_runtime_lora_updating: bool = declared(
        False,
        "serve /v1/load_lora_adapter and /v1/unload_lora_adapter",
        aliases=["VLLM_ALLOW_RUNTIME_LORA_UPDATING"],  # vLLM's switch
    )
    chat_template: str | None = declared(
        None, "a chat template (a file, or the template itself) instead of the model's own"
    )
    enable_auto_tool_choice: bool = declared(
        False, 'read tool calls of tool_choice "auto" with --tool-call-parser'
    )
    tool_call_parser: str | None = declared(
        None, "vLLM's tool-call parser for the model's format, e.g. hermes, llama3_json"
    )
    tool_parser_plugin: str | None = declared(
        None, "a Python file registering a tool parser of your own (vLLM's plugin API)"
    )
    reasoning_parser: str | None = declared(
        None, "vLLM's reasoning parser, e.g. deepseek_r1, qwen3: the answer's reasoning apart"
    )
    stream_interval: str = declared(
        "1",
        "tokens per streamed chunk: 1, N, or auto (1, and 2 once the server is busy)",
        check=_stream_interval,
    )

    @property
    def platform_paths(self) -> tuple[str, str]:
        """Where the platform serves a service's requests: `/` and `/api/predict/<name>`."""
        return ("/", f"/api/predict/{self.service_name}")


def _milliseconds(value: Any) -> float:
    """The platform gives rpc.keepalive in milliseconds; the runtime's setting is in seconds."""
    return float(value) / 1000


def _no_drain_without_sigterm(enabled: Any) -> Any:
    """enable_sigterm false: the platform will not wait, so there is nothing to drain for."""
    return 0 if enabled is False else SKIP


def _shm_size_from_storage(storage: Any) -> Any:
    """size_limit (GB) of a storage entry mounting /dev/shm as a memory emptyDir."""
    for entry in storage if isinstance(storage, list) else ():
        empty_dir = entry.get("empty_dir") if isinstance(entry, dict) else None
        if (
            isinstance(empty_dir, dict)
            and str(entry.get("mount_path", "")).rstrip("/") == "/dev/shm"
            and str(empty_dir.get("medium", "")).lower() == "memory"
        ):
            return Read(empty_dir.get("size_limit"), ())  # the mounts account for the entry
    return Read(SKIP, ())


def _mount_paths(storage: Any) -> Read:
    """Each storage entry's mount_path; its source (oss, nfs, ...) is the platform's business:
    locally it is mounted already."""
    if not isinstance(storage, list):
        raise ValueError(storage)
    mounts, used = [], []
    for index, entry in enumerate(storage):
        if isinstance(entry, dict) and isinstance(entry.get("mount_path"), str):
            mounts.append(entry["mount_path"])
            used.append(f"storage.{index}")
    return Read(mounts or SKIP, tuple(used))


def _env_pairs(env: Any) -> list[tuple[str, str]]:
    if not isinstance(env, list):
        raise ConfigError("containers[0].env must be a list of {name, value}")
    pairs = []
    for item in env:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"containers[0].env has an entry without a name: {item}")
        pairs.append((item["name"], str(item.get("value", ""))))
    return pairs


def _host_resources(resources: Mapping[str, float]) -> str | None:
    for name, value in resources.items():
        if name not in ("cpu", "memory", "gpu") or not isinstance(value, int | float) or value < 0:
            return f"has {name}={value}, which is not a valid request of cpu, memory or gpu"
    return None


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class LifecycleConfig:
    grace_period: float = declared(
        30.0,
        "seconds to drain in-flight requests after SIGTERM",
        json=[
            "metadata.eas.termination_grace_period",
            "runtime.termination_grace_period",
            JsonKey("metadata.rpc.enable_sigterm", _no_drain_without_sigterm, note="false: 0"),
        ],
        check=non_negative,
    )
    request_timeout: float | None = declared(
        None,
        "seconds a request may take before it is aborted (408; none: no limit)",
        json=[
            JsonKey("metadata.rpc.keepalive", _milliseconds, note="ms"),
            JsonKey("rpc.keepalive", _milliseconds, note="ms"),
        ],
        check=positive,
    )
    max_queue_size: int | None = declared(
        None,
        "requests allowed to wait beyond the engine's running set (429 beyond; none: no bound); "
        "with --async, the queue's length when --queue-max-pending is not given",
        json=["metadata.rpc.max_queue_size", "rpc.max_queue_size"],
        check=non_negative,
    )
    max_prompts_per_request: int = declared(
        256, "prompts one completions request may hold (400 beyond)", check=at_least(1)
    )
    max_choices_per_request: int = declared(
        256,
        "completions one request may ask for, prompts x n (400 beyond); each counts in flight",
        check=at_least(1),
    )
    max_body_bytes: int = declared(
        1 << 20, "largest request body accepted (413 beyond)", check=at_least(1)
    )
    request_read_timeout: float = declared(
        60.0,
        "seconds a client has to send its request's headers, and again its body (408 beyond)",
        check=positive,
    )
    timeout_keep_alive: int = declared(
        30, "seconds an idle connection stays open between requests", check=positive
    )
    warm_up_path: str | None = declared(
        None,
        "JSON lines of requests replayed before readiness",
        flag="--warm-up",
        json=["warm_up_data_path"],
    )
    shm_size_gb: float | None = declared(
        None,
        "shared memory (/dev/shm) wanted, in GB (default: 1 per GPU for tensor parallel)",
        flag="--shm-size",
        json=[
            "metadata.shm_size",
            JsonKey("storage", _shm_size_from_storage, note="a /dev/shm memory empty_dir"),
        ],
    )
    shm_policy: str = declared(
        "fallback",
        "when /dev/shm is too small for tensor parallel: fallback or fail",
        check=one_of(*SHM_POLICIES),
    )
    host_resources: Mapping[str, float] = declared(
        {},
        "cpu, memory (MB) and gpu count the deployment asks for, as JSON",
        flag=None,
        json=[
            JsonKey("metadata.cpu", into="cpu"),
            JsonKey("metadata.memory", into="memory"),
            JsonKey("metadata.gpu", into="gpu"),
        ],
        check=_host_resources,
    )


@dataclass(frozen=True)
class PrepareConfig:
    python_requirements: tuple[str, ...] = declared(
        (),
        "pip requirements installed before loading",
        flag=None,
        json=["containers.0.prepare.pythonRequirements"],
    )
    python_requirements_path: str | None = declared(
        None,
        "requirements file installed before loading",
        flag=None,
        json=["containers.0.prepare.pythonRequirementsPath"],
    )
    storage_mounts: tuple[str, ...] = declared(
        (),
        "mount paths that must exist and be readable",
        flag=None,
        json=[JsonKey("storage", _mount_paths, note="each mount_path")],
    )
    container_env: tuple[tuple[str, str], ...] = declared(
        (),
        "environment the service JSON sets (the real environment wins)",
        flag=None,
        json=[JsonKey("containers.0.env", _env_pairs)],
    )


def _processor_type(kind: Any) -> str:
    if str(kind).lower() != "python":
        raise ValueError(kind)
    return "custom"


def _platform_processor(name: Any) -> str:
    """The platform's processor names: its torch ones (e.g. "pytorch_gpu_1.10") are served by
    the transformers processor; names this runtime does not serve are reported as ignored."""
    if not isinstance(name, str):
        raise ValueError(name)
    name = "transformers" if name.lower().startswith("pytorch") else name.lower()
    if name not in PROCESSOR_NAMES:
        raise ValueError(name)
    return name


@dataclass(frozen=True)
class RuntimeConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    # "auto": vllm when it is installed, else transformers; "custom" when a processor entry is
    # given and no processor is named.
    processor: str = declared(
        "auto",
        "inference backend: auto (vllm when installed, else transformers; custom when a "
        "processor entry is given), vllm, transformers, custom",
        json=[
            JsonKey("processor_type", _processor_type, note="python: custom"),
            JsonKey("processor", _platform_processor, note="pytorch_*: transformers"),
        ],
        check=one_of(*PROCESSOR_NAMES),
    )
    engine: EngineSettings = field(default_factory=EngineSettings)
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    custom: CustomSettings = field(default_factory=CustomSettings)
    call_log: CallLogConfig = field(default_factory=CallLogConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    ignored_keys: tuple[str, ...] = ()  # service JSON keys this runtime does not read
    service_json: str | None = None  # the platform's deployment file, when one was given

    def redacted(self) -> dict[str, Any]:
        """The settings in effect, safe to log or show: the token never leaves."""
        values = asdict(self)
        for section, name in (("server", "token"), ("queue", "password")):
            if values[section][name]:
                values[section][name] = "<redacted>"
        if self.queue.url:
            values["queue"]["url"] = without_password(self.queue.url)
        return values
