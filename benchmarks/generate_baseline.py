"""The plain baseline: transformers' `model.generate()` serving the prompts one at a time.

Run in a subprocess by the comparison (one contender at a time, its memory freed after), on
the one-stream prompts: generate() has no batching, so at any concurrency it serves what it
serves at one. Greedy, exactly `output_len` new tokens, the dtype our engine picks on the same
device (`auto`: float32 on the CPU).

    python -m benchmarks.generate_baseline --prompts prompts.json --output result.json \
        --model DIR --output-len 128 --dtype auto
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, help="JSON: a list of prompts")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--output-len", type=int, required=True)
    parser.add_argument("--dtype", default="auto")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from processors.transformers_engine.loader import choose_dtype

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(
        args.model, dtype=choose_dtype(args.dtype, device, None)
    )
    model = model.to(device).eval()
    prompts = [
        tokenizer.encode(p, return_tensors="pt").to(device)
        for p in json.loads(Path(args.prompts).read_text())
    ]
    length = {"max_new_tokens": args.output_len, "min_new_tokens": args.output_len}
    with torch.inference_mode():
        model.generate(prompts[0], max_new_tokens=4, do_sample=False)  # warm-up
        started = time.perf_counter()
        num_output = 0
        for ids in prompts:
            output = model.generate(ids, do_sample=False, **length)
            num_output += output.shape[1] - ids.shape[1]
        duration = time.perf_counter() - started
    result = {
        "num_prompts": len(prompts),
        "duration_s": duration,
        "total_output_tokens": num_output,
        "output_throughput": num_output / duration,
        "request_throughput": len(prompts) / duration,
        "dtype": str(model.dtype).removeprefix("torch."),
        "num_threads": torch.get_num_threads(),
    }
    Path(args.output).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
