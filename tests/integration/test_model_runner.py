"""Our forward pass (model_runner.py) against transformers' own on every supported family:
tiny random models of each architecture, built in memory, greedy token for token and logits to
float32 rounding, with our CPU kernels (weights made bfloat16-exact so they take the bfloat16
path) and with torch's alone; and our forward against itself: kernels on and off, a prompt
prefilled in chunks and in one piece."""

from __future__ import annotations

import copy
import shutil

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
    model, prompt: list[int], num_tokens: int, kernels, fuse_layers: bool = True
) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Greedy tokens, the prompt's logits and the last decode step's logits (both rows)."""
    config = model.config
    cache = SlotKVCache(
        config.num_hidden_layers, 2, config.num_key_value_heads, 64, 16, torch.float32, "cpu"
    )
    runner = ModelRunner(extract_weights(model, kernels), cache, kernels, fuse_layers)
    assert (runner.decode_layers is not None) == (kernels is not None and fuse_layers)
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
    return tokens, first_logits, logits


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
        tokens, logits, _ = our_greedy(copy.deepcopy(reference), prompt, 12, kernels)
    assert tokens == expected
    assert torch.allclose(logits, expected_logits, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "architecture",
    ["LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"],
)
def test_a_decode_step_in_one_call_is_the_layer_by_layer_step(architecture):
    """decode_layers (one C call for every layer) against the Python loop over the same
    kernels: biases (Llama here, Qwen2), per-head norms (Qwen3), two rows at their own
    positions. Only SiLU's exp is computed by another library, so the logits agree to float32
    rounding."""
    kernels = kernels_here()
    model = tiny_model(architecture)
    prompt = [3, 14, 15, 92, 65, 35, 8, 9, 79]
    with torch.inference_mode():
        fused = our_greedy(copy.deepcopy(model), prompt, 12, kernels, fuse_layers=True)
        looped = our_greedy(copy.deepcopy(model), prompt, 12, kernels, fuse_layers=False)
    assert fused[0] == looped[0]
    assert torch.allclose(fused[2], looped[2], rtol=1e-5, atol=1e-5)


def kernels_here():
    """Our kernels; a failure where they should build (a compiler and AVX2 are here), a skip
    where they cannot."""
    kernels = load_cpu_kernels()
    if kernels is None:
        has_avx2 = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
        if has_avx2 and shutil.which("cc"):
            pytest.fail("a C compiler and AVX2 are here, yet our CPU kernels did not load")
        pytest.skip("no AVX2 or no C compiler here")
    return kernels


def smollm2_shaped_llama():
    """A random Llama with SmolLM2's head shape (head_dim 64, 3 query heads per KV head), so
    the decode attention kernel runs its full-width path."""
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=128,
        hidden_size=192,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=3,
        num_key_value_heads=1,
        head_dim=64,
        max_position_embeddings=128,
    )
    torch.manual_seed(1)
    model = transformers.LlamaForCausalLM(config)
    for parameter in model.parameters():  # bfloat16-exact, as in a bfloat16 checkpoint
        parameter.data = parameter.data.bfloat16().float() * 4
    return model.eval()


def serve_two(model, kernels, prompt: list[int], chunk_len: int, num_tokens: int):
    """As the engine does: slot 0 decodes a short prompt's answer while slot 1's prompt is
    prefilled `chunk_len` tokens per step beside it, then both decode. Greedy tokens of each."""
    config = model.config
    cache = SlotKVCache(
        config.num_hidden_layers, 2, config.num_key_value_heads, 128, 64, torch.float32, "cpu"
    )
    weights = extract_weights(copy.deepcopy(model), kernels)
    assert weights.storage == ("float32" if kernels is None else "bfloat16")
    runner = ModelRunner(weights, cache, kernels)
    device = torch.device("cpu")
    first = [5, 6, 7]
    logits = runner.forward(
        build_step_inputs([], [], [(PromptChunk(0, 0, 3), first, True)], device)
    )
    tokens_0, tokens_1 = [int(logits[0].argmax())], []
    cached = 0
    while cached < len(prompt):
        length = min(chunk_len, len(prompt) - cached)
        last = cached + length == len(prompt)
        chunk = (PromptChunk(1, cached, length), prompt[cached : cached + length], last)
        step = build_step_inputs([tokens_0[-1]], [len(first) + len(tokens_0) - 1], [chunk], device)
        logits = runner.forward(step)  # [1 or 2, V]: the decode row, then the finished prompt
        tokens_0.append(int(logits[0].argmax()))
        cached += length
    tokens_1.append(int(logits[1].argmax()))
    while len(tokens_1) < num_tokens:
        positions = [len(first) + len(tokens_0) - 1, len(prompt) + len(tokens_1) - 1]
        logits = runner.forward(
            build_step_inputs([tokens_0[-1], tokens_1[-1]], positions, [], device)
        )
        tokens_0.append(int(logits[0].argmax()))
        tokens_1.append(int(logits[1].argmax()))
    return tokens_0[:num_tokens], tokens_1  # slot 0 decodes more steps the more chunks


PROMPT = [3, 14, 15, 92, 65, 35, 8, 9, 79, 32, 38, 46, 26, 43, 38, 32, 79, 50, 28, 84, 19, 71, 69]


@pytest.mark.parametrize("use_kernels", [True, False])
def test_a_prompt_prefilled_in_chunks_gives_the_tokens_of_one_piece(use_kernels):
    kernels = kernels_here() if use_kernels else None
    model = smollm2_shaped_llama()
    with torch.inference_mode():
        whole = serve_two(model, kernels, PROMPT, len(PROMPT), 24)
        for chunk_len in (1, 5, 8):
            assert serve_two(model, kernels, PROMPT, chunk_len, 24) == whole


def test_greedy_with_our_kernels_is_greedy_with_torch_s():
    model = smollm2_shaped_llama()
    with torch.inference_mode():
        ours = serve_two(model, kernels_here(), PROMPT, 5, 40)
        torch_s = serve_two(model, None, PROMPT, 5, 40)
    assert ours == torch_s
    assert len(set(ours[1])) > 3  # a real sequence, not one token repeated
