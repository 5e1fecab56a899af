"""OpenTelemetry traces of requests, read from an in-process span exporter: the route's span,
admission, generation with its wait for the first token, first token, finish; and requests
still finish while traced."""

from __future__ import annotations

import dataclasses
import json

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from processors.base import ProcessorInputError
from processors.settings import EngineSettings
from runtime.app import LlmApp, ServingParts
from runtime.config import load_config
from runtime.model_source import ModelSource
from runtime.tracing import Tracing
from tests.unit.conftest import ServedClient, loaded, make_client

CLIENT_TRACE = "0af7651916cd43dd8448eb211c80319c"
CLIENT_SPAN = "b7ad6b7169203331"
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def traced_client(processor, exporter, ready: bool = True, **settings) -> ServedClient:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    config = load_config(settings, environ={})
    parts = ServingParts.for_config(config, tracing=Tracing(provider))
    served = LlmApp(parts, processor, ModelSource(config.engine, "fake"))
    return ServedClient(loaded(served)[0] if ready else served)


def spans_named(exporter, name: str) -> list:
    return [span for span in exporter.get_finished_spans() if span.name == name]


def events(span) -> dict[str, dict]:
    return {event.name: dict(event.attributes) for event in span.events}


def test_a_request_is_traced_from_its_route_to_its_finish(fake, exporter):
    client = traced_client(fake, exporter)
    traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
    answer = client.post("/v1/chat/completions", json=CHAT, headers={"traceparent": traceparent})
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "w0 w1 "  # it still finishes
    (route,) = spans_named(exporter, "POST /v1/chat/completions")
    assert route.kind is SpanKind.SERVER
    assert route.attributes["http.response.status_code"] == 200
    assert f"{route.context.trace_id:032x}" == CLIENT_TRACE  # the client's trace continues
    assert f"{route.parent.span_id:016x}" == CLIENT_SPAN
    assert events(route)["admission"]["admitted"] is True
    (generate,) = spans_named(exporter, "generate")
    assert generate.parent.span_id == route.context.span_id
    assert generate.attributes["gen_ai.request.max_tokens"] == 2
    assert generate.attributes["gen_ai.usage.completion_tokens"] == 2
    assert generate.attributes["gen_ai.usage.prompt_tokens"] == len(
        fake.requests[0].prompt_token_ids
    )
    assert generate.attributes["gen_ai.request.id"] == fake.requests[0].request_id
    assert list(events(generate)) == ["first token", "finish"]
    assert events(generate)["finish"] == {"finish_reason": "length", "output_tokens": 2}
    (waiting,) = spans_named(exporter, "queue and prefill")
    assert waiting.parent.span_id == generate.context.span_id
    first_token = next(e for e in generate.events if e.name == "first token")
    assert waiting.end_time <= first_token.timestamp
    # The engine gets the generate span's context, so its own spans join the trace under it.
    sent = fake.requests[0].trace_headers["traceparent"]
    assert sent.split("-")[1:3] == [CLIENT_TRACE, f"{generate.context.span_id:016x}"]


def test_a_stream_of_several_choices_is_one_route_span_over_their_generations(fake, exporter):
    client = traced_client(fake, exporter)
    body = {"prompt": ["a", "b"], "max_tokens": 3, "n": 2, "stream": True}
    answer = client.post("/v1/completions", json=body)
    assert answer.text.endswith("data: [DONE]\n\n")
    (route,) = spans_named(exporter, "POST /v1/completions")
    generations = spans_named(exporter, "generate")
    assert len(generations) == 4
    assert {span.parent.span_id for span in generations} == {route.context.span_id}
    assert all(events(span)["finish"]["output_tokens"] == 3 for span in generations)


def test_refusals_and_engine_errors_are_marked_on_their_spans(fake, exporter):
    traced_client(fake, exporter, ready=False).post("/v1/chat/completions", json=CHAT)
    (refused,) = spans_named(exporter, "POST /v1/chat/completions")
    assert refused.attributes["http.response.status_code"] == 503
    assert events(refused)["admission"] == {"admitted": False, "status": 503}
    exporter.clear()
    fake.fail_with = ProcessorInputError("no such token")
    answer = traced_client(fake, exporter).post("/v1/chat/completions", json=CHAT)
    assert answer.status_code == 400
    (generate,) = spans_named(exporter, "generate")
    assert generate.status.status_code is StatusCode.ERROR
    assert events(generate)["error"]["http.response.status_code"] == 400
    (waiting,) = spans_named(exporter, "queue and prefill")  # ended, though no token came
    assert waiting.end_time is not None


def test_unknown_paths_share_one_span_name(fake, exporter):
    traced_client(fake, exporter).get("/scanner/probe.php")
    (span,) = exporter.get_finished_spans()
    assert span.name == "GET other"
    assert span.attributes["http.response.status_code"] == 404


def test_without_an_endpoint_nothing_is_traced(fake):
    client = make_client(fake)
    assert client.post("/v1/chat/completions", json=CHAT).status_code == 200
    assert fake.requests[0].trace_headers is None
    assert not client.served.parts.tracing.enabled


def test_the_runtimes_spans_use_a_provider_of_their_own(exporter):
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    Tracing(provider).tracer.start_span("mine").end()
    assert [span.name for span in exporter.get_finished_spans()] == ["mine"]
    assert Tracing.for_endpoint(None).tracer is None
    made = Tracing.for_endpoint("http://127.0.0.1:1")  # an exporter that never connects here
    assert made.tracer is not None
    made.shutdown()


@pytest.mark.parametrize(
    "settings",
    [
        EngineSettings(model_path="/m", otlp_traces_endpoint="http://collector:4317"),
        # vLLM's own argument through --engine-arg: it used to leave the stats off, and vLLM's
        # tracing then stopped its output handler at the first finished request.
        EngineSettings(model_path="/m", extra_args={"otlp_traces_endpoint": "http://c:4317"}),
        EngineSettings(model_path="/m", engine_request_stats=True),
    ],
)
def test_vllm_keeps_the_request_stats_its_tracing_needs(settings, demo_model_dir):
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs

    from processors.vllm_processor import VllmProcessor

    processor = VllmProcessor(dataclasses.replace(settings, model_path=str(demo_model_dir)))
    assert processor.keeps_request_stats
    kwargs = processor._engine_kwargs(AsyncEngineArgs)
    assert kwargs.get("otlp_traces_endpoint") == settings.traces_endpoint
    assert not VllmProcessor(EngineSettings(model_path="/m")).keeps_request_stats


def test_the_traces_endpoint_reaches_the_runtime_and_the_engine_from_every_source():
    config = load_config({"otlp_traces_endpoint": "http://c:4317"}, {})
    assert config.engine.traces_endpoint == "http://c:4317"
    env = {"LLM_RUNTIME_ENGINE_ARGS": json.dumps({"otlp_traces_endpoint": "http://d:4317"})}
    assert load_config({}, env).engine.traces_endpoint == "http://d:4317"
