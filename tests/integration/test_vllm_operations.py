"""Operations with the real vLLM engine on the demo model, traced (which keeps vLLM's
per-request stats): requests keep finishing (vLLM's tracing reads the stats the runtime otherwise
turns off, and used to stop vLLM's output handler at the first finished request), vLLM's
`llm_request` spans join the runtime's traces, and /metrics serves vLLM's scheduler metrics
beside the runtime's: every metric the Grafana dashboard queries."""

from __future__ import annotations

import asyncio
import os

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from processors.base import SamplingParams
from processors.settings import EngineSettings
from processors.vllm_processor import VllmProcessor
from runtime.generation import GenerationRunner
from runtime.metrics import Metrics
from runtime.tracing import Tracing
from tests.e2e.conftest import free_port
from tests.unit.test_dashboard import dashboard_metrics, exported


@pytest.fixture(scope="module")
def traced(demo_model_dir):
    pytest.importorskip("vllm")
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # vLLM sends its spans through OpenTelemetry's global provider and cannot replace one that
    # is set: set first, its spans come here rather than to the (absent) collector.
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:
        pytest.skip("another test set OpenTelemetry's global tracer provider first")
    saved = dict(os.environ)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens: nothing may depend on it
    processor = VllmProcessor(
        EngineSettings(
            model_path=str(demo_model_dir), max_num_seqs=4, otlp_traces_endpoint=endpoint
        )
    )
    metrics = Metrics()
    runner = GenerationRunner(processor, metrics, tracing=Tracing(provider))
    with asyncio.Runner() as loop:
        loop.run(processor.start())
        metrics.set_model_name(processor.info.model_name)  # as LlmApp.load does
        metrics.add_engine_families(processor.metric_families)
        yield processor, runner, loop, exporter
        loop.run(processor.shutdown())
    os.environ.clear()
    os.environ.update(saved)


def test_traced_requests_finish_and_vllm_spans_join_the_runtimes_trace(traced):
    processor, runner, loop, exporter = traced
    prompt = processor.info.tokenizer.encode("Hello")
    sampling = SamplingParams(max_tokens=4, temperature=0)
    for index in range(3):  # the output handler outlives each finished request
        (choice,) = loop.run(runner.complete(f"traced-{index}", [prompt], sampling, n=1))
        assert (choice.finish_reason, choice.num_output_tokens) == ("length", 4)
    spans = exporter.get_finished_spans()
    generations = {
        span.attributes["gen_ai.request.id"]: span for span in spans if span.name == "generate"
    }
    engine_spans = [span for span in spans if span.name == "llm_request"]
    assert len(engine_spans) == 3
    for engine_span in engine_spans:
        parent = generations[engine_span.attributes["gen_ai.request.id"]]
        assert engine_span.parent.span_id == parent.context.span_id
        assert engine_span.context.trace_id == parent.context.trace_id
        assert engine_span.attributes["gen_ai.latency.time_in_queue"] >= 0
        assert engine_span.attributes["gen_ai.usage.completion_tokens"] == 4


def test_metrics_serve_vllms_scheduler_metrics_and_every_dashboard_metric(traced):
    processor, runner, loop, _ = traced
    prompt = processor.info.tokenizer.encode("Hello again")
    sampling = SamplingParams(max_tokens=4, temperature=0)
    for index in range(2):  # the second finds the first's prompt in the prefix cache
        loop.run(runner.complete(f"counted-{index}", [prompt], sampling, n=1))
    text = runner.metrics.render(processor.stats(), 0, False).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert dashboard_metrics() <= exported(text)
    model = processor.info.model_name
    queries = families["vllm:prefix_cache_queries"].samples[0]
    assert queries.labels["model_name"] == model  # labelled as the runtime's own metrics
    assert queries.value > 0
    assert families["vllm:request_queue_time_seconds"].samples  # fed: request stats are on
    assert text.count("# TYPE vllm:num_requests_running gauge") == 1  # one series per name
    # Without request stats, vLLM's per-request metrics would read 0: they are left out then.
    lean = VllmProcessor(EngineSettings(model_path=processor.info.model_path))
    lean_names = {f.name for f in lean.metric_families()}
    assert "vllm:prefix_cache_queries" in lean_names
    assert "vllm:request_queue_time_seconds" not in lean_names
    assert "vllm:num_preemptions" not in lean_names
