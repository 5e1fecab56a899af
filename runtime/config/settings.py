"""The runtime's settings: one table of names and types, built into frozen dataclasses.

Every source (service JSON, environment, command line) yields a flat `{name: value}` dict over
the names in SETTINGS; `build_config` merges them in precedence order and validates once, so a
bad value fails at start with the setting and its source named, never as an assert later.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from processors.settings import CustomSettings, EngineSettings


class ConfigError(Exception):
    """A setting is missing, malformed or out of range; the message names it."""


@dataclass(frozen=True)
class Setting:
    kind: type | str  # int, float, bool, str, or "list" / "dict" / "pairs"
    help: str
    secret: bool = False  # never echoed, not even in an error about its own value


SETTINGS: dict[str, Setting] = {
    # server
    "host": Setting(str, "address to bind"),
    "port": Setting(int, "port to bind"),
    "token": Setting(str, "service token required in the Authorization header", secret=True),
    "service_name": Setting(str, "service name, served at /api/predict/<name>"),
    "chatllm_stream_default": Setting(bool, "ChatLLM streams when use_stream_chat is absent"),
    "log_level": Setting(str, "logging level"),
    "auth_health": Setting(bool, "require the token on health, readiness and metrics routes too"),
    "readiness_path": Setting(str, "extra path answering readiness (the platform's probe path)"),
    "liveness_path": Setting(str, "extra path answering liveness"),
    "webui": Setting(bool, "serve the chat web page at /webui (and GET / for browsers)"),
    "stream_interval": Setting(
        str, "tokens per streamed chunk: 1, N, or auto (1, and 2 once the server is busy)"
    ),
    # lifecycle and limits
    "grace_period": Setting(float, "seconds to drain in-flight requests after SIGTERM"),
    "request_timeout": Setting(float, "seconds a request may take before it is aborted (408)"),
    "max_queue_size": Setting(int, "requests allowed to wait beyond the engine's running set"),
    "max_body_bytes": Setting(int, "largest request body accepted (413 beyond)"),
    "warm_up_path": Setting(str, "JSON lines of requests replayed before readiness"),
    "shm_size_gb": Setting(float, "shared memory (/dev/shm) wanted, in GB"),
    "shm_policy": Setting(str, "when /dev/shm is too small for tensor parallel: fallback or fail"),
    "host_resources": Setting("dict", "cpu, memory (MB) and gpu count the deployment asks for"),
    # processor and engine
    "processor": Setting(str, "inference backend: auto or vllm"),
    "model_path": Setting(str, "Hugging Face model folder (default: the built-in demo model)"),
    "served_model_name": Setting(str, "model name the OpenAI API reports and accepts"),
    "max_model_len": Setting(int, "context window in tokens"),
    "dtype": Setting(str, "weight dtype: auto, float16, bfloat16, float32"),
    "max_num_seqs": Setting(int, "sequences the engine runs at once"),
    "gpu_memory_utilization": Setting(float, "share of GPU memory the engine may use"),
    "tensor_parallel_size": Setting(int, "GPUs one model is split over"),
    "engine_args": Setting("dict", "extra engine arguments KEY=VALUE"),
    # custom processors (the platform's Python processor API)
    "processor_entry": Setting(str, "the custom processor's file, e.g. app.py"),
    "processor_path": Setting(str, "the folder processor_entry is in"),
    "processor_mainclass": Setting(str, "the allspark.BaseProcessor subclass to serve"),
    "model_entry": Setting(str, "model entry handed to the custom processor"),
    "model_config": Setting(str, "model config handed to the custom processor"),
    "worker_threads": Setting(int, "calls of the custom processor's process() at once"),
    # preparation before the model loads
    "python_requirements": Setting("list", "pip requirements installed before loading"),
    "python_requirements_path": Setting(str, "requirements file installed before loading"),
    "storage_mounts": Setting("list", "mount paths that must exist and be readable"),
    "container_env": Setting("pairs", "environment the service JSON sets"),
    # call records (the platform's "save call records")
    "call_log": Setting(str, "file to append call records to, one JSON line per call"),
    "call_log_max_bytes": Setting(int, "rotate the call log beyond this size (0: never)"),
    "call_log_backups": Setting(int, "rotated call logs kept (PATH.1, PATH.2, ...)"),
    # asynchronous inference (the platform's queue service)
    "async": Setting(bool, "enqueue requests on the service routes; results come from /sink"),
    "queue_path": Setting(str, "SQLite file holding the asynchronous queue"),
    "queue_result_ttl": Setting(float, "seconds a finished result stays readable at /sink"),
}

DTYPES = ("auto", "float16", "half", "bfloat16", "float32", "float")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8000
    token: str | None = field(default=None, repr=False)
    service_name: str = "llm"
    chatllm_stream_default: bool = False
    log_level: str = "info"
    auth_health: bool = False
    readiness_path: str | None = None
    liveness_path: str | None = None
    webui: bool = False
    stream_interval: str = "1"  # "auto" or a positive integer

    @property
    def platform_paths(self) -> tuple[str, str]:
        """Where the platform serves a service's requests: `/` and `/api/predict/<name>`."""
        return ("/", f"/api/predict/{self.service_name}")


