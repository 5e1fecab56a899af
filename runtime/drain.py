"""What happens to work in flight when serving ends: the drain on SIGTERM and the watchdog.

SIGTERM drains: readiness and new requests get 503 at once, requests in flight run to
completion for up to the grace period, then the rest are cut short with a final error. A dead
engine fails every request in flight and the process exits 1, so the orchestrator restarts it.
Either way the HTTP server is told to stop only once nothing is in flight any more (or a short
wait for the final error chunks to go out has passed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from runtime.admission import Admission
from runtime.errors import ApiError, ErrorKind, ShuttingDown
from runtime.phase import Phase, ServingStatus

log = logging.getLogger(__name__)

EXIT_OK, EXIT_ENGINE_FAILED = 0, 1
WATCHDOG_INTERVAL_S = 1.0
HEALTH_CHECK_TIMEOUT_S = 10.0
FINAL_ERRORS_WAIT_S = 5.0  # for the final error chunks of the requests cut short to go out


class DrainController:
    def __init__(
        self,
        status: ServingStatus,
        admission: Admission,
        abort_all: Callable[[ApiError], int],
        stop_server: Callable[[int], None],
        grace_period: float,
    ) -> None:
        self._status = status
        self._admission = admission
        self._abort_all = abort_all  # cuts every request in flight short with the reason
        self._stop_server = stop_server  # with the process's exit code
        self.grace_period = grace_period

    async def drain(self, reason: str) -> None:
        """Stop taking work, let the work in flight finish within the grace period, then stop
        the server (exit code 0)."""
        grace = self.grace_period
        self._status.phase = Phase.DRAINING
        log.info(
            "%s: draining %d requests in flight for up to %g s",
            reason,
            self._admission.num_in_flight,
            grace,
        )
        if not await self._admission.wait_idle(grace):
            cut_short = ShuttingDown(
                ErrorKind.UNAVAILABLE,
                f"the server is shutting down and its drain period of {grace:g} s ended "
                "before this request finished",
            )
            aborted = self._abort_all(cut_short)
            log.warning("drain period ended: %d requests aborted with an error", aborted)
            await self._admission.wait_idle(FINAL_ERRORS_WAIT_S)
        self._stop_server(EXIT_OK)

    async def watch(
        self,
        check_health: Callable[[], Awaitable[None]],
        interval: float = WATCHDOG_INTERVAL_S,
    ) -> None:
        """Check the engine every `interval`; once it is dead, fail what is in flight and stop
        the server with exit code 1."""
        while True:
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(check_health(), HEALTH_CHECK_TIMEOUT_S)
            except Exception as exc:
                log.error("the engine is dead (%s): exiting so the container restarts", exc)
                break
        self._status.phase = Phase.FAILED
        self._abort_all(ShuttingDown(ErrorKind.ENGINE_DEAD, "the inference engine died"))
        await self._admission.wait_idle(3)
        self._stop_server(EXIT_ENGINE_FAILED)
