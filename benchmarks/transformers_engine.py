"""The transformers processor's speed, printed: served output tok/s at concurrency 1 and 16
against transformers' own `generate()` serving one request at a time, on the demo model and a
larger random Llama (8 layers, hidden 1024). `--hf-batching` also times transformers'
continuous-batching manager (`generate_batch`), the alternative to our own scheduler.

`--decode-bandwidth` times batch-1 decode in the engine itself and prints the memory bandwidth
it implies (bytes read per token x tokens/s) beside the bandwidth benchmarks/memory_bandwidth.py
measures on the same device: on the CPU on SmolLM2, on a GPU on `--models llama-1b` (about one
billion parameters) in bfloat16.

    python -m benchmarks.transformers_engine [--models demo llama-8x1024] [--max-tokens 128]
    python -m benchmarks.transformers_engine --models smollm2 --decode-bandwidth
    python -m benchmarks.transformers_engine --models llama-1b --decode-bandwidth --dtype bfloat16
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import tempfile
import time
from pathlib import Path

from benchmarks.bench_serving import load_tokenizer, random_prompts, run, summarize
from benchmarks.random_llama import ONE_BILLION, LlamaShape, write_random_llama
from benchmarks.servers import EngineSettings, running_server
from models.builtin import smollm2_gguf
from models.cache import cache_dir
from models.demo import ensure_demo_model
from models.gguf import ensure_converted

MODELS = {
    "demo": ensure_demo_model,
    "smollm2": lambda: ensure_converted(smollm2_gguf()),
    "llama-8x1024": lambda: write_random_llama(cache_dir() / "random-llama-8x1024", LlamaShape()),
    "llama-1b": lambda: write_random_llama(
        cache_dir() / "random-llama-1b", ONE_BILLION, dtype="float16"
    ),
}


def prompts(tokenizer, count: int) -> list[list[int]]:
    return [tokenizer.encode(f"Request {i}: tell me a story about the cat") for i in range(count)]


def time_generate(path: Path, max_tokens: int, num_requests: int) -> float:
    """tok/s of `model.generate()` serving requests one after another (greedy, no early EOS)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    ids = prompts(tokenizer, num_requests + 1)
    with torch.inference_mode():
        model.generate(torch.tensor([ids[-1]]), max_new_tokens=4)  # warm-up
        started = time.perf_counter()
        for prompt in ids[:num_requests]:
            model.generate(
                torch.tensor([prompt]),
                max_new_tokens=max_tokens,
                min_new_tokens=max_tokens,
                do_sample=False,
            )
    return num_requests * max_tokens / (time.perf_counter() - started)