@dataclass(frozen=True)
class LifecycleConfig:
    grace_period: float = 30.0
    request_timeout: float | None = None
    max_queue_size: int | None = None  # None: no bound beyond the engine's own
    max_body_bytes: int = 1 << 20
    warm_up_path: str | None = None
    shm_size_gb: float | None = None  # None: derived from tensor_parallel_size
    shm_policy: str = "fallback"
    host_resources: tuple[tuple[str, float], ...] = ()


@dataclass(frozen=True)
class PrepareConfig:
    python_requirements: tuple[str, ...] = ()
    python_requirements_path: str | None = None
    storage_mounts: tuple[str, ...] = ()
    container_env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class CallLogConfig:
    path: str | None = None  # None: no call records
    max_bytes: int = 100 << 20
    backups: int = 5


@dataclass(frozen=True)
class QueueConfig:
    """The asynchronous API (PROTOCOLS §9); `max_queue_size` bounds its pending items (450)."""

    enabled: bool = False
    path: str | None = None  # None: <cache dir>/queue/<service name>.sqlite3
    result_ttl: float = 24 * 3600.0


@dataclass(frozen=True)
class RuntimeConfig:
    server: ServerConfig = field(default_factory=ServerConfig)
    processor: str = "auto"
    # model_path "" stands for the built-in demo model, resolved when serving starts.
    engine: EngineSettings = field(default_factory=lambda: EngineSettings(model_path=""))
    prepare: PrepareConfig = field(default_factory=PrepareConfig)
    lifecycle: LifecycleConfig = field(default_factory=LifecycleConfig)
    custom: CustomSettings = field(default_factory=CustomSettings)
    call_log: CallLogConfig = field(default_factory=CallLogConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    ignored_keys: tuple[str, ...] = ()

    def redacted(self) -> dict[str, Any]:
        """The settings in effect, safe to log or show: the token never leaves."""
        from dataclasses import asdict

        values = asdict(self)
        if values["server"]["token"]:
            values["server"]["token"] = "<redacted>"
        return values


def coerce(name: str, value: Any, source: str) -> Any:
    """Convert a raw value (a string from env/CLI, or JSON) to the setting's type."""
    setting = SETTINGS[name]
    where = f"{name} (from {source})"
    try:
        if setting.kind is bool:
            return _to_bool(value)
        if setting.kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError(value)
            return int(value)
        if setting.kind is float:
            if isinstance(value, bool):
                raise ValueError(value)
            return float(value)
        if setting.kind is str:
            if not isinstance(value, str | int | float) or isinstance(value, bool):
                raise ValueError(value)
            return str(value)
        if setting.kind == "list":
            if isinstance(value, str):
                value = json.loads(value) if value.lstrip().startswith("[") else value.split()
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(value)
            return tuple(value)
        if setting.kind == "dict":
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, Mapping):
                raise ValueError(value)
            return dict(value)
        if setting.kind == "pairs":
            return tuple((str(k), str(v)) for k, v in value)
    except (ValueError, TypeError):
        shown = "the value given" if setting.secret else repr(value)
        raise ConfigError(f"{where}: {shown} is not a valid {_kind_name(setting)}") from None
    raise AssertionError(f"unhandled setting kind {setting.kind!r}")


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _kind_name(setting: Setting) -> str:
    return setting.kind.__name__ if isinstance(setting.kind, type) else setting.kind


