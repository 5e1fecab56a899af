"""The event loop's default executor: blocking start-up work (imports, model loading) in daemon
threads, so a stop during start-up does not wait for work nobody needs any more.

Loading a model cannot be interrupted; with asyncio's default executor the process would wait
at exit for it to end (minutes for a large model) after SIGTERM had stopped everything else.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable
from typing import Any


class DaemonThreadExecutor(concurrent.futures.Executor):
    """Each call in a daemon thread of its own; shutting down never waits for one. For the
    loop's occasional blocking calls only (a thread per call)."""

    def __init__(self) -> None:
        self._closed = False

    def submit(
        self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any
    ) -> concurrent.futures.Future:
        if self._closed:
            raise RuntimeError("the executor is shut down")
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(fn(*args, **kwargs))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=run, name="blocking-call", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True  # threads still running are abandoned with the process
