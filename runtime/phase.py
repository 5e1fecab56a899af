"""Where serving stands: the phase a probe reports, set by the lifecycle as it moves on."""

from __future__ import annotations

import asyncio
import contextlib
import enum


class Phase(enum.Enum):
    STARTING = "starting"
    INSTALLING = "installing requirements"
    OPENING_QUEUE = "waiting for the queue"
    LOADING = "loading model"
    WARMING_UP = "warming up"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"


# Phases in which the model is loaded: what it serves can be read (GET /v1/models).
LOADED_PHASES = (Phase.WARMING_UP, Phase.READY, Phase.DRAINING)
# Phases in which serving is ending: connections kept open between requests close.
ENDING_PHASES = (Phase.DRAINING, Phase.STOPPING, Phase.FAILED)


class ServingStatus:
    """The phase, and a wait for the end of serving (drain, stop, engine death), on which
    connections that stay open between requests, such as WebSockets, close."""

    def __init__(self) -> None:
        self._phase = Phase.STARTING
        self._end_waiters: set[asyncio.Future] = set()
        self.host_facts: dict = {}  # what start-up measured: GPUs, shared memory
        self.reason: str | None = None  # why the phase lasts, when something outside holds it

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        self._phase = phase
        if phase in ENDING_PHASES:
            for waiter in list(self._end_waiters):
                # Each waiter is resolved on its own loop (an in-process test client runs the
                # app on a loop of its own).
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    def ending(self) -> asyncio.Future:
        """Resolves once serving ends."""
        waiter = asyncio.get_running_loop().create_future()
        if self._phase in ENDING_PHASES:
            waiter.set_result(None)
            return waiter
        self._end_waiters.add(waiter)
        waiter.add_done_callback(self._end_waiters.discard)
        return waiter

    @property
    def is_ready(self) -> bool:
        return self._phase is Phase.READY


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
