"""What the routes share: the processor, where serving stands, and the prompt builder."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging

from processors.base import Processor, ProcessorInfo
from runtime.call_log import CallLog
from runtime.config import RuntimeConfig
from runtime.errors import ApiError, ErrorKind
from runtime.generation import Generator
from runtime.metrics import Metrics
from runtime.prompting import PromptBuilder

log = logging.getLogger(__name__)


class Phase(enum.Enum):
    STARTING = "starting"
    INSTALLING = "installing requirements"
    LOADING = "loading model"
    WARMING_UP = "warming up"
    READY = "ready"
    DRAINING = "draining"
    STOPPING = "stopping"
    FAILED = "failed"


# Phases in which the model is loaded and requests already admitted are served.
SERVING_PHASES = (Phase.WARMING_UP, Phase.READY, Phase.DRAINING)
# Phases in which serving is ending: connections kept open between requests close.
ENDING_PHASES = (Phase.DRAINING, Phase.STOPPING, Phase.FAILED)


class ServingState:
    def __init__(self, config: RuntimeConfig, processor: Processor) -> None:
        self.config = config
        self.processor = processor
        self.metrics = Metrics()
        self.generator = Generator(
            processor,
            config.lifecycle.request_timeout,
            self.metrics,
            stream_interval=config.server.stream_interval,
        )
        self.call_log = (
            CallLog(config.call_log, config.server.token) if config.call_log.path else None
        )
        self._stop_waiters: set[asyncio.Future] = set()
        self.phase = Phase.STARTING
        self.host_facts: dict = {}  # what start-up measured: GPUs, shared memory
        self._prompts: PromptBuilder | None = None

    async def load(self) -> None:
        """Start the processor; warm-up and readiness follow."""
        self.phase = Phase.LOADING
        await self.processor.start()
        info = self.processor.info
        self.metrics.set_model_name(info.model_name)
        if info.tokenizer is not None:
            self._prompts = PromptBuilder(info.tokenizer, info.max_model_len)
        self.phase = Phase.WARMING_UP
        details = f" ({info.dtype}, context {info.max_model_len} tokens)" if info.tokenizer else ""
        log.info("loaded %s%s on the %s processor", info.model_name, details, info.name)

    async def start(self) -> None:
        """Load and go straight to ready (no warm-up): for tests and embedding."""
        if self.call_log is not None:
            self.call_log.open()
        await self.load()
        self.phase = Phase.READY

    @property
    def phase(self) -> Phase:
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        self._phase = phase
        if phase in ENDING_PHASES:
            for waiter in list(self._stop_waiters):
                # Thread-safe, as tests change the phase from outside the serving loop.
                with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                    waiter.get_loop().call_soon_threadsafe(_resolve, waiter)

    def stopping(self) -> asyncio.Future:
        """Resolves when serving ends (drain, stop, engine death): connections that stay open
        between requests, such as WebSockets, close then."""
        waiter = asyncio.get_running_loop().create_future()
        if self._phase in ENDING_PHASES:
            waiter.set_result(None)
            return waiter
        self._stop_waiters.add(waiter)
        waiter.add_done_callback(self._stop_waiters.discard)
        return waiter

    @property
    def is_ready(self) -> bool:
        return self.phase is Phase.READY

    def require_ready(self) -> None:
        """Routes run only once the model is loaded (admission turns away the rest earlier)."""
        if self.phase not in SERVING_PHASES:
            raise ApiError(ErrorKind.UNAVAILABLE, f"the service is not ready: {self.phase.value}")

    @property
    def info(self) -> ProcessorInfo:
        self.require_ready()
        return self.processor.info

    @property
    def prompts(self) -> PromptBuilder:
        self.require_ready()
        if self._prompts is None:
            raise ApiError(
                ErrorKind.BAD_REQUEST,
                "this service runs a custom processor: send the request body to POST / or "
                f"/api/predict/{self.config.server.service_name}",
            )
        return self._prompts


def _resolve(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)
