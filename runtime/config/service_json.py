"""Reads the platform's service JSON (the deployment file) into settings.

Only the keys below are honoured; every other leaf is reported once as ignored, so a deployment
file runs as is and its author can see what this runtime does not do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from processors.registry import PROCESSOR_NAMES
from runtime.config.settings import ConfigError

# setting name -> paths in the service JSON, first found wins (aliases after the main key)
KEY_PATHS: dict[str, tuple[str, ...]] = {
    "service_name": ("name", "metadata.name"),
    "token": ("token",),
    "model_path": ("model_path",),
    "port": ("containers.0.port",),
    "python_requirements": ("containers.0.prepare.pythonRequirements",),
    "python_requirements_path": ("containers.0.prepare.pythonRequirementsPath",),
    "grace_period": ("metadata.eas.termination_grace_period", "runtime.termination_grace_period"),
    "request_timeout": ("metadata.rpc.keepalive", "rpc.keepalive"),
    "max_queue_size": ("metadata.rpc.max_queue_size", "rpc.max_queue_size"),
    "readiness_path": (
        "metadata.rpc.health_check_path",
        "rpc.health_check_path",
        "containers.0.readiness_check.http_get.path",
        "containers.0.health_check.http_get.path",
    ),
    # A startup probe must pass while the model loads, so it gets liveness semantics.
    "liveness_path": (
        "containers.0.liveness_check.http_get.path",
        "containers.0.startup_check.http_get.path",
    ),
    "warm_up_path": ("warm_up_data_path",),
    "shm_size_gb": ("metadata.shm_size",),
    "processor_entry": ("processor_entry",),
    "processor_path": ("processor_path",),
    "processor_mainclass": ("processor_mainclass",),
    "model_entry": ("model_entry",),
    "model_config": ("model_config",),
    "worker_threads": ("metadata.rpc.worker_threads", "rpc.worker_threads", "metadata.workers"),
    "webui": ("metadata.enable_webservice",),
    # The platform's "save call records" is a console switch; here it is a file and its rotation.
    "call_log": ("metadata.call_log.path", "metadata.call_log"),
    "call_log_max_bytes": ("metadata.call_log.max_bytes",),
    "call_log_backups": ("metadata.call_log.backups",),
}
# The platform gives keepalive in milliseconds; the runtime's setting is in seconds.
CONVERSIONS = {
    "request_timeout": lambda ms: float(ms) / 1000,
    # The platform allows model_config as a JSON object; the processor receives it as text.
    "model_config": lambda value: value if isinstance(value, str) else json.dumps(value),
}
# Probe timing (delays, periods, thresholds) is the orchestrator's business; only the paths
# matter here, so a probe whose path was read counts as used whole.
PROBES = ("readiness_check", "health_check", "liveness_check", "startup_check")


def read_service_json(path: str | Path) -> tuple[dict[str, Any], list[str]]:
    """Settings found in the file, and the dotted keys it ignores."""
    try:
        document = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read service JSON {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ConfigError(f"service JSON {path} is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise ConfigError(f"service JSON {path} must hold a JSON object")

    values: dict[str, Any] = {}
    used: set[str] = set()
    for name, paths in KEY_PATHS.items():
        for dotted in paths:
            found, value = _lookup(document, dotted)
            if found:
                used.add(dotted)
                values.setdefault(name, CONVERSIONS.get(name, lambda v: v)(value))
    used |= {
        f"containers.0.{probe}"
        for probe in PROBES
        if any(key.startswith(f"containers.0.{probe}.") for key in used)
    }

    found, processor = _lookup(document, "processor")
    if found and isinstance(processor, str):  # e.g. "pytorch_gpu_1.10", the platform's torch ones
        name = "transformers" if processor.lower().startswith("pytorch") else processor.lower()
        if name in PROCESSOR_NAMES:  # anything else is reported as ignored
            used.add("processor")
            values["processor"] = name

    found, processor_type = _lookup(document, "processor_type")
    if found and str(processor_type).lower() == "python":
        used.add("processor_type")
        values["processor"] = "custom"

    found, service_type = _lookup(document, "metadata.type")
    if found:  # "Async" is the platform's asynchronous service; other types serve as usual
        used.add("metadata.type")
        values["async"] = str(service_type).lower() == "async"

    found, enable_sigterm = _lookup(document, "metadata.rpc.enable_sigterm")
    if found:
        used.add("metadata.rpc.enable_sigterm")
        if enable_sigterm is False:  # the platform will not wait: nothing to drain for
            values.setdefault("grace_period", 0)

    resources = {}
    for key in ("cpu", "memory", "gpu"):
        found, amount = _lookup(document, f"metadata.{key}")
        if found:
            used.add(f"metadata.{key}")
            resources[key] = amount
    if resources:
        values["host_resources"] = resources

    storage = document.get("storage")
    if isinstance(storage, list):
        mounts = []
        for index, entry in enumerate(storage):
            if isinstance(entry, dict) and isinstance(entry.get("mount_path"), str):
                mounts.append(entry["mount_path"])
                shm_size = _shm_size_limit(entry)
                if shm_size is not None:
                    values.setdefault("shm_size_gb", shm_size)
                # the source (oss, nfs, ...) is the platform's business: locally it is mounted
                used.add(f"storage.{index}")
        if mounts:
            values["storage_mounts"] = mounts

    found, env = _lookup(document, "containers.0.env")
    if found:
        used.add("containers.0.env")
        values["container_env"] = _env_pairs(env, path)

    ignored = [leaf for leaf in _leaves(document) if not _is_under_any(leaf, used)]
    return values, ignored


def _shm_size_limit(entry: dict) -> Any:
    """size_limit (GB) of a storage entry mounting /dev/shm as a memory emptyDir."""
    empty_dir = entry.get("empty_dir")
    if entry["mount_path"].rstrip("/") != "/dev/shm" or not isinstance(empty_dir, dict):
        return None
    if str(empty_dir.get("medium", "")).lower() != "memory":
        return None
    return empty_dir.get("size_limit")


def _env_pairs(env: Any, path: str | Path) -> list[tuple[str, str]]:
    if not isinstance(env, list):
        raise ConfigError(f"containers[0].env in {path} must be a list of {{name, value}}")
    pairs = []
    for item in env:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise ConfigError(f"containers[0].env in {path} has an entry without a name: {item}")
        pairs.append((item["name"], str(item.get("value", ""))))
    return pairs


def _lookup(document: Any, dotted: str) -> tuple[bool, Any]:
    node = document
    for part in dotted.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False, None
    return True, node


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [
            leaf
            for key, child in node.items()
            for leaf in _leaves(child, f"{prefix}.{key}" if prefix else str(key))
        ]
    if isinstance(node, list) and node and prefix.split(".")[-1] in ("containers", "storage"):
        return [leaf for i, child in enumerate(node) for leaf in _leaves(child, f"{prefix}.{i}")]
    return [prefix]


def _is_under_any(leaf: str, used: set[str]) -> bool:
    return any(leaf == key or leaf.startswith(key + ".") for key in used)
