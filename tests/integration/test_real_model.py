"""Our transformers engine on the real model (SmolLM2-135M-Instruct, the default, converted
from its GGUF file): greedy output token for token that of `model.generate()`, alone and
batched, and it answers the question the model knows."""

from __future__ import annotations

import asyncio

import pytest
import torch

from models.builtin import smollm2_gguf
from models.gguf import ensure_converted
from processors.settings import EngineSettings
from processors.transformers_processor import TransformersProcessor
from tests.integration.test_transformers_processor import collect, reference_tokens, tokens_of

QUESTIONS = ["What is the capital of France?", "Name three colours.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def smollm2_dir():
    return ensure_converted(smollm2_gguf())  # the user's cache: converted once, reused


@pytest.fixture(scope="module")
def engine(smollm2_dir):
    processor = TransformersProcessor(EngineSettings(model_path=str(smollm2_dir), max_num_seqs=4))
    with asyncio.Runner() as runner:
        runner.run(processor.start())
        yield processor, runner
        runner.run(processor.shutdown())


@pytest.fixture(scope="module")
def chats(engine) -> list[list[int]]:
    tokenizer = engine[0].info.tokenizer
    prompts = []
    for question in QUESTIONS:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True
        )
        prompts.append(list(ids["input_ids"]) if hasattr(ids, "keys") else list(ids))
    return prompts


def test_greedy_output_is_generate_s_alone_and_batched(engine, smollm2_dir, chats):
    from transformers import AutoModelForCausalLM

    processor, runner = engine
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_dir), dtype=torch.float32).eval()
    expected = [reference_tokens(model, ids, 24) for ids in chats]
    alone = [
        tokens_of(runner.run(collect(processor, f"alone-{i}", ids, max_tokens=24, temperature=0)))
        for i, ids in enumerate(chats)
    ]

    async def together():
        runs = [
            collect(processor, f"batch-{i}", ids, max_tokens=24, temperature=0)
            for i, ids in enumerate(chats)
        ]
        return [tokens_of(steps) for steps in await asyncio.gather(*runs)]

    assert alone == expected
    assert runner.run(together()) == expected


def test_it_knows_paris_and_stops_at_the_end_of_turn(engine, chats):
    processor, runner = engine
    steps = runner.run(collect(processor, "paris", chats[0], max_tokens=64, temperature=0))
    text = "".join(step.text for step in steps)
    assert "Paris" in text
    assert steps[-1].finish_reason == "stop"
