"""`llm-runtime serve`'s command line: a flag for every declared setting, and vLLM's own flags.

A `vllm serve` command line runs after changing the program name: the runtime's flags are read
first (vLLM's spellings among them: --port, --dtype, --api-key, ...); whatever is left, the model
as a positional argument included, goes to vLLM's own argument parser, which checks it. Engine
arguments given there reach the engine as --engine-arg would; a vLLM front-end flag this runtime
does not implement is refused by name.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from runtime.config import SETTINGS, ConfigError, RuntimeConfig, load_config

log = logging.getLogger(__name__)

# vLLM front-end flags with nothing to do here: the runtime already behaves so, or the flag
# concerns vLLM's own server process.
VLLM_FRONTEND_HARMLESS = {
    "disable_log_stats",  # the runtime's own stats are its metrics
    "disable_uvicorn_access_log",
    "uvicorn_log_level",
}


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the platform's service JSON (deployment file)")
    parser.add_argument(
        "-h",
        "--help",
        action=_ServeHelp,
        nargs=0,
        default=argparse.SUPPRESS,
        help="this help, and vLLM's engine arguments",
    )
    add_setting_flags(parser)


def add_setting_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every declared setting that has one; absent flags stay absent ("not given"),
    so lower layers (environment, service JSON) show through."""
    for setting in SETTINGS.values():
        if not setting.flags:
            continue
        shown = "" if setting.default in (None, "", {}, ()) else f"; default {setting.default}"
        help_text = f"{setting.help} [{setting.env}{shown}]".replace("%", "%%")
        common: dict[str, Any] = {"dest": setting.name, "default": argparse.SUPPRESS}
        if setting.kind == "bool":
            parser.add_argument(*setting.flags, action="store_true", help=help_text, **common)
        elif setting.kind == "list":  # one or more values, repeatable
            parser.add_argument(
                *setting.flags,
                nargs="+",
                action="extend",
                metavar=setting.declared.metavar,
                help=help_text,
                **common,
            )
        elif setting.kind == "dict":  # KEY=VALUE, repeatable
            parser.add_argument(
                *setting.flags,
                action="append",
                metavar=setting.declared.metavar or "KEY=VALUE",
                help=help_text,
                **common,
            )
        else:
            parser.add_argument(
                *setting.flags, metavar=setting.declared.metavar, help=help_text, **common
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
    parser = argparse.ArgumentParser(prog="llm-runtime serve", add_help=False)
    add_serve_arguments(parser)
    parsed, rest = parser.parse_known_args(argv)
    args = vars(parsed)
    service_json = args.pop("config", None)
    for setting in SETTINGS.values():
        if setting.kind == "dict" and setting.name in args:
            args[setting.name] = parse_key_values(args[setting.name], str(setting.flag))
    if rest:
        model, engine_args = vllm_flags(rest)
        if model is not None:
            args.setdefault("model_path", model)
        if engine_args:  # --engine-arg, given too, names the same settings last
            args["engine_args"] = {**engine_args, **args.get("engine_args", {})}
    return load_config(args, environ, service_json)


def vllm_flags(argv: Sequence[str]) -> tuple[str | None, dict[str, Any]]:
    """What vLLM's own parser reads from the flags the runtime does not know: the positional
    model, and the engine arguments given; ConfigError for a flag of vLLM's front end that the
    runtime does not implement."""
    parser, engine_fields = _vllm_parser(argv)
    given = vars(parser.parse_args(list(argv)))  # vLLM's checks: it exits 2 as vllm serve does
    defaults = vars(parser.parse_args([]))
    changed = {key: value for key, value in given.items() if value != defaults.get(key)}
    model = changed.pop("model_tag", None) or changed.pop("model", None)
    engine_args = {key: value for key, value in changed.items() if key in engine_fields}
    for key in sorted(set(changed) - set(engine_args)):
        if key in VLLM_FRONTEND_HARMLESS:
            log.info("vLLM's --%s: nothing to do in this runtime", key.replace("_", "-"))
            continue
        raise ConfigError(
            f"vLLM's --{key.replace('_', '-')} is not supported by this runtime "
            "(llm-runtime serve --help lists what is)"
        )
    return model, engine_args


def _vllm_parser(argv: Sequence[str]) -> tuple[argparse.ArgumentParser, set[str]]:
    try:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.cli_args import make_arg_parser
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:
        raise ConfigError(
            f"unrecognized arguments: {' '.join(argv)} (vLLM's own flags need vLLM installed)"
        ) from None
    import dataclasses

    parser = make_arg_parser(FlexibleArgumentParser(prog="llm-runtime serve"))
    return parser, {field.name for field in dataclasses.fields(AsyncEngineArgs)}


class _ServeHelp(argparse.Action):
    """The runtime's flags, then vLLM's engine arguments (when vLLM is installed)."""

    def __call__(self, parser: argparse.ArgumentParser, *args: Any, **kwargs: Any) -> None:
        parser.print_help()
        try:
            from vllm.engine.arg_utils import AsyncEngineArgs
            from vllm.utils.argparse_utils import FlexibleArgumentParser
        except ImportError:
            parser.exit()
        engine = AsyncEngineArgs.add_cli_args(FlexibleArgumentParser(add_help=False))
        print(
            "\nvLLM's engine arguments, read by vLLM's own parser (as `vllm serve` takes "
            "them; the runtime's flags above take precedence):"
        )
        sys.stdout.write(engine.format_help().split("\n", 2)[-1])
        parser.exit()
