"""`llm-runtime serve`: prepare, check the model, bind the port, load, serve, shut down."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
from collections.abc import Iterator

import uvicorn

from models.demo import DEMO_MODEL_NAME, ensure_demo_model
from models.validate import ModelCheckError, ModelReport, check_model_dir
from processors.registry import architectures_for, create_processor, resolve_processor_name
from processors.settings import EngineSettings
from runtime.app import build_app
from runtime.config import RuntimeConfig
from runtime.prepare import apply_container_env, check_storage_mounts, install_python_requirements
from runtime.state import Phase, ServingState

log = logging.getLogger(__name__)


def resolve_model(config: RuntimeConfig) -> EngineSettings:
    """The engine settings with a concrete model path: the built-in demo model when none."""
    engine = config.engine
    if engine.model_path:
        return engine
    path = ensure_demo_model()
    log.info("no --model given: serving the built-in demo model from %s", path)
    return dataclasses.replace(
        engine, model_path=str(path), served_model_name=engine.served_model_name or DEMO_MODEL_NAME
    )


def check_model(processor: str, engine: EngineSettings) -> ModelReport:
    """The same checks as `llm-runtime check`; raises ModelCheckError."""
    name = resolve_processor_name(processor)
    return check_model_dir(
        engine.model_path,
        supported_architectures=architectures_for(name),
        processor_name=f"the {name} processor",
        max_model_len=engine.max_model_len,
    )


def serve(config: RuntimeConfig) -> int:
    """Run the server until it is stopped; the process exit code."""
    logging.getLogger().setLevel(config.server.log_level.upper())
    log.info("config in effect: %s", config.redacted())
    if config.ignored_keys:
        log.warning(
            "service JSON keys ignored (not supported by this runtime): %s",
            ", ".join(config.ignored_keys),
        )
    apply_container_env(config.prepare, os.environ)
    check_storage_mounts(config.prepare)
    install_python_requirements(config.prepare)
    engine = resolve_model(config)
    report = check_model(config.processor, engine)
    log.info("model check passed:\n%s", report.describe())
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_serve(config, engine))


async def _serve(config: RuntimeConfig, engine: EngineSettings) -> int:
    processor = create_processor(config.processor, engine)
    state = ServingState(config, processor)
    server = _HttpServer(
        uvicorn.Config(
            build_app(state),
            host=config.server.host,
            port=config.server.port,
            log_config=None,  # keep the runtime's logging set-up
            access_log=False,
            timeout_keep_alive=30,
        )
    )
    # The port is bound while the model loads, so probes get answers (liveness 200,
    # readiness 503) instead of connection refused.
    _handle_stop_signals(server)
    serving = asyncio.create_task(server.serve(), name="http-server")
    loading = asyncio.create_task(state.start(), name="model-loader")
    exit_code = 0
    await asyncio.wait({serving, loading}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        log.error("could not start the processor: %s", loading.exception())
        state.phase = Phase.FAILED
        server.should_exit = True
        exit_code = 1
    elif not loading.done():
        loading.cancel()  # stopped while still loading
    try:
        await serving
    finally:
        if state.phase is Phase.READY:
            state.phase = Phase.STOPPING
        await processor.shutdown()  # the engine's child processes must not outlive us
    log.info("stopped")
    return exit_code


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: it would re-raise SIGTERM once serving ends,
    killing the process before the engine (and its child processes) is shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _handle_stop_signals(server: uvicorn.Server) -> None:
    """SIGTERM/SIGINT stop serving through the event loop; a second one forces the exit."""
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if server.should_exit:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            server.force_exit = True
        else:
            log.info("%s received: stopping", signal.Signals(signum).name)
            server.should_exit = True

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)


def _loop_factory():  # -> Callable[[], AbstractEventLoop]
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


__all__ = ["ModelCheckError", "check_model", "resolve_model", "serve"]
