"""The `llm-runtime` command: serve, check, demo-model."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

from runtime import __version__
from runtime.config import SETTINGS, ConfigError, load_config

log = logging.getLogger("runtime")

# flag -> setting name; every flag defaults to "not given" so lower layers show through
SERVE_FLAGS: dict[str, str] = {
    "--model": "model_path",
    "--processor": "processor",
    "--host": "host",
    "--port": "port",
    "--token": "token",
    "--service-name": "service_name",
    "--served-model-name": "served_model_name",
    "--max-model-len": "max_model_len",
    "--dtype": "dtype",
    "--max-num-seqs": "max_num_seqs",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--tensor-parallel-size": "tensor_parallel_size",
    "--log-level": "log_level",
    "--grace-period": "grace_period",
    "--request-timeout": "request_timeout",
    "--stream-interval": "stream_interval",
    "--max-queue-size": "max_queue_size",
    "--max-body-bytes": "max_body_bytes",
    "--warm-up": "warm_up_path",
    "--shm-size": "shm_size_gb",
    "--shm-policy": "shm_policy",
    "--readiness-path": "readiness_path",
    "--liveness-path": "liveness_path",
    "--processor-entry": "processor_entry",
    "--processor-path": "processor_path",
    "--processor-mainclass": "processor_mainclass",
    "--model-entry": "model_entry",
    "--model-config": "model_config",
    "--worker-threads": "worker_threads",
    "--call-log": "call_log",
    "--call-log-max-bytes": "call_log_max_bytes",
    "--call-log-backups": "call_log_backups",
    "--queue-path": "queue_path",
    "--queue-result-ttl": "queue_result_ttl",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llm-runtime", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llm-runtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve a model (the demo model without --model)")
    serve.add_argument("--config", help="the platform's service JSON (deployment file)")
    for flag, name in SERVE_FLAGS.items():
        serve.add_argument(flag, dest=name, default=argparse.SUPPRESS, help=SETTINGS[name].help)
    serve.add_argument(
        "--engine-arg",
        dest="engine_args",
        action="append",
        default=argparse.SUPPRESS,
        metavar="KEY=VALUE",
        help="extra engine argument (repeatable); VALUE is parsed as JSON when it can be",
    )
    serve.add_argument(
        "--auth-health",
        dest="auth_health",
        action="store_true",
        default=argparse.SUPPRESS,
        help=SETTINGS["auth_health"].help,
    )
    serve.add_argument(
        "--webui",
        dest="webui",
        action="store_true",
        default=argparse.SUPPRESS,
        help=SETTINGS["webui"].help,
    )
    serve.add_argument(
        "--async",
        dest="async",
        action="store_true",
        default=argparse.SUPPRESS,
        help=SETTINGS["async"].help,
    )
    serve.add_argument(
        "--chatllm-stream-default",
        dest="chatllm_stream_default",
        action="store_true",
        default=argparse.SUPPRESS,
        help=SETTINGS["chatllm_stream_default"].help,
    )

    check = commands.add_parser("check", help="validate a model folder and print what it holds")
    check.add_argument("--model", required=True, help="the model folder")
    check.add_argument("--processor", default="auto")
    check.add_argument("--max-model-len", type=int, default=None)

    demo = commands.add_parser("demo-model", help="write the built-in demo model to DIR")
    demo.add_argument("directory", type=Path)
    return parser


def parse_engine_args(items: list[str]) -> dict[str, Any]:
    import json

    parsed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--engine-arg expects KEY=VALUE, got {item!r}")
        try:
            parsed[key.replace("-", "_")] = json.loads(raw)
        except ValueError:
            parsed[key.replace("-", "_")] = raw
    return parsed


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    command = args.pop("command")
    _setup_logging()
    try:
        if command == "serve":
            return _serve(args)
        if command == "check":
            return _check(args)
        return _demo_model(args["directory"])
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2


def _load_serve_config(args: dict[str, Any]):  # -> RuntimeConfig
    service_json = args.pop("config", None)
    if "engine_args" in args:
        args["engine_args"] = parse_engine_args(args["engine_args"])
    return load_config(args, os.environ, service_json)


def serve_processor(user: Any) -> int:
    """Serve an allspark processor object, for a file run directly (`python app.py --port N`);
    the command line takes `serve`'s flags."""
    from processors.custom_processor import CustomProcessor
    from runtime.model_source import resolve_model
    from runtime.serve import serve

    _setup_logging()
    args = vars(build_parser().parse_args(["serve", *sys.argv[1:]]))
    args.pop("command")
    try:
        config = _load_serve_config({**args, "processor": "custom"})
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    if config.custom.worker_threads:
        user.worker_threads = config.custom.worker_threads
    try:
        return serve(config, CustomProcessor.for_instance(user, resolve_model(config)))
    except ConfigError as exc:  # e.g. an --async queue file that cannot be opened
        log.error("configuration error: %s", exc)
        return 2


def _serve(args: dict[str, Any]) -> int:
    from processors.registry import ProcessorUnavailableError
    from runtime.serve import serve

    config = _load_serve_config(args)
    try:
        return serve(config)
    except ProcessorUnavailableError as exc:  # later start-up errors are the lifecycle's
        log.error("cannot serve: %s", exc)
        return 2


def _check(args: dict[str, Any]) -> int:
    from models.validate import ModelCheckError
    from processors.registry import ProcessorUnavailableError
    from processors.settings import EngineSettings
    from runtime.model_source import check_model

    settings = EngineSettings(model_path=args["model"], max_model_len=args["max_model_len"])
    try:
        report = check_model(args["processor"], settings)
    except (ModelCheckError, ProcessorUnavailableError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(report.describe())
    print("ok")
    return 0


def _demo_model(directory: Path) -> int:
    from models.demo import write_demo_model

    write_demo_model(directory)
    print(f"wrote the demo model to {directory}")
    return 0


def _setup_logging() -> None:
    # INFO until the config is read; `serve` then applies the configured level.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


if __name__ == "__main__":
    sys.exit(main())
