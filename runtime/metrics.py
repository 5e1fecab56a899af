"""Prometheus metrics under vLLM's names, so existing dashboards work whatever the processor.

Each app has its own registry (no global state); request timings are recorded where every API
passes, in the GenerationRunner, and HTTP outcomes in a middleware. The engine's load (running,
waiting, KV cache) is read from the processor when scraped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processors.base import ProcessorStats
from runtime.asgi import route_path

# vLLM's buckets, so histograms line up with dashboards built for vLLM
# fmt: off
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
               7.5, 10.0, 20.0, 40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
               60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)
# fmt: on
ENGINE_LABELS = ("model_name", "engine")


class TokenCounts:
    """Tokens processed so far, as plain numbers for the throughput line: prompt tokens when a
    request's first token arrives, generated tokens as they stream."""

    __slots__ = ("generation", "prompt")

    def __init__(self) -> None:
        self.prompt = 0
        self.generation = 0


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.tokens = TokenCounts()
        self._labels: tuple[str, str] = ("", "0")
        r = self.registry
        self.num_running = Gauge(
            "vllm:num_requests_running",
            "Requests running in the engine.",
            ENGINE_LABELS,
            registry=r,
        )
        self.num_waiting = Gauge(
            "vllm:num_requests_waiting",
            "Requests waiting in the engine.",
            ENGINE_LABELS,
            registry=r,
        )
        self.kv_cache_usage = Gauge(
            "vllm:kv_cache_usage_perc", "KV cache usage, 0 to 1.", ENGINE_LABELS, registry=r
        )
        self.ttft = Histogram(
            "vllm:time_to_first_token_seconds",
            "Time to first token.",
            ENGINE_LABELS,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "vllm:inter_token_latency_seconds",
            "Time between output steps.",
            ENGINE_LABELS,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "vllm:request_time_per_output_token_seconds",
            "Mean time per output token of a request.",
            ENGINE_LABELS,
            buckets=ITL_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "vllm:e2e_request_latency_seconds",
            "Request latency.",
            ENGINE_LABELS,
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed.", ENGINE_LABELS, registry=r
        )
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated.", ENGINE_LABELS, registry=r
        )
        self.request_success = Counter(
            "vllm:request_success",
            "Requests finished, by reason.",
            (*ENGINE_LABELS, "finished_reason"),
            registry=r,
        )
        self.http_requests = Counter(
            "llm_runtime_http_requests",
            "HTTP requests answered.",
            ("route", "method", "status"),
            registry=r,
        )
        self.http_latency = Histogram(
            "llm_runtime_http_request_duration_seconds",
            "HTTP request duration, to the last byte.",
            ("route",),
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.timeouts = Counter(
            "llm_runtime_request_timeouts", "Requests past their timeout.", registry=r
        )
        self.rejections = Counter(
            "llm_runtime_requests_rejected",
            "Requests refused on admission.",
            ("reason",),
            registry=r,
        )
        self.disconnects = Counter(
            "llm_runtime_client_disconnects",
            "Requests whose client left before the end.",
            registry=r,
        )
        self.in_flight = Gauge(
            "llm_runtime_requests_in_flight", "Requests being served.", registry=r
        )
        self.draining = Gauge("llm_runtime_draining", "1 while draining after SIGTERM.", registry=r)
        self.queue_items = Gauge(
            "llm_runtime_queue_items",
            "Requests in the asynchronous queue (--async): pending or running.",
            ("state",),
            registry=r,
        )
        self._bound: _BoundEngineMetrics | None = None  # made at the first request

    def add_engine_families(self, families: Callable[[], Iterable[Metric]]) -> None:
        """Serve the engine's own metrics too (vLLM's scheduler metrics), but for those the
        runtime exports under the same names: one series each, the runtime's, which every
        processor feeds alike."""
        own = {family.name for family in self.registry.collect()}
        self.registry.register(_EngineFamilies(families, frozenset(own)))

    def set_model_name(self, model_name: str) -> None:
        self._labels = (model_name, "0")
        self._bound = None

    def request(self) -> RequestTimer:
        if self._bound is None:
            self._bound = _BoundEngineMetrics(self, self._labels)
        return RequestTimer(self._bound)

    def render(self, stats: ProcessorStats | None, in_flight: int, draining: bool) -> bytes:
        if stats is not None:
            self.num_running.labels(*self._labels).set(stats.num_running)
            self.num_waiting.labels(*self._labels).set(stats.num_waiting)
            self.kv_cache_usage.labels(*self._labels).set(stats.kv_cache_usage)
        self.in_flight.set(in_flight)
        self.draining.set(1 if draining else 0)
        return generate_latest(self.registry)


class _EngineFamilies(Collector):
    def __init__(self, families: Callable[[], Iterable[Metric]], exclude: frozenset[str]) -> None:
        self._families = families
        self._exclude = exclude

    def collect(self) -> Iterable[Metric]:
        return (family for family in self._families() if family.name not in self._exclude)


class _BoundEngineMetrics:
    """The request histograms and counters with their labels applied once: `labels()` takes a
    lock and builds a key on every call, which is too much for once per token."""

    def __init__(self, metrics: Metrics, labels: tuple[str, str]) -> None:
        self.ttft = metrics.ttft.labels(*labels)
        self.itl = metrics.itl.labels(*labels)
        self.tpot = metrics.tpot.labels(*labels)
        self.e2e = metrics.e2e.labels(*labels)
        self.prompt_tokens = metrics.prompt_tokens.labels(*labels)
        self.generation_tokens = metrics.generation_tokens.labels(*labels)
        self.request_success = metrics.request_success
        self.labels = labels
        self.tokens = metrics.tokens


class RequestTimer:
    """Timings of one engine request, recorded step by step."""

    __slots__ = ("_bound", "_first", "_last", "_started")

    def __init__(self, bound: _BoundEngineMetrics) -> None:
        self._bound = bound
        self._started = self._last = time.perf_counter()
        self._first: float | None = None

    def step(self, num_new_tokens: int, num_prompt_tokens: int = 0) -> None:
        now = time.perf_counter()
        self._bound.tokens.generation += num_new_tokens
        if self._first is None:
            self._first = now
            self._bound.ttft.observe(now - self._started)
            self._bound.tokens.prompt += num_prompt_tokens
        elif num_new_tokens:
            self._bound.itl.observe(now - self._last)
        self._last = now

    def finish(self, num_prompt_tokens: int, num_output_tokens: int, reason: str) -> None:
        m = self._bound
        elapsed = time.perf_counter() - self._started
        m.e2e.observe(elapsed)
        m.prompt_tokens.inc(num_prompt_tokens)
        m.generation_tokens.inc(num_output_tokens)
        m.request_success.labels(*m.labels, reason).inc()
        if num_output_tokens > 1 and self._first is not None:
            per_token = (self._last - self._first) / (num_output_tokens - 1)
            m.tpot.observe(per_token)


class HttpMetricsMiddleware:
    """Counts every HTTP answer by route and status, and times it to its last byte."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: frozenset[str]) -> None:
        self.app = app
        self.metrics = metrics
        self._routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            # Unknown paths share one label, so scanners cannot blow up the series count.
            path = route_path(scope)
            route = path if path in self._routes else "other"
            self.metrics.http_requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.http_latency.labels(route).observe(time.perf_counter() - started)
