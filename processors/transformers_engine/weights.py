"""The model's weights as our forward reads them, taken out of a transformers decoder.

Per layer, q, k and v become one matrix and gate and up another, so a layer runs four matrix
products instead of seven. Decode at small batches is bound by reading weights, so on the CPU in
float32 a weight whose every value is a bfloat16 number (any bfloat16 checkpoint) is kept in
bfloat16 and multiplied by our kernel (cpu_kernels.py), which widens it exactly in registers:
the same float32 arithmetic from half the bytes. Other weights stay as loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from processors.transformers_engine.cpu_kernels import CpuKernels

log = logging.getLogger(__name__)


class Linear:
    """y = x W^T + b, with W kept as float32 for torch or packed bfloat16 for our kernel."""

    def __init__(
        self, weight: torch.Tensor, bias: torch.Tensor | None, kernels: CpuKernels | None
    ) -> None:
        self.out_features = weight.shape[0]
        self._kernels = kernels if kernels is not None and _exact_in_bf16(weight) else None
        if self._kernels is None:
            self.weight, self.bias = weight.contiguous(), bias
        else:
            self.weight = self._kernels.pack_bf16(weight)
            self.bias = self._kernels.pad_bias(bias)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._kernels is None:
            return F.linear(x, self.weight, self.bias)
        return self._kernels.linear_bf16(x, self.weight, self.out_features, self.bias)

    @property
    def packed(self) -> bool:
        """Whether our kernel multiplies by it (bfloat16 panels), rather than torch."""
        return self._kernels is not None

    def rows(self, ids: torch.Tensor) -> torch.Tensor:
        """W[ids] [n, K], in W's stored dtype: an embedding lookup in a tied lm_head."""
        if self._kernels is None:
            return self.weight[ids]
        return self._kernels.packed_rows(self.weight, ids)

    @property
    def nbytes(self) -> int:
        total = self.weight.numel() * self.weight.element_size()
        return total + (0 if self.bias is None else self.bias.numel() * self.bias.element_size())


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [hidden]
    qkv: Linear  # [(H + 2 Hkv) D, hidden]
    q_norm: torch.Tensor | None  # [D]: Qwen3 normalises each head of q and k
    k_norm: torch.Tensor | None  # [D]
    o: Linear  # [hidden, H D]
    post_norm: torch.Tensor  # [hidden]
    gate_up: Linear  # [2 I, hidden]
    down: Linear  # [hidden, I]


@dataclass
class ModelWeights:
    embed: torch.Tensor | Linear  # [V, hidden]: a Linear when lm_head shares it
    layers: list[LayerWeights]
    norm: torch.Tensor  # [hidden]
    lm_head: Linear  # [V, hidden]; shares `embed` when the model ties them
    rotary: Any  # the model's rotary embedding module: cos, sin for positions
    activation: Callable[[torch.Tensor], torch.Tensor]
    norm_eps: float
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scaling: float

    def embed_rows(self, ids: torch.Tensor) -> torch.Tensor:
        rows = self.embed.rows(ids) if isinstance(self.embed, Linear) else self.embed[ids]
        return rows.to(self.norm.dtype)  # exact: bfloat16 rows widen to float32

    @property
    def nbytes(self) -> int:
        """Bytes a decode step reads: every matrix once, the embedding only as lm_head."""
        linears = [self.lm_head, *(getattr(layer, n) for layer in self.layers for n in LINEARS)]
        return sum(linear.nbytes for linear in linears)

    @property
    def storage(self) -> str:
        """How the matrices are stored, e.g. 'bfloat16' or 'float32'."""
        kinds = {str(self.layers[0].qkv.weight.dtype), str(self.lm_head.weight.dtype)}
        return "+".join(sorted(kind.removeprefix("torch.") for kind in kinds))


LINEARS = ("qkv", "o", "gate_up", "down")


def extract_weights(model: Any, kernels: CpuKernels | None) -> ModelWeights:
    """Our weights from a loaded Llama-family model; with `kernels` (CPU, float32 only),
    bfloat16-exact matrices are kept in bfloat16. The model's own matrices are released."""
    decoder = model.model
    config = model.config.get_text_config()

    def fuse(*modules: Any) -> Linear:
        weight = torch.cat([m.weight for m in modules]) if len(modules) > 1 else modules[0].weight
        biases = [m.bias for m in modules]
        bias = None if biases[0] is None else torch.cat(biases).detach()
        return Linear(weight.detach(), bias, kernels)

    layers = []
    for layer in decoder.layers:
        attention, mlp = layer.self_attn, layer.mlp
        q_norm = getattr(attention, "q_norm", None)  # Qwen3
        k_norm = getattr(attention, "k_norm", None)
        layers.append(
            LayerWeights(
                input_norm=layer.input_layernorm.weight.detach(),
                qkv=fuse(attention.q_proj, attention.k_proj, attention.v_proj),
                q_norm=None if q_norm is None else q_norm.weight.detach(),
                k_norm=None if k_norm is None else k_norm.weight.detach(),
                o=fuse(attention.o_proj),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                gate_up=fuse(mlp.gate_proj, mlp.up_proj),
                down=fuse(mlp.down_proj),
            )
        )
        _release(attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj)
        _release(mlp.gate_proj, mlp.up_proj, mlp.down_proj)
    lm_head = fuse(model.lm_head)
    tied = model.lm_head.weight.data_ptr() == decoder.embed_tokens.weight.data_ptr()
    embed = lm_head if tied else decoder.embed_tokens.weight.detach()
    _release(model.lm_head, decoder.embed_tokens)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    activation = F.silu if config.hidden_act == "silu" else decoder.layers[0].mlp.act_fn
    weights = ModelWeights(
        embed=embed,
        layers=layers,
        norm=decoder.norm.weight.detach(),
        lm_head=lm_head,
        rotary=decoder.rotary_emb,
        activation=activation,
        norm_eps=float(config.rms_norm_eps),
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads or config.num_attention_heads,
        head_dim=head_dim,
        scaling=float(decoder.layers[0].self_attn.scaling),
    )
    log.info("weights: %s, %.0f MB read per decode step", weights.storage, weights.nbytes / 1e6)
    return weights


def _exact_in_bf16(weight: torch.Tensor) -> bool:
    return bool(torch.equal(weight.to(torch.bfloat16).to(weight.dtype), weight))


def _release(*modules: Any) -> None:
    """Drops the model's own copy of a matrix once ours is made: the model is not run again."""
    for module in modules:
        module.weight = None
