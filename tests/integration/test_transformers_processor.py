"""Our transformers/torch engine on the demo model, through the Processor contract alone.

The reference for correctness is transformers' own `model.generate()` on the same weights:
greedy output must be the same tokens, whether a request runs alone, in a batch of mixed prompt
lengths, or joins a batch that is already decoding. Both run in float32 on the engine's
device, so on a GPU machine these tests check the CUDA path the same way.
"""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
import torch

from processors.base import GenerationRequest, ProcessorInputError, SamplingParams, StructuredOutput
from processors.settings import EngineSettings
from processors.transformers_processor import TransformersProcessor

PROMPTS = [
    "Hello",
    "The runtime loads a model from a mounted path and serves it on one port.",
    "cat",
    "Once upon a time there was a small grey cat named Pixel, who slept all day between the",
]


@pytest.fixture(scope="module")
def engine(demo_model_dir):
    processor = TransformersProcessor(
        EngineSettings(model_path=str(demo_model_dir), max_num_seqs=8)
    )
    with asyncio.Runner() as runner:
        runner.run(processor.start())
        yield processor, runner
        runner.run(processor.shutdown())


@pytest.fixture(scope="module")
def reference_model(demo_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(demo_model_dir), dtype=torch.float32)
    return model.to("cuda" if torch.cuda.is_available() else "cpu").eval()


def encode(engine, prompt: str) -> list[int]:
    return engine[0].info.tokenizer.encode(prompt)


def reference_tokens(model, prompt_ids: list[int], max_tokens: int) -> list[int]:
    with torch.inference_mode():
        output = model.generate(
            torch.tensor([prompt_ids], device=model.device),
            max_new_tokens=max_tokens,
            do_sample=False,
        )
    return output[0, len(prompt_ids) :].tolist()


async def collect(processor, request_id: str, prompt_ids: list[int], **sampling) -> list:
    request = GenerationRequest(request_id, prompt_ids, SamplingParams(**sampling))
    return [step async for step in processor.generate(request)]


def tokens_of(steps) -> list[int]:
    return [token for step in steps for token in step.token_ids]


def test_info_describes_the_loaded_model(engine):
    info = engine[0].info
    assert (info.name, info.max_model_len, info.dtype) == ("transformers", 2048, "float32")
    assert info.max_concurrency == 8


def test_greedy_alone_is_token_for_token_generate(engine, reference_model):
    processor, runner = engine
    for n, prompt in enumerate(PROMPTS):
        ids = encode(engine, prompt)
        steps = runner.run(collect(processor, f"alone-{n}", ids, max_tokens=40, temperature=0))
        assert tokens_of(steps) == reference_tokens(reference_model, ids, 40), prompt
        assert steps[-1].finish_reason == "length"
        assert steps[-1].num_output_tokens == 40


def test_greedy_batched_with_mixed_prompt_lengths_is_generate(engine, reference_model):
    processor, runner = engine
    prompts = [encode(engine, p) for p in PROMPTS * 2]  # 8 at once: every slot busy

    async def all_at_once():
        return await asyncio.gather(
            *(
                collect(processor, f"batch-{n}", ids, max_tokens=40, temperature=0)
                for n, ids in enumerate(prompts)
            )
        )

    for ids, steps in zip(prompts, runner.run(all_at_once()), strict=True):
        assert tokens_of(steps) == reference_tokens(reference_model, ids, 40)


def test_a_request_joins_a_batch_that_is_decoding(engine, reference_model):
    processor, runner = engine
    long_ids, late_ids = encode(engine, PROMPTS[1]), encode(engine, PROMPTS[3])

    async def join_late():
        first = asyncio.create_task(
            collect(processor, "early", long_ids, max_tokens=300, temperature=0)
        )
        while processor.stats().num_running == 0:  # the early one is decoding
            await asyncio.sleep(0.001)
        late = await collect(processor, "late", late_ids, max_tokens=20, temperature=0)
        still_running = not first.done()
        return await first, late, still_running

    early, late, early_still_running = runner.run(join_late())
    assert early_still_running  # the late request finished inside the early one's run
    assert tokens_of(late) == reference_tokens(reference_model, late_ids, 20)
    assert tokens_of(early) == reference_tokens(reference_model, long_ids, 300)


