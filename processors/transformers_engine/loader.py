"""Builds a TransformersEngine from a model folder: device, dtype, model, a KV cache that fits.

CUDA when torch sees a GPU, else the CPU. `--dtype auto` means the checkpoint's half precision
on a GPU and float32 on the CPU, where half-precision matmuls are slow or missing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psutil
import torch

from processors.settings import EngineSettings
from processors.transformers_engine.cpu_kernels import load_cpu_kernels
from processors.transformers_engine.engine import TransformersEngine
from processors.transformers_engine.kv_cache import SlotKVCache
from processors.transformers_engine.model_runner import ModelRunner
from processors.transformers_engine.weights import extract_weights

log = logging.getLogger(__name__)

# Decoder families our forward (model_runner.py) computes as transformers does: pre-norm
# decoder layers, rotary attention over all earlier positions (no sliding window), gated MLP.
SUPPORTED_ARCHITECTURES = frozenset(
    {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}
)
DTYPES = {
    "float32": torch.float32,
    "float": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "half": torch.float16,
    "fp16": torch.float16,
}
DEFAULT_MAX_NUM_SEQS = 32
CPU_KV_SHARE = 0.25  # of the memory available at start, at most, on the CPU
DEFAULT_MAX_PREFILL_TOKENS = 512
# cpu_kernels: "on" runs our C kernels on the CPU in float32 (cpu_kernels.py: bfloat16-exact
# weights kept in bfloat16, RMSNorm, decode attention); "off" runs torch's alone (to compare).
# num_threads: torch's threads for the engine (0: torch's default, one per core).
ENGINE_ARGS = {"max_prefill_tokens": int, "cpu_kernels": str, "num_threads": int}


class EngineConfigError(ValueError):
    """The settings cannot be honoured on this model or machine; the message says why."""


@dataclass(frozen=True)
class LoadedEngine:
    engine: TransformersEngine
    device: torch.device
    dtype: torch.dtype
    max_model_len: int
    num_slots: int
    vocab_size: int  # the logits' width (it may exceed the tokenizer's vocabulary)


def load_engine(settings: EngineSettings, tokenizer: Any) -> LoadedEngine:
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    extra = _engine_args(settings.extra_args)
    if settings.tensor_parallel_size != 1:
        raise EngineConfigError("the transformers processor runs on one device (tensor parallel 1)")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    config = AutoConfig.from_pretrained(settings.model_path)
    dtype = choose_dtype(settings.dtype, device, getattr(config, "dtype", None))
    model: Any = AutoModelForCausalLM.from_pretrained(settings.model_path, dtype=dtype)
    model = model.to(device).eval()
    kernels = None
    if device.type == "cpu" and dtype == torch.float32 and extra.get("cpu_kernels", "on") == "on":
        kernels = load_cpu_kernels()
    weights = extract_weights(model, kernels)
    max_len = _max_len(settings.max_model_len, config)
    text = config.get_text_config()
    num_kv_heads = getattr(text, "num_key_value_heads", None) or text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    shape = (text.num_hidden_layers, num_kv_heads, max_len, head_dim)
    num_slots = _num_slots(settings, device, SlotKVCache.bytes_per_slot(*shape, dtype))
    cache = SlotKVCache(
        text.num_hidden_layers, num_slots, num_kv_heads, max_len, head_dim, dtype, device
    )
    try:
        generation = GenerationConfig.from_pretrained(settings.model_path)
    except OSError:  # no generation_config.json
        generation = None
    eos = _eos_token_ids(generation, config, tokenizer)
    runner = ModelRunner(weights, cache, kernels)
    max_prefill_tokens = extra.get("max_prefill_tokens", DEFAULT_MAX_PREFILL_TOKENS)
    engine = TransformersEngine(
        runner, tokenizer, eos, max_prefill_tokens, extra.get("num_threads", 0)
    )
    log.info(
        "transformers engine: %s on %s (weights %s), %d slots of %d tokens, "
        "%d prompt tokens per step",
        dtype,
        device,
        weights.storage,
        num_slots,
        max_len,
        max_prefill_tokens,
    )
    vocab_size = int(weights.lm_head.weight.shape[0])
    return LoadedEngine(engine, device, dtype, max_len, num_slots, vocab_size)


def choose_dtype(asked: str, device: torch.device, checkpoint: Any) -> torch.dtype:
    if asked == "auto":
        if device.type == "cpu":
            return torch.float32
        return checkpoint if checkpoint in (torch.float16, torch.bfloat16) else torch.bfloat16
    if asked not in DTYPES:
        raise EngineConfigError(
            f"unknown dtype {asked!r}; choose auto or one of {', '.join(DTYPES)}"
        )
    dtype = DTYPES[asked]
    if device.type == "cpu" and dtype == torch.float16:
        raise EngineConfigError("float16 is not supported on the CPU; use float32 or bfloat16")
    return dtype


def _engine_args(extra: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(extra) - set(ENGINE_ARGS))
    if unknown:
        raise EngineConfigError(
            f"unknown transformers engine argument(s): {', '.join(unknown)} "
            f"(--engine-arg takes {', '.join(sorted(ENGINE_ARGS))})"
        )
    args = {key: ENGINE_ARGS[key](value) for key, value in extra.items()}
    if args.get("cpu_kernels", "on") not in ("on", "off"):
        raise EngineConfigError(f"cpu_kernels is on or off, got {args['cpu_kernels']!r}")
    if args.get("max_prefill_tokens", 1) < 1:
        raise EngineConfigError("max_prefill_tokens must be at least 1")
    return args


def _max_len(asked: int | None, config: Any) -> int:
    text = config.get_text_config()
    limit = getattr(text, "max_position_embeddings", None)
    if asked is not None and limit is not None and asked > limit:
        raise EngineConfigError(
            f"max_model_len {asked} is larger than the model's {limit} positions"
        )
    length = asked or limit
    if length is None:
        raise EngineConfigError("the model's config gives no context length; set --max-model-len")
    return int(length)


def _num_slots(settings: EngineSettings, device: torch.device, bytes_per_slot: int) -> int:
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        share = settings.gpu_memory_utilization or 0.9
        budget = free - (1 - share) * total
    else:
        budget = CPU_KV_SHARE * psutil.virtual_memory().available
    fits = int(budget // bytes_per_slot)
    asked = settings.max_num_seqs or DEFAULT_MAX_NUM_SEQS
    if fits < 1:
        raise EngineConfigError(
            f"the KV cache for one sequence ({bytes_per_slot / 2**20:.0f} MiB) does not fit in "
            f"{max(budget, 0) / 2**20:.0f} MiB; lower --max-model-len"
        )
    if fits < asked:
        log.warning("KV cache: %d sequences asked, %d fit; running %d at once", asked, fits, fits)
    return min(asked, fits)


def _eos_token_ids(generation: Any, config: Any, tokenizer: Any) -> frozenset[int]:
    for source in (generation, config, tokenizer):
        value = getattr(source, "eos_token_id", None)
        if value is not None:
            return frozenset(value if isinstance(value, list) else [value])
    return frozenset()