def build_config(layers: list[tuple[str, Mapping[str, Any]]], ignored_keys=()) -> RuntimeConfig:
    """Merge `(source, values)` layers, lowest precedence first, into a validated config."""
    merged: dict[str, Any] = {}
    for source, values in layers:
        for name, raw in values.items():
            if name not in SETTINGS:
                raise ConfigError(f"unknown setting {name!r} (from {source})")
            value = coerce(name, raw, source)
            if name == "engine_args" and "engine_args" in merged:
                value = {**merged["engine_args"], **value}  # later sources override per key
            merged[name] = value
    config = RuntimeConfig(
        server=ServerConfig(
            **{k: merged[k] for k in _fields(ServerConfig) if k in merged},
        ),
        # A processor entry given with no processor named means a custom processor.
        processor=merged.get("processor", "custom" if merged.get("processor_entry") else "auto"),
        engine=EngineSettings(
            model_path=merged.get("model_path", ""),
            served_model_name=merged.get("served_model_name"),
            max_model_len=merged.get("max_model_len"),
            dtype=merged.get("dtype", "auto"),
            max_num_seqs=merged.get("max_num_seqs"),
            gpu_memory_utilization=merged.get("gpu_memory_utilization"),
            tensor_parallel_size=merged.get("tensor_parallel_size", 1),
            extra_args=merged.get("engine_args", {}),
        ),
        prepare=PrepareConfig(**{k: merged[k] for k in _fields(PrepareConfig) if k in merged}),
        lifecycle=LifecycleConfig(
            **{
                k: merged[k]
                for k in _fields(LifecycleConfig)
                if k in merged and k != "host_resources"
            },
            host_resources=tuple(sorted(merged.get("host_resources", {}).items())),
        ),
        custom=CustomSettings(
            entry=merged.get("processor_entry"),
            path=merged.get("processor_path"),
            mainclass=merged.get("processor_mainclass"),
            model_entry=merged.get("model_entry"),
            model_config=merged.get("model_config"),
            worker_threads=merged.get("worker_threads"),
        ),
        call_log=CallLogConfig(
            path=merged.get("call_log"),
            **{
                k: merged[f"call_log_{k}"]
                for k in ("max_bytes", "backups")
                if f"call_log_{k}" in merged
            },
        ),
        queue=QueueConfig(
            enabled=merged.get("async", False),
            path=merged.get("queue_path"),
            result_ttl=merged.get("queue_result_ttl", QueueConfig.result_ttl),
        ),
        ignored_keys=tuple(ignored_keys),
    )
    _validate(config)
    return config


def _fields(cls: type) -> list[str]:
    return list(cls.__dataclass_fields__)  # type: ignore[attr-defined]


def _validate(config: RuntimeConfig) -> None:
    server, engine = config.server, config.engine
    if not 0 < server.port < 65536:
        raise ConfigError(f"port must be between 1 and 65535, got {server.port}")
    if not server.service_name or "/" in server.service_name:
        raise ConfigError(
            f"service_name must be a non-empty name without '/', got {server.service_name!r}"
        )
    if server.log_level.lower() not in LOG_LEVELS:
        raise ConfigError(
            f"log_level must be one of {', '.join(LOG_LEVELS)}, got {server.log_level!r}"
        )
    interval = server.stream_interval
    if interval != "auto" and not (interval.isdigit() and int(interval) >= 1):
        raise ConfigError(f"stream_interval must be auto or a positive integer, got {interval!r}")
    _validate_lifecycle(config.lifecycle)
    call_log = config.call_log
    if call_log.max_bytes < 0 or call_log.backups < 1:
        raise ConfigError(
            "call_log_max_bytes must be 0 or more and call_log_backups at least 1, got "
            f"{call_log.max_bytes} and {call_log.backups}"
        )
    if config.queue.result_ttl <= 0:
        raise ConfigError(f"queue_result_ttl must be positive, got {config.queue.result_ttl}")
    threads = config.custom.worker_threads
    if threads is not None and threads < 1:
        raise ConfigError(f"worker_threads must be at least 1, got {threads}")
    if engine.dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {engine.dtype!r}")
    for name in ("max_model_len", "max_num_seqs"):
        value = getattr(engine, name)
        if value is not None and value < 1:
            raise ConfigError(f"{name} must be at least 1, got {value}")
    if engine.tensor_parallel_size < 1:
        raise ConfigError(
            f"tensor_parallel_size must be at least 1, got {engine.tensor_parallel_size}"
        )
    utilization = engine.gpu_memory_utilization
    if utilization is not None and not 0 < utilization <= 1:
        raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {utilization}")


SHM_POLICIES = ("fallback", "fail")


def _validate_lifecycle(lifecycle: LifecycleConfig) -> None:
    if lifecycle.grace_period < 0:
        raise ConfigError(f"grace_period must be 0 or more seconds, got {lifecycle.grace_period}")
    if lifecycle.request_timeout is not None and lifecycle.request_timeout <= 0:
        raise ConfigError(f"request_timeout must be positive, got {lifecycle.request_timeout}")
    if lifecycle.max_queue_size is not None and lifecycle.max_queue_size < 0:
        raise ConfigError(f"max_queue_size must be 0 or more, got {lifecycle.max_queue_size}")
    if lifecycle.max_body_bytes < 1:
        raise ConfigError(f"max_body_bytes must be positive, got {lifecycle.max_body_bytes}")
    if lifecycle.shm_policy not in SHM_POLICIES:
        raise ConfigError(
            f"shm_policy must be one of {', '.join(SHM_POLICIES)}, got {lifecycle.shm_policy!r}"
        )
    for name, value in lifecycle.host_resources:
        if name not in ("cpu", "memory", "gpu") or value < 0:
            raise ConfigError(f"host_resources: {name}={value} is not a valid request")