@pytest.mark.parametrize("cpu_kernels", ["on", "off"])
def test_prompts_prefilled_in_chunks_beside_decoding_ones_are_generate(
    demo_model_dir, reference_model, cpu_kernels
):
    """A 7-token prompt budget per step: long prompts are prefilled over several steps while
    others decode, and several short ones share a step; with our CPU kernels and with torch's."""
    processor = TransformersProcessor(
        EngineSettings(
            model_path=str(demo_model_dir),
            max_num_seqs=3,
            extra_args={"max_prefill_tokens": 7, "cpu_kernels": cpu_kernels},
        )
    )
    prompts = [PROMPTS[3], PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[3]]
    with asyncio.Runner() as runner:
        runner.run(processor.start())
        try:
            ids = [processor.info.tokenizer.encode(p) for p in prompts]

            async def all_at_once():
                runs = [
                    collect(processor, f"chunked-{n}", prompt, max_tokens=12, temperature=0)
                    for n, prompt in enumerate(ids)
                ]
                return await asyncio.gather(*runs)

            results = runner.run(all_at_once())
        finally:
            runner.run(processor.shutdown())
    for prompt, steps in zip(ids, results, strict=True):
        assert tokens_of(steps) == reference_tokens(reference_model, prompt, 12)


def test_without_a_c_compiler_it_falls_back_to_torch_and_answers(
    demo_model_dir, reference_model, monkeypatch, tmp_path, caplog
):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no cc, no gcc
    processor = TransformersProcessor(
        EngineSettings(model_path=str(demo_model_dir), max_num_seqs=2)
    )
    with asyncio.Runner() as runner, caplog.at_level(logging.INFO):
        runner.run(processor.start())
        try:
            ids = processor.info.tokenizer.encode(PROMPTS[1])
            steps = runner.run(collect(processor, "no-cc", ids, max_tokens=12, temperature=0))
        finally:
            runner.run(processor.shutdown())
    assert tokens_of(steps) == reference_tokens(reference_model, ids, 12)
    fallback = [r for r in caplog.records if r.name.endswith("cpu_kernels")]
    assert len(fallback) == 1  # one line says why, at start
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert "no C compiler" in fallback[0].getMessage()


def test_closing_the_stream_frees_the_slot_at_the_next_step(engine):
    processor, runner = engine

    async def leave_early():
        request = GenerationRequest("leaver", encode(engine, "Hi"), SamplingParams(max_tokens=1500))
        stream = processor.generate(request)
        await anext(stream)
        running_while_open = processor.stats().num_running
        await stream.aclose()
        for _ in range(1000):  # bounded: a step takes milliseconds
            if processor.stats().num_running == 0:
                break
            await asyncio.sleep(0.005)
        return running_while_open, processor.stats()

    running_while_open, after = runner.run(leave_early())
    assert running_while_open == 1
    assert (after.num_running, after.num_waiting, after.kv_cache_usage) == (0, 0, 0.0)


def test_abort_ends_the_stream_with_abort(engine):
    processor, runner = engine

    async def abort_midway():
        request = GenerationRequest(
            "aborted", encode(engine, "Hi"), SamplingParams(max_tokens=1500)
        )
        steps = []
        async for step in processor.generate(request):
            steps.append(step)
            if len(steps) == 3:
                await processor.abort("aborted")
        return steps

    steps = runner.run(abort_midway())
    assert steps[-1].finish_reason == "abort"
    assert steps[-1].num_output_tokens < 1500


def test_stop_strings_are_trimmed(engine):
    processor, runner = engine
    ids = encode(engine, "Hi")
    text = "".join(
        s.text for s in runner.run(collect(processor, "full", ids, max_tokens=30, temperature=0))
    )
    stop = text[10:13]
    steps = runner.run(
        collect(processor, "stopped", ids, max_tokens=30, temperature=0, stop=("zzzz-never", stop))
    )
    assert "".join(s.text for s in steps) == text[: text.index(stop)]
    assert steps[-1].finish_reason == "stop"


