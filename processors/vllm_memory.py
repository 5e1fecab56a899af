"""How much memory vLLM's CPU build may give its KV cache, when nobody said.

Without VLLM_CPU_KVCACHE_SPACE or `kv_cache_memory_bytes`, vLLM's CPU worker reserves 0.92 of
the NUMA node's memory and refuses to start when less than that is free, which on a shared or
small machine is almost always. The runtime sizes it instead: enough for every sequence the
engine runs at full context when memory allows, but no more than a quarter of what is available
after the weights and no more than 4 GiB (on a CPU, compute limits a server long before KV room
does, and vLLM takes the whole cache up front), and never less than one full-context sequence
(vLLM's own minimum).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from processors.settings import EngineSettings

ENV_KEY = "VLLM_CPU_KVCACHE_SPACE"  # GiB, vLLM's own setting
ENGINE_ARG = "kv_cache_memory_bytes"
SHARE_OF_AVAILABLE = 0.25  # of the memory left after the weights
MAX_BYTES = 4 << 30
VLLM_CPU_DEFAULT_MAX_NUM_SEQS = 128  # what `vllm serve` runs on the CPU unless told
MIB = 1 << 20


@dataclass(frozen=True)
class KvCacheSize:
    num_bytes: int
    num_tokens: int
    available_bytes: int

    def describe(self) -> str:
        return (
            f"{self.num_bytes / 2**30:.2f} GiB ({self.num_tokens} tokens) of "
            f"{self.available_bytes / 2**30:.1f} GiB available"
        )


def is_set_by_user(settings: EngineSettings) -> bool:
    return bool(os.environ.get(ENV_KEY)) or ENGINE_ARG in settings.extra_args


def cpu_kv_cache_size(settings: EngineSettings, weight_bytes: int, dtype: str) -> KvCacheSize:
    config = json.loads((Path(settings.model_path) / "config.json").read_text())
    text = config.get("text_config") or config
    heads = int(text["num_attention_heads"])
    head_dim = int(text.get("head_dim") or text["hidden_size"] // heads)
    kv_heads = int(text.get("num_key_value_heads") or heads)
    # vLLM runs a float32 checkpoint in half precision unless float32 is asked for.
    element = 4 if dtype in ("float32", "float") else 2
    per_token = 2 * int(text["num_hidden_layers"]) * kv_heads * head_dim * element
    max_len = settings.max_model_len or int(text.get("max_position_embeddings") or 2048)
    num_seqs = settings.max_num_seqs or VLLM_CPU_DEFAULT_MAX_NUM_SEQS
    available = psutil.virtual_memory().available
    budget = int((available - weight_bytes) * SHARE_OF_AVAILABLE)
    wanted = num_seqs * max_len * per_token
    floor = max_len * per_token
    num_bytes = max(floor, min(wanted, budget, MAX_BYTES))
    num_bytes = -(-num_bytes // MIB) * MIB  # whole MiB, rounded up
    return KvCacheSize(num_bytes, num_bytes // per_token, available)
