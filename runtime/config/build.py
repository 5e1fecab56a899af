"""From `{setting name: raw value}` layers to a validated RuntimeConfig.

Every source (service JSON, environment, command line) yields a flat dict over the names in
SETTINGS; `build_config` merges them in precedence order, converts each value to its setting's
kind and checks it once, so a bad value fails at start with the setting and its source named.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from runtime.config.catalog import SETTINGS, Setting
from runtime.config.sections import ConfigError, RuntimeConfig


def coerce(setting: Setting, value: Any, source: str) -> Any:
    """Convert a raw value (a string from env/CLI, or JSON) to the setting's kind."""
    try:
        return _CONVERTERS[setting.kind](value)
    except (ValueError, TypeError):
        shown = "the value given" if setting.secret else repr(value)
        raise ConfigError(
            f"{setting.name} (from {source}): {shown} is not a valid {setting.kind}"
        ) from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(value)


def _to_int(value: Any) -> int:
    if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(value)
    return int(value)


def _to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(value)
    return float(value)


def _to_str(value: Any) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise ValueError(value)
    return str(value)


def _to_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, list) and len(value) == 1 and str(value[0]).lstrip().startswith("["):
        value = value[0]  # a flag given one JSON list, as vLLM's --allowed-origins takes it
    if isinstance(value, str):
        value = json.loads(value) if value.lstrip().startswith("[") else value.split()
    if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
        raise ValueError(value)
    return tuple(value)


def _to_dict(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        value = json.loads(value)
    if not isinstance(value, Mapping):
        raise ValueError(value)
    return dict(value)


def _to_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in value)


_CONVERTERS = {
    "bool": _to_bool,
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "list": _to_list,
    "dict": _to_dict,
    "pairs": _to_pairs,
}


def build_config(
    layers: list[tuple[str, Mapping[str, Any]]],
    ignored_keys: tuple[str, ...] = (),
    service_json: str | None = None,
) -> RuntimeConfig:
    """Merge `(source, values)` layers, lowest precedence first, into a validated config."""
    merged: dict[str, Any] = {}
    for source, values in layers:
        for name, raw in values.items():
            setting = SETTINGS.get(name)
            if setting is None:
                raise ConfigError(f"unknown setting {name!r} (from {source})")
            value = coerce(setting, raw, source)
            if setting.kind == "dict" and name in merged:
                value = {**merged[name], **value}  # later sources override per key
            merged[name] = value
    # A processor entry given with no processor named means a custom processor.
    if merged.get("processor_entry") and "processor" not in merged:
        merged["processor"] = "custom"
    for name, value in merged.items():
        _check(SETTINGS[name], value)
    top: dict[str, Any] = {}  # RuntimeConfig's own fields
    sections: dict[str, dict[str, Any]] = {}  # the fields of each section
    for name, value in merged.items():
        setting = SETTINGS[name]
        where = top if setting.section is None else sections.setdefault(setting.section, {})
        where[setting.field] = value
    defaults = RuntimeConfig()
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(defaults, section), **values)
    return RuntimeConfig(**top, ignored_keys=tuple(ignored_keys), service_json=service_json)


def _check(setting: Setting, value: Any) -> None:
    check = setting.declared.check
    problem = check(value) if check is not None else None
    if problem is not None:
        shown = "the value given" if setting.secret else repr(value)
        raise ConfigError(f"{setting.name} {problem}, got {shown}")
