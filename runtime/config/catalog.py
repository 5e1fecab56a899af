"""Every setting, found from the declared fields of RuntimeConfig and its sections."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processors.declaration import AUTO_FLAG, DECLARED, Declared
from runtime.config.sections import RuntimeConfig

ENV_PREFIX = "LLM_RUNTIME_"


@dataclass(frozen=True)
class Setting:
    name: str
    section: str | None  # the RuntimeConfig field holding it; None: RuntimeConfig itself
    field: str
    kind: str  # bool, int, float, str, list, dict, pairs
    default: Any
    declared: Declared

    @property
    def help(self) -> str:
        return self.declared.help

    @property
    def flag(self) -> str | None:
        flag = self.declared.flag
        return "--" + self.name.replace("_", "-") if flag == AUTO_FLAG else flag

    @property
    def flags(self) -> tuple[str, ...]:
        """The flag and its aliases (e.g. vLLM's spelling)."""
        aliases = tuple(a for a in self.declared.aliases if a.startswith("--"))
        return (self.flag, *aliases) if self.flag else aliases

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.name.upper()

    @property
    def environment_names(self) -> tuple[str, ...]:
        """LLM_RUNTIME_<NAME>, then aliases (e.g. vLLM's), which it outranks."""
        return (self.env, *(a for a in self.declared.aliases if not a.startswith("--")))

    @property
    def secret(self) -> bool:
        return self.declared.secret


def _kind(hint: Any) -> str:
    """The setting's kind from its type hint (`int | None` is an int)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (hint,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if hint in (bool, int, float, str):
        return hint.__name__
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple and args[-1] is Ellipsis:
        return "pairs" if typing.get_origin(args[0]) is tuple else "list"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "dict"
    raise TypeError(f"no setting kind for the type {hint!r}")


def _declared_fields(cls: type, section: str | None) -> list[Setting]:
    hints = typing.get_type_hints(cls)
    found = []
    for item in dataclasses.fields(cls):
        declaration = item.metadata.get(DECLARED)
        if declaration is None:
            continue
        default = item.default
        if item.default_factory is not dataclasses.MISSING:
            default = item.default_factory()
        name = declaration.name or item.name
        found.append(
            Setting(name, section, item.name, _kind(hints[item.name]), default, declaration)
        )
    return found


def _catalog() -> dict[str, Setting]:
    settings = _declared_fields(RuntimeConfig, None)
    for item in dataclasses.fields(RuntimeConfig):
        if dataclasses.is_dataclass(item.default_factory):
            settings += _declared_fields(item.default_factory, item.name)
    names = [setting.name for setting in settings]
    duplicates = {name for name in names if names.count(name) > 1}
    if duplicates:
        raise TypeError(f"settings declared twice: {', '.join(sorted(duplicates))}")
    return {setting.name: setting for setting in settings}


SETTINGS: dict[str, Setting] = _catalog()
