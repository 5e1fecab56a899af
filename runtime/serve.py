"""Serving entry points: `llm-runtime serve`, and a processor file run with python.

Each logs what is in effect, makes the processor the config asks for, the app of its contract,
and runs the process's lifecycle until it stops; the result is the process exit code.
"""

from __future__ import annotations

import asyncio
import logging
import os

from models.cache import cache_dir
from models.validate import ModelCheckError
from processors.allspark_api import BaseProcessor
from processors.custom_processor import CustomProcessor
from processors.registry import (
    ProcessorUnavailableError,
    create_llm_processor,
    create_raw_processor,
    processor_kind,
)
from runtime.app import LlmApp, RawApp, ServedApp, ServingParts
from runtime.config import ConfigError, RuntimeConfig
from runtime.config.flags import serve_config
from runtime.lifecycle import EXIT_START_ERROR, Lifecycle
from runtime.logs import configure_logging, setup_logging
from runtime.model_source import resolve_model

log = logging.getLogger(__name__)

# The platform's own processes listen on these inside a service's container (PAI-EAS's custom
# image documentation: the container port must be neither).
PLATFORM_RESERVED_PORTS = (8080, 9090)


def serve(config: RuntimeConfig) -> int:
    """Serve the processor `config` names."""
    try:
        parts = ServingParts.for_config(config)
        served: ServedApp
        if processor_kind(config.processor) == "raw":
            served = RawApp(parts, create_raw_processor(config.engine, config.custom))
        else:
            source = resolve_model(config.engine)
            processor = create_llm_processor(config.processor, source.settings)
            served = LlmApp(parts, processor, source)
    except (ProcessorUnavailableError, ModelCheckError) as exc:  # before the port is bound
        log.error("cannot serve: %s", exc)
        return EXIT_START_ERROR
    return _run(parts, served)


def serve_user_processor(user: BaseProcessor, argv: list[str]) -> int:
    """Serve a processor object already built (a file run with python: `python app.py
    --port 8000`); `argv` takes `llm-runtime serve`'s flags."""
    setup_logging()
    try:
        config = serve_config([*argv, "--processor", "custom"], os.environ)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return EXIT_START_ERROR
    if config.custom.worker_threads:
        user.worker_threads = config.custom.worker_threads
    parts = ServingParts.for_config(config)
    return _run(parts, RawApp(parts, CustomProcessor.for_instance(user, config.engine)))


def _run(parts: ServingParts, served: ServedApp) -> int:
    config = parts.config
    configure_logging(config.observability.log_format, config.server.log_level, cache_dir())
    log.info("config in effect: %s", config.redacted())
    reserved = reserved_port_warning(config)
    if reserved:
        log.warning("%s", reserved)
    if config.ignored_keys:
        log.warning(
            "service JSON keys ignored (not supported by this runtime): %s",
            ", ".join(config.ignored_keys),
        )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(Lifecycle(parts, served).run())


def reserved_port_warning(config: RuntimeConfig) -> str | None:
    """What to say when a platform deployment (a service JSON) serves on a port the platform
    keeps for itself."""
    port = config.server.port
    if config.service_json is None or port not in PLATFORM_RESERVED_PORTS:
        return None
    return (
        f"port {port} is reserved on the platform (PAI-EAS runs its own processes on "
        f"{' and '.join(map(str, PLATFORM_RESERVED_PORTS))} in a service's container): set "
        "containers[0].port (or --port) to another, e.g. 8000"
    )


def _loop_factory():  # -> Callable[[], AbstractEventLoop]
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
