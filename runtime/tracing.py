"""OpenTelemetry traces of every request (--otlp-traces-endpoint, vLLM's spelling).

Each HTTP request is a server span named after its route (a `traceparent` header from the client
makes it a child of the client's trace), with an `admission` event saying whether it was let in.
Each engine request under it is a `generate` span, whose `queue and prefill` child lasts until
the first token, with `first token` and `finish` events. vLLM's own `llm_request` span, which
splits that wait into queue, prefill and decode time, joins the same trace: the `generate`
span's context travels to the engine as trace headers.

The runtime's spans go through a tracer provider of its own, not OpenTelemetry's global one:
vLLM installs the global provider for its spans, and tests give theirs. Without an endpoint
nothing here runs on a request's path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from processors.base import SamplingParams
from runtime import __version__
from runtime.asgi import route_path

PROTOCOL_ENV = "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"  # grpc (the default) or http/protobuf


class Tracing:
    """Where the runtime's spans go; `tracer` None: tracing is off."""

    def __init__(self, provider: Any = None) -> None:
        self._provider = provider
        self.tracer: Tracer | None = (
            provider.get_tracer("llm-runtime", __version__) if provider is not None else None
        )

    @classmethod
    def for_endpoint(cls, endpoint: str | None) -> Tracing:
        if not endpoint:
            return cls()
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES are honoured by Resource.create.
        named = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "llm-runtime"}
        provider = TracerProvider(resource=Resource.create(named))
        provider.add_span_processor(BatchSpanProcessor(otlp_exporter(endpoint)))
        return cls(provider)

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    def generation(
        self, request_id: str, num_prompt_tokens: int, sampling: SamplingParams
    ) -> GenerationSpan | None:
        if self.tracer is None:
            return None
        return GenerationSpan(self.tracer, request_id, num_prompt_tokens, sampling)

    def shutdown(self) -> None:
        """Send what is still buffered; at exit."""
        if self._provider is not None:
            self._provider.shutdown()


def otlp_exporter(endpoint: str) -> Any:
    """The exporter vLLM would make for the same endpoint and environment."""
    protocol = os.environ.get(PROTOCOL_ENV, "grpc")
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=True)
    if protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpSpanExporter,
        )

        return HttpSpanExporter(endpoint=endpoint)
    raise ValueError(f"{PROTOCOL_ENV}={protocol}: grpc or http/protobuf, as for vLLM")


class GenerationSpan:
    """One engine request's spans. Made in the request's context (its HTTP span is the
    parent); ended explicitly, never entered, since a stream's steps resume in other tasks."""

    __slots__ = ("_started", "headers", "span", "waiting")

    def __init__(
        self, tracer: Tracer, request_id: str, num_prompt_tokens: int, sampling: SamplingParams
    ) -> None:
        self._started = time.perf_counter()
        attributes: dict[str, Any] = {
            "gen_ai.request.id": request_id,
            "gen_ai.usage.prompt_tokens": num_prompt_tokens,
            "gen_ai.request.max_tokens": sampling.max_tokens,
            "gen_ai.request.temperature": sampling.temperature,
            "gen_ai.request.top_p": sampling.top_p,
        }
        self.span = tracer.start_span("generate", attributes=attributes)
        context = trace.set_span_in_context(self.span)
        self.waiting = tracer.start_span("queue and prefill", context=context)
        # The engine's spans join this trace under `generate` (W3C trace context).
        self.headers: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(self.headers, context=context)

    def first_token(self) -> None:
        self.waiting.end()
        ttft = time.perf_counter() - self._started
        self.span.set_attribute("gen_ai.latency.time_to_first_token", ttft)
        self.span.add_event("first token", {"time_to_first_token_s": ttft})

    def finish(self, reason: str, num_output_tokens: int) -> None:
        self.span.add_event("finish", {"finish_reason": reason, "output_tokens": num_output_tokens})
        self.span.set_attribute("gen_ai.response.finish_reasons", (reason,))
        self.span.set_attribute("gen_ai.usage.completion_tokens", num_output_tokens)
        self._end()

    def fail(self, status: int, message: str) -> None:
        self.span.add_event("error", {"http.response.status_code": status, "message": message})
        self.span.set_status(Status(StatusCode.ERROR, message))
        self._end()

    def abandon(self) -> None:
        """The client left before the end: the request was aborted in the engine."""
        self.span.add_event("client left")
        self._end()

    def _end(self) -> None:
        if self.waiting.is_recording():  # no first token came
            self.waiting.end()
        self.span.end()


class TracingMiddleware:
    """A server span per HTTP request, named `METHOD route` (`other` for unknown paths), with
    the status it was answered with; a client's `traceparent` makes it part of that trace."""

    def __init__(self, app: ASGIApp, tracer: Tracer, routes: Collection[str]) -> None:
        self.app = app
        self.tracer = tracer
        self._routes = frozenset(routes)
        self._propagator = TraceContextTextMapPropagator()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = route_path(scope)
        route = path if path in self._routes else "other"
        method = scope["method"]
        carrier = _headers(scope["headers"])
        attributes = {"http.request.method": method, "http.route": route, "url.path": path}
        if scope.get("client"):
            attributes["client.address"] = scope["client"][0]
        with self.tracer.start_as_current_span(
            f"{method} {route}",
            context=self._propagator.extract(carrier),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span:

            async def send_with_status(message: Message) -> None:
                if message["type"] == "http.response.start":
                    status = message["status"]
                    span.set_attribute("http.response.status_code", status)
                    if status >= 500:
                        span.set_status(Status(StatusCode.ERROR))
                await send(message)

            await self.app(scope, receive, send_with_status)


def _headers(raw: list[tuple[bytes, bytes]]) -> Mapping[str, str]:
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in raw}
