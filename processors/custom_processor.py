"""A user's processor written for the platform's API, behind the RawProcessor contract.

`process(body) -> (bytes, status)` runs the user's `process` in a pool of `worker_threads`
threads, so that many calls run at once and the event loop never waits on user code.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import logging
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from processors.allspark_api import BaseProcessor
from processors.base import ProcessorError, ProcessorInfo, ProcessorStats
from processors.settings import CustomSettings, EngineSettings

log = logging.getLogger(__name__)

OK_STATUSES = (0, 200)


class CustomProcessorError(Exception):
    """The user's processor cannot be loaded or initialised; the message says why."""


class CustomProcessor:
    name = "custom"

    def __init__(self, engine: EngineSettings, custom: CustomSettings) -> None:
        self._engine = engine
        self._custom = custom
        self._user: BaseProcessor | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._num_in_flight = 0  # calls submitted and not yet answered
        self._num_running = 0  # of those, the ones a thread is running
        self._info: ProcessorInfo | None = None

    @classmethod
    def for_instance(cls, user: BaseProcessor, engine: EngineSettings) -> CustomProcessor:
        """Serve a processor object that is already built (a file run with python)."""
        processor = cls(engine, CustomSettings(worker_threads=user.worker_threads))
        processor._user = user
        return processor

    @property
    def info(self) -> ProcessorInfo:
        if self._info is None:
            raise RuntimeError("the custom processor has not started")
        return self._info

    async def start(self) -> None:
        # Importing the user's file can take seconds (torch, transformers): not on the loop.
        user = self._user
        if user is None:
            user = await asyncio.to_thread(self._load_user_class)
        user.model_path = self._engine.model_path or user.model_path
        user.model_entry = self._custom.model_entry or user.model_entry
        user.model_config = self._custom.model_config or user.model_config
        threads = self._custom.worker_threads or user.worker_threads
        try:
            await asyncio.to_thread(user.initialize)
        except Exception as exc:
            raise CustomProcessorError(
                f"{type(user).__name__}.initialize() failed: {type(exc).__name__}: {exc}"
            ) from exc
        self._user = user
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="processor")
        self._info = ProcessorInfo(
            name=self.name,
            model_name=self._engine.served_model_name or type(user).__name__,
            model_path=user.model_path,
            max_concurrency=threads,
        )
        log.info("custom processor %s initialised, %d worker threads", type(user).__name__, threads)

    def _load_user_class(self) -> BaseProcessor:
        entry = self._custom.entry
        if not entry:
            raise CustomProcessorError(
                "the custom processor needs --processor-entry (service JSON processor_entry)"
            )
        folder = Path(self._custom.path or ".")
        path = Path(entry) if Path(entry).is_absolute() else folder / entry
        if not path.is_file():
            raise CustomProcessorError(f"processor entry {path} does not exist")
        # The user's file imports its neighbours, as it would on the platform.
        sys.path.insert(0, str(path.parent.resolve()))
        spec = importlib.util.spec_from_file_location(f"user_processor_{path.stem}", path)
        if spec is None or spec.loader is None:
            raise CustomProcessorError(f"processor entry {path} is not a Python file")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            raise CustomProcessorError(
                f"importing {path} failed: {type(exc).__name__}: {exc}"
            ) from exc
        user_class = self._find_class(module, path)
        threads = self._custom.worker_threads or 5
        try:
            return user_class(worker_threads=threads)
        except TypeError:  # a constructor of its own, without worker_threads
            return user_class()

    def _find_class(self, module: Any, path: Path) -> type[BaseProcessor]:
        wanted = self._custom.mainclass
        if wanted:
            found = getattr(module, wanted, None)
            if not (inspect.isclass(found) and issubclass(found, BaseProcessor)):
                raise CustomProcessorError(
                    f"{path} has no class {wanted} derived from allspark.BaseProcessor"
                )
            return found
        candidates = [
            value
            for value in vars(module).values()
            if inspect.isclass(value)
            and issubclass(value, BaseProcessor)
            and value is not BaseProcessor
            and value.__module__ == module.__name__
        ]
        if len(candidates) != 1:
            names = ", ".join(sorted(c.__name__ for c in candidates)) or "none"
            raise CustomProcessorError(
                f"{path} must define exactly one allspark.BaseProcessor subclass, or name one "
                f"with --processor-mainclass (found: {names})"
            )
        return candidates[0]

    async def process(self, body: bytes) -> tuple[bytes, int]:
        """The user's answer to one body, with an HTTP status."""
        if self._user is None or self._pool is None:
            raise RuntimeError("the custom processor has not started")
        self._num_in_flight += 1
        loop = asyncio.get_running_loop()
        try:
            result = await loop.run_in_executor(self._pool, self._call_user, body)
        finally:
            self._num_in_flight -= 1
        return _to_response(result)

    def _call_user(self, body: bytes) -> Any:
        self._num_running += 1
        try:
            return self._user.process(body)  # type: ignore[union-attr]
        except Exception as exc:
            raise ProcessorError(f"process() raised {type(exc).__name__}: {exc}") from exc
        finally:
            self._num_running -= 1

    async def check_health(self) -> None:
        pass

    def stats(self) -> ProcessorStats:
        running = self._num_running
        return ProcessorStats(running, max(self._num_in_flight - running, 0), 0.0)

    async def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _to_response(result: Any) -> tuple[bytes, int]:
    """(bytes, status) from what process() returned: a tuple, or a bare body meaning 200."""
    body, status = result if isinstance(result, tuple) and len(result) == 2 else (result, 200)
    if isinstance(body, str):
        body = body.encode()
    if body is None:
        body = b""
    if not isinstance(body, bytes | bytearray):
        raise ProcessorError(
            f"process() must return bytes (or str) and a status, got {type(body).__name__}"
        )
    if not isinstance(status, int) or isinstance(status, bool):
        raise ProcessorError(f"process() returned a status that is not an int: {status!r}")
    if status in OK_STATUSES:
        status = 200
    elif not 100 <= status <= 599:
        raise ProcessorError(f"process() returned status {status}, not an HTTP status")
    return bytes(body), status
