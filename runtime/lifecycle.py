"""One server process from start to exit: bind, prepare, load, warm up, serve, drain, stop.

The port is bound first, so probes get answers while everything else happens: /health 200 and
/ready 503 with the phase. SIGTERM drains (runtime/drain.py) and the process exits 0; a second
signal exits at once. A watchdog exits non-zero when the engine dies, so the orchestrator
restarts the container.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import time
from typing import Any

import psutil
import uvicorn

from models.validate import ModelCheckError
from processors.custom_processor import CustomProcessorError
from runtime.app import ServedApp, ServingParts
from runtime.config import ConfigError
from runtime.drain import EXIT_ENGINE_FAILED, EXIT_OK, DrainController
from runtime.host import ensure_shared_memory, gpu_facts, resource_shortfalls, wanted_shm_bytes
from runtime.http_server import HttpServer, protocol_with_header_timeout
from runtime.phase import Phase
from runtime.prepare import (
    PrepareError,
    apply_container_env,
    check_storage_mounts,
    install_python_requirements,
)
from runtime.queue import open_queue
from runtime.stats_log import ThroughputLog
from runtime.threads import DaemonThreadExecutor
from runtime.warmup import read_warm_up, run_warm_up

log = logging.getLogger(__name__)

EXIT_START_ERROR = 2
ENGINE_SHUTDOWN_TIMEOUT_S = 30.0
# Start-up is never silent: a phase is logged when it begins and this often while it lasts.
PROGRESS_INTERVAL_S = 10.0
START_ERRORS = (PrepareError, ModelCheckError, CustomProcessorError, ConfigError, ValueError)


class Lifecycle:
    """One server process serving `served` (an app over its processor, made from `parts`)."""

    def __init__(self, parts: ServingParts, served: ServedApp) -> None:
        self.config = config = parts.config
        self.parts = parts
        self.status = parts.status
        self.served = served
        self.processor = served.processor
        self.drain = DrainController(
            parts.status,
            parts.admission,
            self.served.abort_all,
            self._stop_server,
            config.lifecycle.grace_period,
        )
        self.server = HttpServer(
            uvicorn.Config(
                self.served.asgi,
                host=config.server.host,
                port=config.server.port,
                log_config=None,  # keep the runtime's logging set-up
                access_log=config.observability.access_log,
                http=protocol_with_header_timeout(config.lifecycle.request_read_timeout),
                timeout_keep_alive=config.lifecycle.timeout_keep_alive,
                # Requests are drained before the server is told to exit; this only bounds
                # connections that are stuck.
                timeout_graceful_shutdown=5,
                ws_max_size=config.lifecycle.max_body_bytes,  # a WebSocket message is a body
            )
        )
        self.exit_code = EXIT_OK
        # Children the process had before the runtime started are not the runtime's to stop (a
        # program that embeds it, a test runner with servers of its own).
        self._children_before = _child_pids()
        self._started = time.monotonic()  # start-up's log lines count from here
        self._loading = ""  # what is being loaded, for the progress lines
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        loop.set_default_executor(DaemonThreadExecutor())
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)
        serving = asyncio.create_task(self.server.serve(), name="http-server")
        self._startup = self._spawn(self._start_up(), "start-up")
        try:
            await serving
        finally:
            for task in self._tasks:
                task.cancel()
            if self.status.phase is not Phase.FAILED:
                self.status.phase = Phase.STOPPING
            if self.parts.queue is not None:
                await self.parts.queue.stop()
            await self._shutdown_processor()
            if self.parts.call_log is not None:  # every record of the drained requests lands
                await asyncio.to_thread(self.parts.call_log.close)
            await asyncio.to_thread(self.parts.tracing.shutdown)  # the last spans go out
        log.info("stopped (exit code %d)", self.exit_code)
        return self.exit_code

    async def _start_up(self) -> None:
        progress = self._spawn(self._report_progress(), "start-up progress")
        try:
            await self._prepare()
            service = await self._load()
            await self._warm_up(service)
            _freeze_heap()
        except asyncio.CancelledError:
            raise
        except START_ERRORS as exc:
            self._fail(f"cannot start: {exc}", EXIT_START_ERROR)
            return
        except Exception as exc:
            log.exception("the processor failed to start")
            self._fail(f"cannot start: {exc}", EXIT_ENGINE_FAILED)
            return
        finally:
            progress.cancel()
        self.status.phase = Phase.READY
        if self.parts.queue is not None:
            answer = self.served.answers(service)[self.config.server.platform_paths[1]]
            concurrency = self.processor.info.max_concurrency
            self.parts.queue.start(answer, self.parts.admission, concurrency)
        log.info(
            "ready on port %d, %.1f s after start",
            self.config.server.port,
            time.monotonic() - self._started,
        )
        self._spawn(self.drain.watch(self.processor.check_health), "engine-watchdog")
        interval = self.config.observability.log_stats_interval
        if interval > 0:
            throughput = ThroughputLog(self.parts.metrics, self.processor, self.parts.admission)
            self._spawn(throughput.run(interval), "throughput-log")

    async def _prepare(self) -> None:
        prepare, lifecycle = self.config.prepare, self.config.lifecycle
        apply_container_env(prepare, os.environ)
        check_storage_mounts(prepare)
        if self.parts.call_log is not None:
            try:
                self.parts.call_log.open()
            except OSError as exc:
                raise PrepareError(f"cannot open the call log: {exc}") from exc
        if self.parts.queue is not None:
            self.parts.queue.attach(await open_queue(self.config, self._waiting_for_queue))
            self.status.reason = None
        if prepare.python_requirements or prepare.python_requirements_path:
            self._enter(Phase.INSTALLING)
            await asyncio.to_thread(install_python_requirements, prepare)
        gpus = await asyncio.to_thread(gpu_facts)
        log.info("GPUs: %s", gpus if gpus is not None else "none seen (no NVML)")
        for shortfall in resource_shortfalls(dict(lifecycle.host_resources), gpus):
            log.warning("resources: %s", shortfall)
        engine = self.config.engine
        shm = ensure_shared_memory(
            wanted_shm_bytes(lifecycle.shm_size_gb, engine.tensor_parallel_size),
            engine.tensor_parallel_size,
            lifecycle.shm_policy,
            os.environ,
        )
        (log.info if shm.action == "enough" else log.warning)("%s", shm.describe())
        self.status.host_facts = {
            "gpus": gpus,
            "shared_memory": {
                "size_bytes": shm.size_bytes,
                "wanted_bytes": shm.wanted_bytes,
                "action": shm.action,
            },
        }

    async def _load(self) -> Any:
        self._enter(Phase.LOADING)
        self._loading = await self.served.check()
        service = await self.served.load()
        self.parts.admission.open(service, self.processor.info.max_concurrency)
        return service

    def _waiting_for_queue(self, reason: str) -> None:
        """The queue's store is not reachable yet: readiness says why, the log says it once."""
        if self.status.reason != reason:
            log.warning("start-up: %s; retrying", reason)
        self.status.reason = reason
        if self.status.phase is not Phase.OPENING_QUEUE:
            self._enter(Phase.OPENING_QUEUE)

    def _enter(self, phase: Phase) -> None:
        self.status.phase = phase
        log.info("start-up: %s (%.0f s after start)", phase.value, time.monotonic() - self._started)

    async def _report_progress(self) -> None:
        """Every PROGRESS_INTERVAL_S of a start-up phase, says it goes on: the seconds spent in
        it and the GPU memory in use (it grows as the weights arrive)."""
        phase, since = self.status.phase, time.monotonic()
        reported = since
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            if self.status.phase is not phase:  # each phase logs its own beginning
                phase, since, reported = self.status.phase, now, now
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

    async def _warm_up(self, service: Any) -> None:
        path = self.config.lifecycle.warm_up_path
        if path:
            self._enter(Phase.WARMING_UP)
            requests = read_warm_up(path, self.config.server.service_name)
            await run_warm_up(self.served.answers(service), requests)

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self._stopping:
            log.warning("second %s: exiting now", name)
            _kill_children(spare=self._children_before)
            logging.shutdown()
            os._exit(128 + signum)
        self._stopping = True
        if not self.status.is_ready:  # nothing was admitted yet: stop starting
            log.info("%s while %s: stopping", name, self.status.phase.value)
            self._startup.cancel()
            self._stop_server(EXIT_OK)
            return
        self._spawn(self.drain.drain(name), "drain")

    def _stop_server(self, exit_code: int) -> None:
        self.exit_code = exit_code
        self.server.should_exit = True

    def _fail(self, message: str, exit_code: int) -> None:
        log.error("%s", message)
        self.status.phase = Phase.FAILED
        self._stop_server(exit_code)

    async def _shutdown_processor(self) -> None:
        try:
            await asyncio.wait_for(self.processor.shutdown(), ENGINE_SHUTDOWN_TIMEOUT_S)
        except Exception as exc:
            log.warning("the engine did not shut down cleanly: %s", exc)
        _kill_children(spare=self._children_before)

    def _spawn(self, work, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


def _freeze_heap() -> None:
    """Move what start-up allocated (the engine's modules, the tokenizer, the app) out of the
    collector's reach: it lives as long as the process, and full collections that re-scan it
    would stall every stream for tens of milliseconds. vLLM's engine core does the same."""
    gc.collect()
    gc.freeze()


def _child_pids() -> set[int]:
    return {child.pid for child in psutil.Process().children()}


def _kill_children(spare: set[int]) -> None:
    """No child process the runtime started (engine core, workers) may outlive it; the
    children in `spare`, there before it started, and theirs are left alone.

    multiprocessing's resource tracker is spared: it ignores SIGTERM by design and exits by
    itself once this process is gone, after removing the shared memory left behind.
    """
    children: list[psutil.Process] = []
    for child in psutil.Process().children():
        if child.pid not in spare:
            with contextlib.suppress(psutil.Error):
                children += [child, *child.children(recursive=True)]
    children = [child for child in children if not _is_resource_tracker(child)]
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
