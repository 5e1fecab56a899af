"""Random-weight Llama models of any size, built locally for benchmarks (no hub is reachable).

They borrow the demo model's tokenizer and chat template; only the shapes change. Their output
is noise and may hit EOS at any step, so benchmarks pass `ignore_eos`.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models.demo import VOCAB, ensure_demo_model

_BORROWED = (
    "tokenizer.json",
    "tokenizer_config.json",
    "chat_template.jinja",
    "generation_config.json",
)


@dataclass(frozen=True)
class LlamaShape:
    num_hidden_layers: int = 8
    hidden_size: int = 1024
    intermediate_size: int = 2816
    num_attention_heads: int = 16
    num_key_value_heads: int = 8
    max_position_embeddings: int = 2048

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def num_parameters(self) -> int:
        h, kv = self.hidden_size, self.num_key_value_heads * self.head_dim
        attention = 2 * h * h + 2 * h * kv
        mlp = 3 * h * self.intermediate_size
        return self.num_hidden_layers * (attention + mlp + 2 * h) + 2 * VOCAB * h + h


# About one billion parameters: the size the GPU check measures decode bandwidth on.
ONE_BILLION = LlamaShape(
    num_hidden_layers=22,
    hidden_size=2048,
    intermediate_size=5632,
    num_attention_heads=32,
    num_key_value_heads=8,
)


def write_random_llama(
    directory: Path, shape: LlamaShape, dtype: str = "float32", seed: int = 0
) -> Path:
    """Writes the model unless `directory` already holds one of this shape."""
    directory = Path(directory)
    config_path = directory / "config.json"
    config = _config(shape, dtype)
    if config_path.is_file() and json.loads(config_path.read_text()) == config:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    demo = ensure_demo_model()
    for name in _BORROWED:
        shutil.copyfile(demo / name, directory / name)
    demo_config = json.loads((demo / "config.json").read_text())
    config.update({k: demo_config[k] for k in ("bos_token_id", "eos_token_id")})
    _write_weights(directory / "model.safetensors", shape, np.dtype(dtype), seed)
    config_path.write_text(json.dumps(config, indent=2) + "\n")  # last: marks the model complete
    return directory


def _config(shape: LlamaShape, dtype: str) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **asdict(shape),
        "head_dim": shape.head_dim,
        "vocab_size": VOCAB,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "torch_dtype": dtype,
    }


def _write_weights(path: Path, shape: LlamaShape, dtype: np.dtype, seed: int) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    h, kv = shape.hidden_size, shape.num_key_value_heads * shape.head_dim

    def matrix(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(dtype)

    tensors = {
        "model.embed_tokens.weight": matrix(VOCAB, h),
        "model.norm.weight": np.ones(h, dtype),
        "lm_head.weight": matrix(VOCAB, h),
    }
    for i in range(shape.num_hidden_layers):
        layer = f"model.layers.{i}"
        tensors |= {
            f"{layer}.self_attn.q_proj.weight": matrix(h, h),
            f"{layer}.self_attn.k_proj.weight": matrix(kv, h),
            f"{layer}.self_attn.v_proj.weight": matrix(kv, h),
            f"{layer}.self_attn.o_proj.weight": matrix(h, h),
            f"{layer}.mlp.gate_proj.weight": matrix(shape.intermediate_size, h),
            f"{layer}.mlp.up_proj.weight": matrix(shape.intermediate_size, h),
            f"{layer}.mlp.down_proj.weight": matrix(h, shape.intermediate_size),
            f"{layer}.input_layernorm.weight": np.ones(h, dtype),
            f"{layer}.post_attention_layernorm.weight": np.ones(h, dtype),
        }
    save_file(tensors, str(path))
