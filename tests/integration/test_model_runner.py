"""Our forward pass (model_runner.py) against transformers' own on every supported family:
tiny random models of each architecture, built in memory, greedy token for token and logits to
float32 rounding, with our CPU kernels (weights made bfloat16-exact so they take the bfloat16
path) and with torch's alone."""

from __future__ import annotations

import copy

import pytest
import torch

from processors.transformers_engine.cpu_kernels import load_cpu_kernels
from processors.transformers_engine.kv_cache import SlotKVCache
from processors.transformers_engine.model_runner import (
    ModelRunner,
    PromptChunk,
    build_step_inputs,
)
from processors.transformers_engine.weights import extract_weights

SHAPE = {
    "vocab_size": 96,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "max_position_embeddings": 64,
}


def tiny_model(architecture: str):
    import transformers

    configs = {
        "LlamaForCausalLM": transformers.LlamaConfig(**SHAPE, attention_bias=True),
        "MistralForCausalLM": transformers.MistralConfig(**SHAPE, sliding_window=None),
        "Qwen2ForCausalLM": transformers.Qwen2Config(**SHAPE),
        "Qwen3ForCausalLM": transformers.Qwen3Config(**SHAPE),
    }
    torch.manual_seed(0)
    model = getattr(transformers, architecture)(configs[architecture])
    for parameter in model.parameters():  # bfloat16 values, as in a bfloat16 checkpoint
        parameter.data = parameter.data.bfloat16().float() * 4  # sharper, fewer near-ties
    return model.eval()


def our_greedy(
    model, prompt: list[int], num_tokens: int, kernels
) -> tuple[list[int], torch.Tensor]:
    config = model.config
    cache = SlotKVCache(
        config.num_hidden_layers, 2, config.num_key_value_heads, 64, 16, torch.float32, "cpu"
    )
    runner = ModelRunner(extract_weights(model, kernels), cache, kernels)
    device = torch.device("cpu")
    # Slot 1 decodes beside slot 0 with a prompt of its own, so the rows really are batched.
    other = [5, 6, 7]
    chunks = [(PromptChunk(0, 0, len(prompt)), prompt, True), (PromptChunk(1, 0, 3), other, True)]
    logits = runner.forward(build_step_inputs([], [], chunks, device))
    first_logits = logits[0]
    tokens, other_token = [int(logits[0].argmax())], int(logits[1].argmax())
    positions = [len(prompt), len(other)]
    while len(tokens) < num_tokens:
        step = build_step_inputs([tokens[-1], other_token], positions, [], device)
        logits = runner.forward(step)
        tokens.append(int(logits[0].argmax()))
        other_token = int(logits[1].argmax())
        positions = [p + 1 for p in positions]
    return tokens, first_logits


@pytest.mark.parametrize(
    "architecture",
    ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"],
)
@pytest.mark.parametrize("use_kernels", [True, False])
def test_our_forward_is_transformers_forward(architecture, use_kernels):
    kernels = load_cpu_kernels() if use_kernels else None
    if use_kernels and kernels is None:
        pytest.skip("no AVX2 or no C compiler here")
    reference = tiny_model(architecture)
    prompt = [3, 14, 15, 92, 65, 35, 8, 9, 79]
    with torch.inference_mode():
        expected = reference.generate(
            torch.tensor([prompt]), max_new_tokens=12, do_sample=False, pad_token_id=0
        )[0, len(prompt) :].tolist()
        expected_logits = reference(torch.tensor([prompt])).logits[0, -1]
        tokens, logits = our_greedy(copy.deepcopy(reference), prompt, 12, kernels)
    assert tokens == expected
    assert torch.allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)