def test_seeded_sampling_repeats_and_seeds_differ(engine):
    processor, runner = engine
    ids = encode(engine, "Tell me")

    def sampled(seed: int, request_id: str) -> str:
        steps = runner.run(
            collect(
                processor,
                request_id,
                ids,
                max_tokens=24,
                temperature=1.0,
                top_p=0.9,
                top_k=50,
                seed=seed,
            )
        )
        return "".join(s.text for s in steps)

    assert sampled(7, "s1") == sampled(7, "s2")
    assert sampled(7, "s3") != sampled(8, "s4")


def test_logprobs_name_the_chosen_token_and_its_alternatives(engine):
    processor, runner = engine
    steps = runner.run(
        collect(processor, "lp", encode(engine, "Hi"), max_tokens=3, temperature=0, logprobs=2)
    )
    for step in steps:
        (chosen,) = step.logprobs
        assert len(chosen.top) == 2
        assert chosen.logprob <= 0
        assert chosen.token == chosen.top[0][0]  # greedy picks the most likely token


def test_bad_prompts_are_input_errors(engine):
    processor, runner = engine
    with pytest.raises(ProcessorInputError, match="out of vocabulary"):
        runner.run(collect(processor, "oov", [10**6], max_tokens=2))
    with pytest.raises(ProcessorInputError, match="2048"):
        runner.run(collect(processor, "long", [5] * 2048, max_tokens=2))


@pytest.mark.gpu
def test_on_a_gpu_auto_dtype_is_half_precision(demo_model_dir):
    processor = TransformersProcessor(EngineSettings(model_path=str(demo_model_dir)))
    with asyncio.Runner() as runner:
        runner.run(processor.start())
        try:
            assert processor.info.dtype == "bfloat16"
            ids = processor.info.tokenizer.encode("Hello")
            steps = runner.run(collect(processor, "gpu", ids, max_tokens=32, temperature=0))
            assert steps[-1].num_output_tokens == 32
            assert steps[-1].finish_reason == "length"
        finally:
            runner.run(processor.shutdown())


@pytest.mark.parametrize(
    ("structured", "check"),
    [
        (StructuredOutput(choice=("alpha", "beta")), lambda text: text in ("alpha", "beta")),
        (StructuredOutput(regex="[0-9]{3}-[a-c]{2}"), lambda text: len(text) == 6),
        (
            StructuredOutput(
                json_schema={
                    "type": "object",
                    "properties": {"ok": {"type": "boolean"}},
                    "required": ["ok"],
                    "additionalProperties": False,
                }
            ),
            lambda text: isinstance(json.loads(text)["ok"], bool),
        ),
    ],
)
def test_structured_outputs_hold_on_our_engine_beside_free_requests(engine, structured, check):
    """The random demo model never chooses these texts by itself: only the grammar's mask makes
    its output fit, while a free request in the same batch is untouched."""
    processor, runner = engine
    ids = encode(engine, "Hello")

    async def both():
        constrained = collect(
            processor, "constrained", ids, max_tokens=200, temperature=0, structured=structured
        )
        free = collect(processor, "free", ids, max_tokens=20, temperature=0)
        return await asyncio.gather(constrained, free)

    constrained, free = runner.run(both())
    text = "".join(step.text for step in constrained)
    assert check(text), text
    assert constrained[-1].finish_reason == "stop"  # the grammar ended, then the end token
    alone = runner.run(collect(processor, "alone", ids, max_tokens=20, temperature=0))
    assert tokens_of(free) == tokens_of(alone)


def test_a_grammar_that_cannot_compile_is_an_input_error(engine):
    processor, runner = engine
    bad = StructuredOutput(regex="(unclosed")
    with pytest.raises(ProcessorInputError, match="regular expression cannot be compiled"):
        runner.run(collect(processor, "bad", encode(engine, "x"), max_tokens=5, structured=bad))
