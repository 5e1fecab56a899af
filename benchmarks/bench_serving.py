"""Serving benchmark in the style of `vllm bench serve`, for any of the runtime's stream APIs.

Random prompts of a set token length (or random words without a tokenizer), each asking for a
set number of output tokens (ignore_eos), sent at a request rate (Poisson, or all at once) with
at most `--max-concurrency` in flight. Prints request throughput, output tok/s and TTFT / TPOT /
ITL / E2E (mean, p50, p99) and writes them, the per-request records, the machine and the
versions to a JSON file.

    python -m benchmarks.bench_serving --base-url http://127.0.0.1:8000 --backend completions \
        --tokenizer DIR --random-input-len 128 --random-output-len 128 \
        --num-prompts 256 --max-concurrency 64 --result-file out.json

Backends: `completions` (/v1/completions), `chat` (/v1/chat/completions), `chatllm` (the
ChatLLM NUL-delimited stream, `POST /` with use_stream_chat). The first two also measure vLLM's
own OpenAI server.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np

from benchmarks.backends import BACKENDS, Job, RequestRecord, send
from benchmarks.environment import machine_facts

PERCENTILES = (50, 99)
_TEXT = (
    "the cat reads a book at night in the library while snow falls on the high peaks and the "
    "server streams every token back to a client who asks about the weather in the mountains"
)
WORDS = tuple(_TEXT.split(" "))


def random_prompts(
    tokenizer: Any | None, num: int, input_len: int, output_len: int, seed: int
) -> list[Job]:
    """`num` prompts of `input_len` tokens (words without a tokenizer), reproducible by seed."""
    rng = random.Random(seed)
    if tokenizer is None:
        return [
            Job(" ".join(rng.choice(WORDS) for _ in range(input_len)), input_len, output_len)
            for _ in range(num)
        ]
    pieces = _printable_tokens(tokenizer)
    jobs = []
    for _ in range(num):
        ids = [rng.choice(pieces) for _ in range(input_len)]
        # Merges across token boundaries change the count when re-encoded; nudge it back.
        for _ in range(20):
            text = tokenizer.decode(ids)
            count = len(tokenizer.encode(text, add_special_tokens=False))
            if count == input_len:
                break
            if count > input_len:
                del ids[input_len - count :]
            else:
                ids += [rng.choice(pieces) for _ in range(input_len - count)]
        jobs.append(Job(text, count, output_len))
    return jobs


def _printable_tokens(tokenizer: Any) -> list[int]:
    """Token ids that decode to printable text on their own (no control bytes, no specials)."""
    special = set(getattr(tokenizer, "all_special_ids", ()))
    pieces = []
    for token_id in range(len(tokenizer)):
        if token_id in special:
            continue
        text = tokenizer.decode([token_id])
        if text.strip() and text.isprintable():
            pieces.append(token_id)
    return pieces


async def run(
    base_url: str,
    backend_name: str,
    model: str,
    jobs: list[Job],
    max_concurrency: int | None,
    request_rate: float = math.inf,
    seed: int = 0,
    num_warmups: int = 2,
) -> tuple[list[RequestRecord], float]:
    """Send every job; the records and the wall time from the first send to the last answer."""
    backend = BACKENDS[backend_name]
    # The client's heap holds the tokenizer's libraries (often torch): a full collection of it
    # stalls every stream for 100+ ms and looks like a server that streams in bursts.
    gc.collect()
    gc.freeze()
    connector = aiohttp.TCPConnector(limit=max_concurrency or 0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        gate = asyncio.Semaphore(max_concurrency or len(jobs) or 1)

        async def limited(job: Job) -> RequestRecord:
            async with gate:
                return await send(session, backend, base_url, model, job)

        if num_warmups:
            warm = await asyncio.gather(*(limited(jobs[i % len(jobs)]) for i in range(num_warmups)))
            failed = [r.error for r in warm if not r.success]
            if failed:
                raise RuntimeError(f"warm-up failed: {failed[0]}")
        rng = random.Random(seed)
        tasks = []
        started = time.perf_counter()
        for job in jobs:
            tasks.append(asyncio.create_task(limited(job)))
            if request_rate != math.inf:
                await asyncio.sleep(rng.expovariate(request_rate))
        records = await asyncio.gather(*tasks)
        duration = time.perf_counter() - started
    return list(records), duration


def summarize(records: list[RequestRecord], duration: float) -> dict[str, Any]:
    done = [r for r in records if r.success]
    summary: dict[str, Any] = {
        "completed": len(done),
        "failed": len(records) - len(done),
        "duration_s": round(duration, 3),
        "total_input_tokens": sum(r.prompt_len for r in done),
        "total_output_tokens": sum(r.output_len for r in done),
        "request_throughput": len(done) / duration,
        "output_throughput": sum(r.output_len for r in done) / duration,
        "total_token_throughput": sum(r.prompt_len + r.output_len for r in done) / duration,
    }
    series = {
        "ttft": [r.ttft for r in done],
        "tpot": [t for r in done if (t := r.tpot) is not None],
        "itl": [gap for r in done for gap in r.itl],
        "e2el": [r.e2e for r in done],
    }
    for name, values in series.items():
        values_ms = np.asarray(values or [0.0]) * 1000
        summary[f"mean_{name}_ms"] = float(values_ms.mean())
        for p in PERCENTILES:
            key = "median" if p == 50 else f"p{p}"
            summary[f"{key}_{name}_ms"] = float(np.percentile(values_ms, p))
    errors = [r.error for r in records if not r.success]
    if errors:
        summary["first_error"] = errors[0]
    return summary


def print_summary(title: str, summary: dict[str, Any]) -> None:
    print(f"{'=' * 16} {title} {'=' * 16}")
    rows = [
        ("Successful requests", summary["completed"], "d"),
        ("Failed requests", summary["failed"], "d"),
        ("Benchmark duration (s)", summary["duration_s"], ".2f"),
        ("Total input tokens", summary["total_input_tokens"], "d"),
        ("Total generated tokens", summary["total_output_tokens"], "d"),
        ("Request throughput (req/s)", summary["request_throughput"], ".2f"),
        ("Output token throughput (tok/s)", summary["output_throughput"], ".1f"),
        ("Total token throughput (tok/s)", summary["total_token_throughput"], ".1f"),
    ]
    for name, label in (("ttft", "TTFT"), ("tpot", "TPOT"), ("itl", "ITL"), ("e2el", "E2E")):
        for key in ("mean", "median", "p99"):
            rows.append((f"{key.capitalize()} {label} (ms)", summary[f"{key}_{name}_ms"], ".2f"))
    for name, value, spec in rows:
        print(f"{name:<40}{value:>14{spec}}")
    if "first_error" in summary:
        print(f"first error: {summary['first_error']}")


def load_tokenizer(path: str | None) -> Any | None:
    if not path:
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


async def served_model(base_url: str) -> str:
    """The first model the server lists (vLLM and the runtime both answer /v1/models)."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(base_url + "/v1/models") as answer,
    ):
        return (await answer.json())["data"][0]["id"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--backend", choices=sorted(BACKENDS), default="completions")
    parser.add_argument("--model", help="served model name (default: the server's first)")
    parser.add_argument(
        "--tokenizer", help="tokenizer folder for token-exact prompts (else random words)"
    )
    parser.add_argument("--random-input-len", type=int, default=128)
    parser.add_argument("--random-output-len", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--max-concurrency", type=int, help="requests in flight at most")
    parser.add_argument(
        "--request-rate",
        type=float,
        default=math.inf,
        help="requests per second, Poisson arrivals (default inf: all at once)",
    )
    parser.add_argument("--num-warmups", type=int, default=2)
    parser.add_argument("--result-file", help="write the summary and records here (JSON)")
    parser.add_argument("--label", default="", help="a name for this run in the result file")
    parser.add_argument(
        "--metadata",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="engine settings etc. to record in the result file (repeatable)",
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    tokenizer = load_tokenizer(args.tokenizer)
    jobs = random_prompts(
        tokenizer, args.num_prompts, args.random_input_len, args.random_output_len, args.seed
    )
    model = args.model or ""
    if not model and args.backend != "chatllm":
        model = asyncio.run(served_model(args.base_url))
    records, duration = asyncio.run(
        run(
            args.base_url,
            args.backend,
            model,
            jobs,
            args.max_concurrency,
            args.request_rate,
            args.seed,
            args.num_warmups,
        )
    )
    summary = summarize(records, duration)
    print_summary(args.label or f"{args.backend} @ {args.base_url}", summary)
    if args.result_file:
        result = {
            "label": args.label,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine_facts(),
            "settings": {
                "backend": args.backend,
                "base_url": args.base_url,
                "model": model,
                "tokenizer": args.tokenizer,
                "random_input_len": args.random_input_len,
                "random_output_len": args.random_output_len,
                "num_prompts": args.num_prompts,
                "max_concurrency": args.max_concurrency,
                "request_rate": str(args.request_rate),
                "seed": args.seed,
                **dict(item.split("=", 1) for item in args.metadata),
            },
            "summary": summary,
            "records": [asdict(r) for r in records],
        }
        Path(args.result_file).parent.mkdir(parents=True, exist_ok=True)
        Path(args.result_file).write_text(json.dumps(result, indent=1))
        print(f"wrote {args.result_file}")


if __name__ == "__main__":
    main()
