"""The vLLM processor on the demo model, through the Processor contract alone."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from processors.base import GenerationRequest, ProcessorInputError, SamplingParams
from processors.settings import EngineSettings
from processors.vllm_processor import VllmProcessor


@pytest.fixture(scope="module")
def engine(demo_model_dir):
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    processor = VllmProcessor(EngineSettings(model_path=str(demo_model_dir), max_num_seqs=16))
    with asyncio.Runner() as runner:
        runner.run(processor.start())
        yield processor, runner
        runner.run(processor.shutdown())


def generate(engine, request_id, prompt, stream_interval=1, **sampling):
    processor, runner = engine

    async def collect():
        ids = processor.info.tokenizer.encode(prompt)
        request = GenerationRequest(request_id, ids, SamplingParams(**sampling), stream_interval)
        return [step async for step in processor.generate(request)]

    return runner.run(collect())


def test_info_describes_the_loaded_model(engine):
    info = engine[0].info
    assert (info.name, info.max_model_len) == ("vllm", 2048)
    assert info.model_name == "demo-model-v1"


def test_steps_carry_deltas_and_cumulative_counts(engine):
    steps = generate(engine, "counts", "Hello", max_tokens=10, temperature=0)
    assert [s.num_output_tokens for s in steps][-1] == 10
    assert all(s.finish_reason is None for s in steps[:-1])
    assert steps[-1].finish_reason == "length"
    again = generate(engine, "counts-2", "Hello", max_tokens=10, temperature=0)
    assert "".join(s.text for s in again) == "".join(s.text for s in steps)


def test_a_stream_interval_gathers_tokens_into_fewer_steps(engine):
    every = generate(engine, "every", "Hello", max_tokens=10, temperature=0)
    gathered = generate(engine, "gathered", "Hello", 3, max_tokens=10, temperature=0)
    # The first token at once, then three a step, and the last step whatever is left.
    assert [s.num_output_tokens for s in gathered] == [1, 4, 7, 10]
    assert [s.num_output_tokens for s in every] == list(range(1, 11))
    assert "".join(s.text for s in gathered) == "".join(s.text for s in every)
    assert [t for s in gathered for t in s.token_ids] == [t for s in every for t in s.token_ids]


def test_stop_strings_are_trimmed(engine):
    text = "".join(s.text for s in generate(engine, "full", "Hi", max_tokens=20, temperature=0))
    stop = text[5:8]
    steps = generate(engine, "stopped", "Hi", max_tokens=20, temperature=0, stop=(stop,))
    assert "".join(s.text for s in steps) == text[: text.index(stop)]
    assert steps[-1].finish_reason == "stop"


def test_out_of_vocabulary_token_ids_are_an_input_error(engine):
    processor, runner = engine

    async def run():
        request = GenerationRequest("oov", [1, 99999], SamplingParams(max_tokens=2))
        return [step async for step in processor.generate(request)]

    with pytest.raises(ProcessorInputError):
        runner.run(run())


def test_closing_a_stream_aborts_the_request_in_the_engine(engine):
    processor, runner = engine

    async def start_and_leave():
        ids = processor.info.tokenizer.encode("long")
        request = GenerationRequest("leaver", ids, SamplingParams(max_tokens=1500))
        stream = processor.generate(request)
        await anext(stream)
        await anext(stream)
        assert processor.stats().num_running == 1
        await stream.aclose()
        deadline = time.monotonic() + 10
        while processor.stats().num_running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # stats arrive with the engine's next step
        return processor.stats()

    assert runner.run(start_and_leave()).num_running == 0


def test_health_check_passes_on_a_live_engine(engine):
    processor, runner = engine
    runner.run(processor.check_health())
