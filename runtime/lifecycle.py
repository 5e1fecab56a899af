"""One server process from start to exit: bind, prepare, load, warm up, serve, drain, stop.

The port is bound first, so probes get answers while everything else happens: /health 200 and
/ready 503 with the phase. SIGTERM drains: readiness and new requests get 503 at once, requests
in flight run to completion for up to the grace period, then the rest are aborted with a final
error and the process exits 0. A second signal exits at once. A watchdog exits non-zero when
the engine dies, so the orchestrator restarts the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from collections.abc import Iterator

import psutil
import uvicorn

from models.demo import ensure_demo_model
from models.validate import ModelCheckError
from processors.base import Processor
from processors.custom_processor import CustomProcessorError
from processors.registry import create_processor, serves_models
from runtime.admission import Admission
from runtime.app import build_app
from runtime.config import RuntimeConfig
from runtime.errors import ApiError, ErrorKind
from runtime.host import ensure_shared_memory, gpu_facts, resource_shortfalls, wanted_shm_bytes
from runtime.model_source import check_model, resolve_model
from runtime.prepare import (
    PrepareError,
    apply_container_env,
    check_storage_mounts,
    install_python_requirements,
)
from runtime.state import Phase, ServingState
from runtime.warmup import read_warm_up, run_warm_up

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ENGINE_FAILED, EXIT_START_ERROR = 0, 1, 2
WATCHDOG_INTERVAL_S = 1.0
ENGINE_SHUTDOWN_TIMEOUT_S = 30.0
# Start-up is never silent: a phase is logged when it begins and this often while it lasts.
PROGRESS_INTERVAL_S = 10.0


class Lifecycle:
    def __init__(self, config: RuntimeConfig, processor: Processor | None = None) -> None:
        self.config = config
        self.engine = resolve_model(config)
        processor = processor or create_processor(config.processor, self.engine, config.custom)
        self.state = ServingState(config, processor)
        self.app = build_app(self.state)
        self.admission: Admission = self.app.state.admission
        self.server = _HttpServer(
            uvicorn.Config(
                self.app,
                host=config.server.host,
                port=config.server.port,
                log_config=None,  # keep the runtime's logging set-up
                access_log=False,
                timeout_keep_alive=30,
                # Requests are drained before the server is told to exit; this only bounds
                # connections that are stuck.
                timeout_graceful_shutdown=5,
                ws_max_size=config.lifecycle.max_body_bytes,  # a WebSocket message is a body
            )
        )
        self.exit_code = EXIT_OK
        self._started = time.monotonic()  # start-up's log lines count from here
        self._loading = ""  # what is being loaded, for the progress lines
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        serving = asyncio.create_task(self.server.serve(), name="http-server")
        self._startup = self._spawn(self._start_up(), "start-up")
        try:
            await serving
        finally:
            for task in self._tasks:
                task.cancel()
            if self.state.phase is not Phase.FAILED:
                self.state.phase = Phase.STOPPING
            await self._shutdown_processor()
            if self.state.call_log is not None:  # every record of the drained requests lands
                await asyncio.to_thread(self.state.call_log.close)
        log.info("stopped (exit code %d)", self.exit_code)
        return self.exit_code

    async def _start_up(self) -> None:
        progress = self._spawn(self._report_progress(), "start-up progress")
        try:
            await self._prepare()
            await self._load()
            await self._warm_up()
            _freeze_heap()
        except asyncio.CancelledError:
            raise
        except (PrepareError, ModelCheckError, CustomProcessorError, ValueError) as exc:
            self._fail(f"cannot start: {exc}", EXIT_START_ERROR)
            return
        except Exception as exc:
            log.exception("the processor failed to start")
            self._fail(f"cannot start: {exc}", EXIT_ENGINE_FAILED)
            return
        finally:
            progress.cancel()
        self.state.phase = Phase.READY
        log.info(
            "ready on port %d, %.1f s after start",
            self.config.server.port,
            time.monotonic() - self._started,
        )
        self._spawn(self._watch_engine(), "engine-watchdog")

    async def _prepare(self) -> None:
        prepare, lifecycle = self.config.prepare, self.config.lifecycle
        apply_container_env(prepare, os.environ)
        check_storage_mounts(prepare)
        if self.state.call_log is not None:
            try:
                self.state.call_log.open()
            except OSError as exc:
                raise PrepareError(f"cannot open the call log: {exc}") from exc
        if prepare.python_requirements or prepare.python_requirements_path:
            self._enter(Phase.INSTALLING)
            await asyncio.to_thread(install_python_requirements, prepare)
        gpus = await asyncio.to_thread(gpu_facts)
        log.info("GPUs: %s", gpus if gpus is not None else "none seen (no NVML)")
        for shortfall in resource_shortfalls(dict(lifecycle.host_resources), gpus):
            log.warning("resources: %s", shortfall)
        shm = ensure_shared_memory(
            wanted_shm_bytes(lifecycle.shm_size_gb, self.engine.tensor_parallel_size),
            self.engine.tensor_parallel_size,
            lifecycle.shm_policy,
            os.environ,
        )
        (log.info if shm.action == "enough" else log.warning)("%s", shm.describe())
        self.state.host_facts = {
            "gpus": gpus,
            "shared_memory": {
                "size_bytes": shm.size_bytes,
                "wanted_bytes": shm.wanted_bytes,
                "action": shm.action,
            },
        }

    async def _load(self) -> None:
        self._enter(Phase.LOADING)
        if serves_models(self.config.processor):
            if not self.config.engine.model_path:
                await asyncio.to_thread(ensure_demo_model)
            report = await asyncio.to_thread(check_model, self.config.processor, self.engine)
            log.info("model check passed:\n%s", report.describe())
            size = report.weight_bytes
            shown = f"{size / 2**30:.1f} GiB" if size >= 2**30 else f"{size / 2**20:.0f} MiB"
            files = f"{len(report.weight_files)} {report.weight_format} file(s)"
            self._loading = f" {report.path} ({files}, {shown})"
        await self.state.load()

    def _enter(self, phase: Phase) -> None:
        self.state.phase = phase
        log.info("start-up: %s (%.0f s after start)", phase.value, time.monotonic() - self._started)

    async def _report_progress(self) -> None:
        """Every PROGRESS_INTERVAL_S of a start-up phase, says it goes on: the seconds spent in
        it and the GPU memory in use (it grows as the weights arrive)."""
        phase, since = self.state.phase, time.monotonic()
        reported = since
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.state.phase is not phase:  # each phase logs its own beginning
                phase, since, reported = self.state.phase, now, now
            elif now - reported >= PROGRESS_INTERVAL_S:
                reported = now
                what = self._loading if phase is Phase.LOADING else ""
                gpus = await asyncio.to_thread(gpu_facts)
                in_use = ""
                if gpus:
                    used = sum(gpu["memory_used_mib"] for gpu in gpus) / 1024
                    total = sum(gpu["memory_total_mib"] for gpu in gpus) / 1024
                    in_use = f"; GPU memory in use {used:.1f} of {total:.1f} GiB"
                log.info("still %s%s: %.0f s%s", phase.value, what, now - since, in_use)

    async def _warm_up(self) -> None:
        path = self.config.lifecycle.warm_up_path
        if path:
            self._enter(Phase.WARMING_UP)  # the processor is loaded: state.load() set it
            requests = read_warm_up(path, self.config.server.service_name)
            key, token = self.admission.warm_up_key, self.config.server.token
            await run_warm_up(self.app, requests, key, token)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            log.warning("second %s: exiting now", name)
            _kill_children()
            logging.shutdown()
            os._exit(128 + signum)
        self._stopping = True
        self._spawn(self._drain(name), "drain")

    async def _drain(self, signal_name: str) -> None:
        if not self.state.is_ready:  # nothing was admitted yet: stop starting
            log.info("%s while %s: stopping", signal_name, self.state.phase.value)
            self._startup.cancel()
            self.server.should_exit = True
            return
        grace = self.config.lifecycle.grace_period
        self.state.phase = Phase.DRAINING
        log.info(
            "%s: draining %d requests in flight for up to %g s",
            signal_name,
            self.admission.num_in_flight,
            grace,
        )
        if not await self.admission.wait_idle(grace):
            reason = ApiError(
                ErrorKind.UNAVAILABLE,
                f"the server is shutting down and its drain period of {grace:g} s ended "
                "before this request finished",
            )
            aborted = self.state.generator.abort_all(reason)
            log.warning("drain period ended: %d requests aborted with an error", aborted)
            await self.admission.wait_idle(5)  # their final error chunks go out
        self.server.should_exit = True

    async def _watch_engine(self) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_INTERVAL_S)
            try:
                await asyncio.wait_for(self.state.processor.check_health(), 10)
            except Exception as exc:
                log.error("the engine is dead (%s): exiting so the container restarts", exc)
                self.state.phase = Phase.FAILED
                self.exit_code = EXIT_ENGINE_FAILED
                self.state.generator.abort_all(
                    ApiError(ErrorKind.ENGINE_DEAD, "the inference engine died")
                )
                await self.admission.wait_idle(3)
                self.server.should_exit = True
                return

    def _fail(self, message: str, exit_code: int) -> None:
        log.error("%s", message)
        self.state.phase = Phase.FAILED
        self.exit_code = exit_code
        self.server.should_exit = True

    async def _shutdown_processor(self) -> None:
        try:
            await asyncio.wait_for(self.state.processor.shutdown(), ENGINE_SHUTDOWN_TIMEOUT_S)
        except Exception as exc:
            log.warning("the engine did not shut down cleanly: %s", exc)
        _kill_children()

    def _spawn(self, work, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


class _HttpServer(uvicorn.Server):
    """uvicorn without its own signal handling: the lifecycle drains on SIGTERM, and uvicorn
    would also re-raise the signal once serving ends, killing the process before the engine
    (and its child processes) is shut down."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _freeze_heap() -> None:
    """Move what start-up allocated (the engine's modules, the tokenizer, the app) out of the
    collector's reach: it lives as long as the process, and full collections that re-scan it
    would stall every stream for tens of milliseconds. vLLM's engine core does the same."""
    gc.collect()
    gc.freeze()


def _kill_children() -> None:
    """No child process (engine core, workers) may outlive the runtime.

    multiprocessing's resource tracker is spared: it ignores SIGTERM by design and exits by
    itself once this process is gone, after removing the shared memory left behind.
    """
    children = [
        child
        for child in psutil.Process().children(recursive=True)
        if not _is_resource_tracker(child)
    ]
    for child in children:
        with contextlib.suppress(psutil.Error):
            child.terminate()
    _, alive = psutil.wait_procs(children, timeout=3)
    for child in alive:
        with contextlib.suppress(psutil.Error):
            child.kill()


def _is_resource_tracker(process: psutil.Process) -> bool:
    try:
        return "multiprocessing.resource_tracker" in " ".join(process.cmdline())
    except psutil.Error:
        return False
