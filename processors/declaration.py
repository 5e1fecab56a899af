"""How a setting is declared: on its dataclass field, once, with every way a user spells it.

A config dataclass field made with `declared(default, help, ...)` carries its help text, its
command-line flag, its environment name and the places a service JSON may hold it. The runtime's
config reads these declarations to build the argument parser, the environment reader, the
service-JSON reader, the README's table and the config dump, so a setting is written once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

DECLARED = "declared"  # the dataclass field metadata key


class _Skip:
    def __repr__(self) -> str:
        return "SKIP"


# What a JSON reader returns for a key it understood that sets nothing (e.g. enable_sigterm true).
SKIP: Any = _Skip()


@dataclass(frozen=True)
class Read:
    """A JSON reader's answer when it read more (or less) of the document than its own key:
    `used` are the dotted keys it accounts for, so the rest is reported as ignored."""

    value: Any
    used: tuple[str, ...]


@dataclass(frozen=True)
class JsonKey:
    """A dotted path in the service JSON (`containers.0.port`) and how its value is read.

    `read` converts the value (and may return SKIP, or a Read); it raises ValueError for a value
    it does not understand, which is then reported as ignored. `into` puts the value under that
    key of a dict setting. Of several keys of one setting, the first one found wins.
    """

    path: str
    read: Callable[[Any], Any] | None = None
    into: str | None = None
    note: str = ""  # how the value is read, for the README's table (e.g. "ms")


@dataclass(frozen=True)
class Declared:
    help: str
    flag: str | None  # None: not on the command line
    json: tuple[JsonKey, ...] = ()
    name: str | None = None  # the setting's name when it is not the field's (LLM_RUNTIME_<NAME>)
    secret: bool = False  # never echoed, not even in an error about its own value
    # A problem with a valid-typed value, as the end of "<name> must ...", or None.
    check: Callable[[Any], str | None] | None = None
    metavar: str | None = None
    aliases: tuple[str, ...] = ()  # more flags and environment names (e.g. vLLM's), same value


AUTO_FLAG = "auto"


def declared(
    default: Any,
    help: str,
    *,
    flag: str | None = AUTO_FLAG,
    json: Sequence[str | JsonKey] = (),
    name: str | None = None,
    secret: bool = False,
    check: Callable[[Any], str | None] | None = None,
    metavar: str | None = None,
    aliases: Sequence[str] = (),
) -> Any:
    """A dataclass field declaring a setting; `flag` "auto" is `--<name with dashes>`;
    `aliases` are more spellings: flags (`--x`) and environment variables (`X`)."""
    keys = tuple(key if isinstance(key, JsonKey) else JsonKey(key) for key in json)
    declaration = Declared(help, flag, keys, name, secret, check, metavar, tuple(aliases))
    metadata = {DECLARED: declaration}
    shown = not secret  # a secret stays out of the dataclass's repr too
    if isinstance(default, dict | list):
        factory = type(default)
        return dataclasses.field(
            default_factory=lambda: factory(default), repr=shown, metadata=metadata
        )
    return dataclasses.field(default=default, repr=shown, metadata=metadata)


# Checks shared by many settings: each returns the problem or None.
def at_least(low: float) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value is None or value >= low else f"must be at least {low:g}"

    return check


def positive(value: Any) -> str | None:
    return None if value is None or value > 0 else "must be positive"


def non_negative(value: Any) -> str | None:
    return None if value is None or value >= 0 else "must be 0 or more"


def one_of(*choices: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value is None or value in choices else f"must be one of {', '.join(choices)}"

    return check
