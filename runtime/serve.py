"""`llm-runtime serve`: log what is in effect, then run the process's lifecycle."""

from __future__ import annotations

import asyncio
import logging

from processors.base import Processor
from processors.registry import resolve_processor_name
from runtime.config import RuntimeConfig
from runtime.lifecycle import Lifecycle

log = logging.getLogger(__name__)


def serve(config: RuntimeConfig, processor: Processor | None = None) -> int:
    """Run the server until it is stopped; the process exit code."""
    logging.getLogger().setLevel(config.server.log_level.upper())
    log.info("config in effect: %s", config.redacted())
    if config.ignored_keys:
        log.warning(
            "service JSON keys ignored (not supported by this runtime): %s",
            ", ".join(config.ignored_keys),
        )
    resolve_processor_name(config.processor)  # an unknown or missing engine fails before bind
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(Lifecycle(config, processor).run())


def _loop_factory():  # -> Callable[[], AbstractEventLoop]
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop
