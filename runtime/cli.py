"""The `llm-runtime` command: serve, check, demo-model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runtime import __version__
from runtime.config import ConfigError
from runtime.config.flags import add_serve_arguments, serve_config
from runtime.logs import setup_logging

log = logging.getLogger("runtime")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llm-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="serve a model (SmolLM2 without --model)", add_help=False
    )
    add_serve_arguments(serve)

    check = commands.add_parser("check", help="validate a model folder and print what it holds")
    check.add_argument(
        "--model", required=True, help="a model folder, a GGUF file, or builtin:NAME"
    )
    check.add_argument("--processor", default="auto")
    check.add_argument("--max-model-len", type=int, default=None)
    check.add_argument("--gguf-file", help="which GGUF file of a folder holding several")

    demo = commands.add_parser("demo-model", help="write the built-in demo model to DIR")
    demo.add_argument("directory", type=Path)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    setup_logging()
    if argv[:1] == ["serve"]:  # its flags include vLLM's, which only vLLM's parser knows
        return _serve(argv[1:])
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    if command == "check":
        return _check(args)
    return _demo_model(args["directory"])


def _serve(argv: list[str]) -> int:
    from runtime.serve import serve

    try:
        config = serve_config(argv, os.environ)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    return serve(config)


def _check(args: dict[str, Any]) -> int:
    from models.gguf import inspect_gguf
    from models.validate import ModelCheckError
    from processors.registry import ProcessorUnavailableError
    from processors.settings import EngineSettings
    from runtime.model_source import check_model, resolve_model

    settings = EngineSettings(
        model_path=args["model"], max_model_len=args["max_model_len"], gguf_file=args["gguf_file"]
    )
    try:
        source = resolve_model(settings)
        if source.gguf is not None:
            print(inspect_gguf(source.gguf).describe())
        folder = Path(source.settings.model_path)
        if source.prepare is not None and not (folder / "config.json").is_file():
            print(f"made on the first start: {folder}")
        else:
            print(check_model(args["processor"], source.settings).describe())
    except (ModelCheckError, ProcessorUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("ok")
    return 0


def _demo_model(directory: Path) -> int:
    from models.demo import write_demo_model

    write_demo_model(directory)
    print(f"wrote the demo model to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
