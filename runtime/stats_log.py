"""The periodic throughput line vLLM's server logs, for every processor: what the engine runs
and queues, tokens per second, KV cache use. Quiet while nothing happens (one line when the
server turns idle), so an idle server's log stays empty."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from processors.base import Processor
from runtime.admission import Admission
from runtime.metrics import Metrics

log = logging.getLogger(__name__)


class ThroughputLog:
    def __init__(self, metrics: Metrics, processor: Processor, admission: Admission) -> None:
        self._tokens = metrics.tokens
        self._processor = processor
        self._admission = admission
        self._since = time.monotonic()
        self._prompt, self._generation = self._tokens.prompt, self._tokens.generation
        self._was_busy = False

    def line(self) -> tuple[str, dict[str, Any]] | None:
        """The line for the time since the last one, and its figures as fields (the JSON log
        format shows them as keys); None while idle."""
        now = time.monotonic()
        seconds = max(now - self._since, 1e-9)
        prompt = self._tokens.prompt - self._prompt
        generation = self._tokens.generation - self._generation
        self._since, self._prompt, self._generation = (
            now,
            self._tokens.prompt,
            self._tokens.generation,
        )
        stats = self._processor.stats()
        in_flight = self._admission.num_in_flight
        busy = bool(prompt or generation or stats.num_running or stats.num_waiting or in_flight)
        if not busy and not self._was_busy:
            return None
        self._was_busy = busy
        fields = {
            "prompt_tokens_per_s": round(prompt / seconds, 1),
            "generation_tokens_per_s": round(generation / seconds, 1),
            "num_running": stats.num_running,
            "num_waiting": stats.num_waiting,
            "num_in_flight": in_flight,
            "kv_cache_usage": round(stats.kv_cache_usage, 4),
        }
        text = (
            f"throughput: prompt {fields['prompt_tokens_per_s']:.1f} tokens/s, generation "
            f"{fields['generation_tokens_per_s']:.1f} tokens/s; engine: {stats.num_running} "
            f"running, {stats.num_waiting} waiting; {in_flight} requests in flight; KV cache "
            f"{stats.kv_cache_usage:.1%} used"
        )
        return text, fields

    async def run(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            line = self.line()
            if line is not None:
                log.info("%s", line[0], extra=line[1])
