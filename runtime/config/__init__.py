"""Configuration: defaults < service JSON < environment (LLM_RUNTIME_*) < command line."""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from runtime.config.build import build_config
from runtime.config.catalog import ENV_PREFIX, SETTINGS, Setting
from runtime.config.frontend import HttpConfig, ObservabilityConfig
from runtime.config.sections import (
    CallLogConfig,
    ConfigError,
    LifecycleConfig,
    PrepareConfig,
    QueueConfig,
    RuntimeConfig,
    ServerConfig,
)
from runtime.config.service_json import read_service_json

__all__ = [
    "ENV_PREFIX",
    "SETTINGS",
    "CallLogConfig",
    "ConfigError",
    "HttpConfig",
    "LifecycleConfig",
    "ObservabilityConfig",
    "PrepareConfig",
    "QueueConfig",
    "RuntimeConfig",
    "ServerConfig",
    "Setting",
    "build_config",
    "load_config",
]


log = logging.getLogger(__name__)

# What Kubernetes puts in <SERVICE>_PORT for every Service of the namespace ("service links"):
# a Service named llm-runtime sets LLM_RUNTIME_PORT=tcp://10.0.0.12:8000 in every pod.
SERVICE_LINK = re.compile(r"tcp://[^\s/:]+:\d+")


def env_values(environ: Mapping[str, str]) -> dict[str, str]:
    """Settings given as LLM_RUNTIME_<NAME> variables (or their aliases, e.g. VLLM_API_KEY).
    A port setting holding a Kubernetes service link was not set by anyone for this runtime:
    it is left out, with a warning that says where it came from and how to keep it out."""
    values = {}
    for setting in SETTINGS.values():
        given = [name for name in setting.environment_names if name in environ]
        if not given:
            continue
        name = given[0]
        value = environ[name]
        if name.endswith("_PORT") and SERVICE_LINK.fullmatch(value.strip()):
            log.warning(
                "%s=%s is a Kubernetes service link (a Service named %s in this namespace), not "
                "a port for this runtime: ignored. Set enableServiceLinks: false in the pod "
                "spec, or %s explicitly in the container's env, to keep it out",
                name,
                value,
                name.removesuffix("_PORT").lower().replace("_", "-"),
                name,
            )
            continue
        values[setting.name] = value
    return values


def load_config(
    cli_values: Mapping[str, Any],
    environ: Mapping[str, str],
    service_json: str | None = None,
) -> RuntimeConfig:
    """Build the config from all sources. `cli_values` holds only flags the user gave."""
    layers: list[tuple[str, Mapping[str, Any]]] = []
    ignored: list[str] = []
    environ = dict(environ)
    if service_json:
        json_values, ignored = read_service_json(service_json)
        layers.append((f"service JSON {service_json}", json_values))
        # The platform sets containers[0].env in the container; a variable already set in the
        # real environment wins, as env outranks the file.
        for name, value in json_values.get("container_env", ()):
            environ.setdefault(name, value)
    layers.append(("environment", env_values(environ)))
    layers.append(("command line", cli_values))
    return build_config(layers, ignored_keys=tuple(ignored), service_json=service_json)
