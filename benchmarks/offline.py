"""The ceiling: vLLM's offline engine (`vllm.LLM.generate`) on the same prompts and lengths.

Run in a subprocess by the comparison (vLLM spawns its engine core, so this needs its own
`__main__`). Each concurrency level c is measured by generating the prompts in waves of c:
with equal prompt and output lengths (ignore_eos) that is what continuous batching at c
requests in flight does, minus any serving front end.

    python -m benchmarks.offline --prompts prompts.json --output result.json \
        --model DIR --max-num-seqs 64 --max-model-len 1024 --dtype auto --levels 1 16 64
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", required=True, help="JSON: {level: [prompt, ...]}")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--max-num-seqs", type=int, required=True)
    parser.add_argument("--max-model-len", type=int, required=True)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--output-len", type=int, required=True)
    args = parser.parse_args()

    from vllm import LLM, SamplingParams

    llm = LLM(
        model=args.model,
        max_num_seqs=args.max_num_seqs,
        max_model_len=args.max_model_len,
        dtype=args.dtype,
    )
    sampling = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    by_level: dict[str, list[str]] = json.loads(Path(args.prompts).read_text())
    first = next(iter(by_level.values()))
    llm.generate(first[:2], sampling, use_tqdm=False)  # warm-up
    results = {}
    for level, prompts in by_level.items():
        wave = int(level)
        started = time.perf_counter()
        num_output = 0
        for i in range(0, len(prompts), wave):
            outputs = llm.generate(prompts[i : i + wave], sampling, use_tqdm=False)
            num_output += sum(len(o.outputs[0].token_ids) for o in outputs)
        duration = time.perf_counter() - started
        results[level] = {
            "num_prompts": len(prompts),
            "duration_s": duration,
            "total_output_tokens": num_output,
            "output_throughput": num_output / duration,
            "request_throughput": len(prompts) / duration,
        }
    Path(args.output).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
