"""Tracing with the real vLLM engine on the demo model: requests keep finishing (vLLM's tracing
reads per-request stats the runtime otherwise turns off, and used to stop vLLM's output handler
at the first finished request), and vLLM's `llm_request` spans join the runtime's traces."""

from __future__ import annotations

import asyncio
import os

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from processors.base import SamplingParams
from processors.settings import EngineSettings
from runtime.generation import GenerationRunner
from runtime.metrics import Metrics
from runtime.tracing import Tracing
from tests.e2e.conftest import free_port


@pytest.fixture(scope="module")
def traced(demo_model_dir):
    pytest.importorskip("vllm")
    from processors.vllm_processor import VllmProcessor

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
    runner = GenerationRunner(processor, Metrics(), tracing=Tracing(provider))
    with asyncio.Runner() as loop:
        loop.run(processor.start())
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
