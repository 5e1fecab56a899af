"""One forward pass per engine step, over our own weights and the slot KV cache.

A step's tokens are packed into one [N, hidden] batch: first one token for each decoding
sequence (slots 0..B-1), then the prompt chunks being prefilled. Every matrix product runs once
over all N rows, so a step reads the weights once however many sequences it serves; only
attention is split: one call for all decoding rows over their slots, one per prompt chunk.

The arithmetic is transformers' own (the same RMSNorm, rotary and SDPA calls, in the same
order), so greedy output matches `generate()`; what is gone is the generic machinery around it
(cache objects, mask building, output classes), which on a 30-layer model cost more per step
than the matrix products of a small batch. With our CPU kernels, a step of decode rows only runs
all its layers in one C call (decode_layers), the same kernels in the same order without the
Python between them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from processors.transformers_engine.cpu_kernels import CpuKernels, DecoderLayer, DecoderShape
from processors.transformers_engine.kv_cache import SlotKVCache
from processors.transformers_engine.weights import LINEARS, LayerWeights, ModelWeights


@dataclass(frozen=True)
class PromptChunk:
    slot: int
    start: int  # prompt tokens already in the cache
    length: int


@dataclass
class StepInputs:
    input_ids: torch.Tensor  # [N]: decode tokens first, then each chunk's tokens
    positions: torch.Tensor  # [N]
    num_decode: int  # B: the decode rows, in slots 0..B-1
    decode_len: int  # L: the keys a decode row may see, max(position) + 1
    decode_mask: torch.Tensor | None  # [B, 1, 1, L] additive; None when every row sees all L
    chunks: list[PromptChunk]
    logit_rows: torch.Tensor | None  # rows whose next token is wanted; None: all of them


def build_step_inputs(
    decode_tokens: list[int],
    decode_positions: list[int],
    chunks: list[tuple[PromptChunk, list[int], bool]],
    device: torch.device,
) -> StepInputs:
    """`chunks`: (chunk, its token ids, whether it ends its prompt and so needs logits)."""
    ids = list(decode_tokens)
    positions = list(decode_positions)
    logit_rows = list(range(len(decode_tokens)))
    for chunk, tokens, last in chunks:
        ids += tokens
        positions += range(chunk.start, chunk.start + chunk.length)
        if last:
            logit_rows.append(len(ids) - 1)
    decode_len = max(decode_positions, default=-1) + 1
    mask = None
    if decode_positions and min(decode_positions) + 1 < decode_len:
        lengths = torch.tensor(decode_positions, device=device) + 1
        visible = torch.arange(decode_len, device=device) < lengths[:, None]  # [B, L]
        mask = torch.zeros(visible.shape, device=device).masked_fill_(~visible, float("-inf"))
        mask = mask[:, None, None]
    return StepInputs(
        input_ids=torch.tensor(ids, device=device),
        positions=torch.tensor(positions, device=device),
        num_decode=len(decode_tokens),
        decode_len=decode_len,
        decode_mask=mask,
        chunks=[chunk for chunk, _, _ in chunks],
        logit_rows=None
        if len(logit_rows) == len(ids)
        else torch.tensor(logit_rows, dtype=torch.long, device=device),
    )


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Transformers' LlamaRMSNorm: float32 statistics, weight applied in the input's dtype."""
    if x.dtype == torch.float32:  # one fused op, bit for bit the same result
        return F.rms_norm(x, weight.shape, weight, eps)
    normed = x.float()
    normed = normed * torch.rsqrt(normed.pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding as transformers applies it: x [N, h, D], cos and sin [N, 1, D]."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class ModelRunner:
    """`kernels` (CPU, float32): our C kernels for RMSNorm and decode attention, and for whole
    decode steps unless `fuse_layers` is False; else torch's."""

    def __init__(
        self,
        weights: ModelWeights,
        cache: SlotKVCache,
        kernels: CpuKernels | None = None,
        fuse_layers: bool = True,
    ) -> None:
        self.weights = weights
        self.cache = cache
        self._kernels = kernels if kernels is not None and weights.head_dim % 8 == 0 else None
        self._norm = rms_norm if self._kernels is None else self._kernels.rms_norm
        self._decode_rows = torch.arange(cache.num_slots, device=cache.device)
        self._rotary_table = self._static_rotary_table()
        # x, cos, sin, positions -> None: every layer of a decode-only step, x updated in place
        self.decode_layers = self._fused_layers() if fuse_layers else None

    def _fused_layers(self) -> Callable[..., None] | None:
        """Our kernels' decode_layers over these weights and caches, where every layer can run
        there: our kernels, every matrix packed, a SiLU MLP. The tensors are ours and never
        replaced, so their addresses hold for the engine's life."""
        w, kernels = self.weights, self._kernels
        linears = [getattr(layer, name) for layer in w.layers for name in LINEARS]
        if kernels is None or w.activation is not F.silu or not all(m.packed for m in linears):
            return None

        def address(tensor: torch.Tensor | None) -> int | None:
            return None if tensor is None else tensor.data_ptr()

        layers = (DecoderLayer * len(w.layers))()
        for index, layer in enumerate(w.layers):
            layers[index] = DecoderLayer(
                *map(address, (layer.input_norm, layer.post_norm, layer.q_norm, layer.k_norm)),
                *(address(getattr(layer, name).weight) for name in LINEARS),
                *(address(getattr(layer, name).bias) for name in LINEARS),
                address(self.cache.keys[index]),
                address(self.cache.values[index]),
            )
        shape = DecoderShape(
            layers=len(w.layers),
            hidden=w.layers[0].input_norm.shape[0],
            heads=w.num_heads,
            kv_heads=w.num_kv_heads,
            head_dim=w.head_dim,
            intermediate=w.layers[0].gate_up.out_features // 2,
            max_len=self.cache.max_len,
            eps=w.norm_eps,
            scale=w.scaling,
        )
        return functools.partial(kernels.decode_layers, layers, shape)

    def _static_rotary_table(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """cos, sin [max_len, D] of every position, computed once by the model's own module
        (elementwise, so each entry is what a step would compute); None for rotary types that
        rescale with the sequence length ("dynamic", "longrope")."""
        kind = str(getattr(self.weights.rotary, "rope_type", "default"))
        if "dynamic" in kind or kind == "longrope":
            return None
        positions = torch.arange(self.cache.max_len, device=self.cache.device)[None]
        probe = torch.empty(0, dtype=self.weights.norm.dtype, device=self.cache.device)
        cos, sin = self.weights.rotary(probe, positions)  # [1, max_len, D]
        return cos[0], sin[0]

    def _cos_sin(self, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if self._rotary_table is not None:
            cos, sin = self._rotary_table
            return cos[positions], sin[positions]  # [N, D]
        cos, sin = self.weights.rotary(x, positions[None])  # [1, N, D]
        return cos[0], sin[0]

    def forward(self, step: StepInputs) -> torch.Tensor:
        """logits [R, V] for the rows that want a next token, in row order."""
        w, norm = self.weights, self._norm
        x = w.embed_rows(step.input_ids)  # [N, hidden]
        cos, sin = self._cos_sin(x, step.positions)  # [N, D]
        if self.decode_layers is not None and not step.chunks:
            x = x.contiguous()  # a fresh tensor (not the weights): updated in place
            self.decode_layers(x, cos, sin, step.positions)
        else:
            x = self._layers(x, cos, sin, step)
        if step.logit_rows is not None:
            x = x[step.logit_rows]
        return w.lm_head(norm(x, w.norm, w.norm_eps))

    def _layers(
        self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: StepInputs
    ) -> torch.Tensor:
        w, norm = self.weights, self._norm
        for index, layer in enumerate(w.layers):
            h = norm(x, layer.input_norm, w.norm_eps)
            x = x + layer.o(self._attention(index, layer, h, cos, sin, step))
            h = norm(x, layer.post_norm, w.norm_eps)
            gate, up = layer.gate_up(h).chunk(2, dim=-1)
            x = x + layer.down(w.activation(gate) * up)
        return x

    def _attention(
        self,
        index: int,
        layer: LayerWeights,
        h: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        step: StepInputs,
    ) -> torch.Tensor:
        """[N, H D] from h [N, hidden]; cos, sin [N, D]."""
        w = self.weights
        num_heads, num_kv, head_dim = w.num_heads, w.num_kv_heads, w.head_dim
        qkv = layer.qkv(h)  # [N, (H + 2 Hkv) D]
        if layer.q_norm is not None and layer.k_norm is not None:  # Qwen3, before rotary
            heads = qkv.view(-1, num_heads + 2 * num_kv, head_dim)
            q = self._norm(heads[:, :num_heads], layer.q_norm, w.norm_eps)
            k = self._norm(heads[:, num_heads : num_heads + num_kv], layer.k_norm, w.norm_eps)
            qkv = torch.cat((q, k, heads[:, num_heads + num_kv :]), dim=1).flatten(1)
        batch, outputs = step.num_decode, []
        if batch and self._kernels is not None:  # rotary, cache write and attention in one
            outputs.append(
                self._kernels.decode_attention(
                    qkv[:batch],
                    num_heads,
                    num_kv,
                    cos[:batch],
                    sin[:batch],
                    self.cache.keys[index],
                    self.cache.values[index],
                    step.positions[:batch],
                    w.scaling,
                )
            )
            if not step.chunks:
                return outputs[0]
            qkv, cos, sin = qkv[batch:], cos[batch:], sin[batch:]
            batch = 0  # no decode rows left for torch
        heads = qkv.view(-1, num_heads + 2 * num_kv, head_dim)  # [n, H + 2 Hkv, D]
        qk = rotate(heads[:, : num_heads + num_kv], cos[:, None], sin[:, None])  # q, k together
        q, k, v = qk[:, :num_heads], qk[:, num_heads:], heads[:, num_heads + num_kv :]
        if batch:
            outputs.append(self._decode_attention(index, q[:batch], k[:batch], v[:batch], step))
        offset = batch
        for chunk in step.chunks:
            rows = slice(offset, offset + chunk.length)
            offset += chunk.length
            self.cache.write_chunk(index, chunk.slot, chunk.start, k[rows], v[rows])
            outputs.append(self._chunk_attention(index, chunk, q[rows], k[rows], v[rows]))
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _decode_attention(
        self, index: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, step: StepInputs
    ) -> torch.Tensor:
        """torch's path: q, k, v [B, h, D] of the decode rows -> [B, H D]."""
        batch = q.shape[0]
        self.cache.write_decode(index, self._decode_rows[:batch], step.positions[:batch], k, v)
        keys = self.cache.keys[index][:batch, :, : step.decode_len]  # [B, Hkv, L, D]
        values = self.cache.values[index][:batch, :, : step.decode_len]
        out = F.scaled_dot_product_attention(
            q.unsqueeze(2),  # [B, H, 1, D]
            keys,
            values,
            attn_mask=step.decode_mask,
            scale=self.weights.scaling,
            enable_gqa=True,
        )
        return out.view(batch, -1)

    def _chunk_attention(
        self, index: int, chunk: PromptChunk, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor
    ) -> torch.Tensor:
        """A prompt chunk's causal attention: q, k, v [T, h, D] -> [T, H D]."""
        query = q.transpose(0, 1)[None]  # [1, H, T, D]
        mask, causal = None, True
        if chunk.start == 0:  # the whole prefix is this chunk: transformers' own call
            keys, values = k.transpose(0, 1)[None], v.transpose(0, 1)[None]
        else:  # later chunks also see the earlier ones, from the cache
            end = chunk.start + chunk.length
            slot = slice(chunk.slot, chunk.slot + 1)
            keys = self.cache.keys[index][slot, :, :end]  # [1, Hkv, end, D]
            values = self.cache.values[index][slot, :, :end]
            row = torch.arange(chunk.start, end, device=q.device)[:, None]
            mask, causal = torch.arange(end, device=q.device)[None] <= row, False  # [T, end]
        out = F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            is_causal=causal,
            scale=self.weights.scaling,
            enable_gqa=True,
        )
        return out[0].transpose(0, 1).reshape(chunk.length, -1)