def time_hf_batching(path: Path, max_tokens: int, num_requests: int) -> float:
    """tok/s of transformers' continuous-batching manager on `num_requests` at once."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()
    config = GenerationConfig(max_new_tokens=max_tokens, do_sample=False, eos_token_id=-1)
    started = time.perf_counter()
    outputs = model.generate_batch(prompts(tokenizer, num_requests), generation_config=config)
    tokens = sum(len(output.generated_tokens) for output in outputs.values())
    return tokens / (time.perf_counter() - started)


def time_batch1_decode(path: Path, max_tokens: int, dtype: str) -> None:
    """Batch-1 decode in the engine (no HTTP): tok/s, the bytes each token reads (weights as
    stored, and the keys and values attended over), and that rate against the bandwidth this
    machine's memory (or the GPU's) measures with copies."""
    import threading

    import torch

    from benchmarks.memory_bandwidth import measure
    from models.tokenizer import load_tokenizer
    from processors.base import GenerationRequest, SamplingParams
    from processors.settings import EngineSettings
    from processors.transformers_engine.loader import load_engine

    tokenizer = load_tokenizer(path)
    settings = EngineSettings(model_path=str(path), max_num_seqs=1, max_model_len=2048, dtype=dtype)
    loaded = load_engine(settings, tokenizer)
    engine = loaded.engine
    weights = engine.runner.weights
    cache = engine.cache
    kv_bytes_per_position = 2 * len(cache.keys) * cache.keys[0][0, :, 0].nbytes
    prompt = prompts(tokenizer, 1)[0]
    stamps: list[float] = []
    done = threading.Event()

    def on_outputs(outputs: list) -> None:
        stamps.append(time.perf_counter())
        if any(step.finish_reason is not None for _, step in outputs):
            done.set()

    engine.start(on_outputs)
    for attempt in ("warm-up", "timed"):
        stamps.clear()
        done.clear()
        sampling = SamplingParams(max_tokens=max_tokens, temperature=0, ignore_eos=True)
        engine.submit(GenerationRequest(attempt, prompt, sampling))
        done.wait()
    engine.stop()
    steps = sorted(b - a for a, b in itertools.pairwise(stamps))
    step_s = steps[len(steps) // 2]  # the median decode step
    mean_context = len(prompt) + max_tokens / 2
    token_bytes = weights.nbytes + kv_bytes_per_position * mean_context
    achieved = token_bytes / step_s / 1e9
    device = "cpu" if loaded.device.type == "cpu" else "cuda"
    bandwidth = measure(device=device)
    peak = bandwidth["peak_gb_s"]
    print(
        f"memory bandwidth ({device}, copies): "
        + ", ".join(f"{k} {v}" for k, v in bandwidth.items() if k.startswith(("copy", "read")))
    )
    print(
        f"batch-1 decode on {loaded.device} ({loaded.dtype} arithmetic, weights "
        f"{weights.storage}, {torch.get_num_threads()} threads): {1 / step_s:.1f} tok/s "
        f"(median step {step_s * 1e3:.1f} ms); {token_bytes / 1e6:.0f} MB read per token "
        f"({weights.nbytes / 1e6:.0f} MB weights + KV) -> {achieved:.1f} GB/s "
        f"= {100 * achieved / peak:.0f}% of the measured {peak:.1f} GB/s"
    )


def time_served(path: Path, max_tokens: int, levels: list[int]) -> list[dict]:
    settings = EngineSettings(
        str(path), max_num_seqs=max(levels), extra_args=("--processor", "transformers")
    )
    log_path = Path(tempfile.mkdtemp()) / "server.log"
    tokenizer = load_tokenizer(str(path))
    rows = []
    with running_server("ours", settings, log_path, {}) as (base_url, _, _):
        for c in levels:
            jobs = random_prompts(tokenizer, max(2 * c, 4), 16, max_tokens, seed=c)
            records, duration = asyncio.run(
                run(base_url, "completions", settings.served_model_name, jobs, c)
            )
            summary = summarize(records, duration)
            rows.append(
                {
                    "concurrency": c,
                    "output_tok_s": summary["output_throughput"],
                    "ttft_p50_ms": summary["median_ttft_ms"],
                }
            )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models", nargs="+", default=["demo", "llama-8x1024"], choices=list(MODELS)
    )
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--generate-requests", type=int, default=4)
    parser.add_argument("--hf-batching", action="store_true")
    parser.add_argument("--decode-bandwidth", action="store_true")
    parser.add_argument("--dtype", default="auto", help="the engine's dtype (--decode-bandwidth)")
    args = parser.parse_args()
    for name in args.models:
        path = MODELS[name]()
        print(f"\n## {name} ({path})")
        if args.decode_bandwidth:
            time_batch1_decode(path, args.max_tokens, args.dtype)
            continue
        generate = time_generate(path, args.max_tokens, args.generate_requests)
        print(f"generate(), one request at a time: {generate:8.0f} tok/s")
        if args.hf_batching:
            hf = time_hf_batching(path, args.max_tokens, 16)
            print(f"transformers generate_batch, 16:   {hf:8.0f} tok/s")
        for level in time_served(path, args.max_tokens, [1, 16]):
            ratio = level["output_tok_s"] / generate
            print(
                f"served, concurrency {level['concurrency']:>2}:          "
                f"{level['output_tok_s']:8.0f} tok/s  ({ratio:.1f}x generate()), "
                f"TTFT p50 {level['ttft_p50_ms']:.0f} ms"
            )


if __name__ == "__main__":
    main()
