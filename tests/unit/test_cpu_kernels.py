"""Our C kernels against torch: the same results to float32 rounding, and the properties the
engine relies on (a row's product does not depend on its batch; the cache write is exact); where
they cannot be built, None and one log line, so the engine keeps torch's kernels."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from processors.transformers_engine.cpu_kernels import load_cpu_kernels
from processors.transformers_engine.model_runner import rotate


@pytest.fixture(scope="module")
def kernels():
    loaded = load_cpu_kernels()
    if loaded is None:
        pytest.skip("no AVX2 or no C compiler here: the engine runs torch's kernels")
    return loaded


@pytest.mark.parametrize(("num_out", "num_in"), [(50, 40), (960, 576), (131, 1536)])
def test_bf16_linear_is_the_float32_product(kernels, num_out, num_in):
    torch.manual_seed(0)
    weight = torch.randn(num_out, num_in).bfloat16().float()  # bfloat16-exact, as in a checkpoint
    bias = torch.randn(num_out)
    packed, padded_bias = kernels.pack_bf16(weight), kernels.pad_bias(bias)
    for num_rows in (1, 2, 6, 7, 40):
        x = torch.randn(num_rows, num_in)
        expected = x.double() @ weight.double().T + bias.double()
        got = kernels.linear_bf16(x, packed, num_out, padded_bias)
        assert got.shape == (num_rows, num_out)
        assert torch.allclose(got.double(), expected, rtol=1e-5, atol=1e-4)
        alone = kernels.linear_bf16(x[-1:], packed, num_out, padded_bias)
        assert torch.equal(alone[0], got[-1])  # batch-invariant: the same bits alone
    ids = torch.tensor([0, num_out - 1, 17 % num_out])
    assert torch.equal(kernels.packed_rows(packed, ids).float(), weight[ids])  # tied embeddings


def test_rms_norm_matches_transformers(kernels):
    x, weight = torch.randn(7, 576), torch.randn(576)
    expected = weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5))
    assert torch.allclose(kernels.rms_norm(x, weight, 1e-5), expected, rtol=1e-5, atol=1e-6)


def test_decode_attention_writes_the_cache_and_attends_over_each_length(kernels):
    torch.manual_seed(0)
    heads, kv_heads, dim, max_len = 9, 3, 64, 128
    keys, values = torch.randn(5, kv_heads, max_len, dim), torch.randn(5, kv_heads, max_len, dim)
    positions = torch.tensor([3, 17, 9, 100])
    batch = len(positions)
    qkv = torch.randn(batch, (heads + 2 * kv_heads) * dim)
    cos, sin = torch.randn(batch, dim), torch.randn(batch, dim)
    expected_keys, expected_values = keys.clone(), values.clone()
    out = kernels.decode_attention(qkv, heads, kv_heads, cos, sin, keys, values, positions, 0.125)

    split = qkv.view(batch, heads + 2 * kv_heads, dim)
    q = rotate(split[:, :heads], cos[:, None], sin[:, None])
    k = rotate(split[:, heads : heads + kv_heads], cos[:, None], sin[:, None])
    for b, position in enumerate(positions.tolist()):
        expected_keys[b, :, position] = k[b]
        expected_values[b, :, position] = split[b, heads + kv_heads :]
    assert torch.equal(keys, expected_keys)  # rotary bit for bit transformers' own
    assert torch.equal(values, expected_values)
    for b, position in enumerate(positions.tolist()):
        expected = F.scaled_dot_product_attention(
            q[b][None, :, None],
            expected_keys[b : b + 1, :, : position + 1],
            expected_values[b : b + 1, :, : position + 1],
            scale=0.125,
            enable_gqa=True,
        )
        assert torch.allclose(out[b], expected.flatten(), atol=1e-5)


def kernel_log(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.endswith("cpu_kernels")]


def test_without_a_compiler_the_kernels_are_none_with_one_warning(monkeypatch, tmp_path, caplog):
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no cc, no gcc
    with caplog.at_level(logging.INFO):
        assert load_cpu_kernels() is None
    (line,) = kernel_log(caplog)
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert "no C compiler" in line


def test_a_compiler_that_fails_leaves_torch_s_kernels(monkeypatch, tmp_path, caplog):
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: the compiler is never asked")
    failing = tmp_path / "cc"
    failing.write_text("#!/bin/sh\necho 'cc: out of luck' >&2\nexit 1\n")
    failing.chmod(0o755)
    monkeypatch.setenv("CC", str(failing))
    monkeypatch.setenv("LLM_RUNTIME_CACHE_DIR", str(tmp_path / "cache"))
    with caplog.at_level(logging.INFO):
        assert load_cpu_kernels() is None
    (line,) = kernel_log(caplog)
    assert "did not build" in line
    assert "out of luck" in line  # the compiler's own words


def test_a_new_build_replaces_the_stale_ones_in_the_cache(monkeypatch, tmp_path):
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("no AVX2: nothing is built")
    monkeypatch.setenv("LLM_RUNTIME_CACHE_DIR", str(tmp_path))
    folder = tmp_path / "kernels"
    folder.mkdir()
    stale = folder / "cpu_kernels-0123456789abcdef.so"  # an earlier source's build
    stale.write_bytes(b"old")
    if load_cpu_kernels() is None:
        pytest.skip("no C compiler here")
    (built,) = folder.glob("cpu_kernels-*.so")
    assert built != stale
