"""Reads the platform's service JSON (the deployment file) into settings.

Which keys are read, and how, is declared on each setting (its `json` keys); every other leaf is
reported once as ignored, so a deployment file runs as is and its author can see what this
runtime does not do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from processors.declaration import SKIP, Read
from runtime.config.catalog import SETTINGS
from runtime.config.sections import ConfigError

# Lists whose items are read one by one (any other list is one value).
INDEXED_LISTS = ("containers", "storage")


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
    for setting in SETTINGS.values():
        for key in setting.declared.json:
            found, raw = _lookup(document, key.path)
            if not found:
                continue
            try:
                value = raw if key.read is None else key.read(raw)
            except ValueError:
                continue  # a value this runtime does not serve: reported as ignored
            except ConfigError as exc:
                raise ConfigError(f"service JSON {path}: {exc}") from None
            if isinstance(value, Read):
                used.update(value.used)
                value = value.value
            else:
                used.add(key.path)
            if value is SKIP:
                continue
            if key.into is not None:
                values.setdefault(setting.name, {}).setdefault(key.into, value)
            else:
                values.setdefault(setting.name, value)  # the first key found wins

    ignored = [leaf for leaf in _leaves(document) if not _is_under_any(leaf, used)]
    return values, ignored


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
    if isinstance(node, list) and node and prefix.split(".")[-1] in INDEXED_LISTS:
        return [leaf for i, child in enumerate(node) for leaf in _leaves(child, f"{prefix}.{i}")]
    return [prefix]


def _is_under_any(leaf: str, used: set[str]) -> bool:
    return any(leaf == key or leaf.startswith(key + ".") for key in used)
