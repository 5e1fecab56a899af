"""`llm-runtime serve`'s command line: a flag for every declared setting, read into a config."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from runtime.config import SETTINGS, ConfigError, RuntimeConfig, load_config


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the platform's service JSON (deployment file)")
    add_setting_flags(parser)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every declared setting that has one; absent flags stay absent ("not given"),
    so lower layers (environment, service JSON) show through."""
    for setting in SETTINGS.values():
        if setting.flag is None:
            continue
        shown = "" if setting.default in (None, "", {}, ()) else f"; default {setting.default}"
        help_text = f"{setting.help} [{setting.env}{shown}]".replace("%", "%%")
        common: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS}
        if setting.kind == "bool":
            parser.add_argument(setting.flag, action="store_true", help=help_text, **common)
        elif setting.kind == "dict":  # KEY=VALUE, repeatable
            parser.add_argument(
                setting.flag,
                action="append",
                metavar=setting.declared.metavar or "KEY=VALUE",
                help=help_text,
                **common,
            )
        else:
            parser.add_argument(
                setting.flag, metavar=setting.declared.metavar, help=help_text, **common
            )


def parse_key_values(items: list[str], flag: str = "--engine-arg") -> dict[str, Any]:
    """KEY=VALUE items as a dict; VALUE is parsed as JSON when it can be, dashes in KEY are
    underscores."""
    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            parsed[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            parsed[key.replace("-", "_")] = raw
    return parsed


def serve_config(argv: list[str], environ: Mapping[str, str]) -> RuntimeConfig:
    """The config `serve ARGV` runs with."""
    parser = argparse.ArgumentParser(prog="llm-runtime serve")
    add_serve_arguments(parser)
    args = vars(parser.parse_args(argv))
    service_json = args.pop("config", None)
    for setting in SETTINGS.values():
        if setting.kind == "dict" and setting.name in args:
            args[setting.name] = parse_key_values(args[setting.name], str(setting.flag))
    return load_config(args, environ, service_json)
