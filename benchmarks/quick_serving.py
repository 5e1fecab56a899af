"""Quick serving figures: time to ready, TTFT and output tok/s at a few concurrencies.

Starts `llm-runtime serve` on the demo model (or --model), streams greedy /v1/completions at
each concurrency, and prints medians. The full comparison harness against vLLM's own server
lives beside it once built; this one answers "is it in the right range" in about a minute.

    python -m benchmarks.quick_serving [--model DIR] [--concurrency 1 16] [--max-tokens 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    port: int, model: str | None, log_path: Path, extra_args: list[str] | None = None
) -> tuple[subprocess.Popen, float]:
    command = [
        str(Path(sys.executable).parent / "llm-runtime"),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    if model:
        command += ["--model", model]
    command += extra_args or []
    env = {"VLLM_CPU_KVCACHE_SPACE": "1", **os.environ}
    started = time.monotonic()
    process = subprocess.Popen(
        command,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    deadline = started + 600
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}; see {log_path}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process, time.monotonic() - started
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    process.kill()
    raise SystemExit("server not ready within 600 s")


async def one_request(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> dict:
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,  # random-weight models may pick EOS at any step
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    sent = time.perf_counter()
    first = None
    tokens = 0
    async with client.stream("POST", "/v1/completions", json=body) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            chunk = json.loads(line[6:])
            if chunk["choices"] and chunk["choices"][0]["text"]:
                first = first or time.perf_counter()
            if chunk.get("usage"):  # every chunk here; only the last one on other servers
                tokens = chunk["usage"]["completion_tokens"]
    return {
        "ttft": (first or time.perf_counter()) - sent,
        "latency": time.perf_counter() - sent,
        "tokens": tokens,
    }


async def run_level(url: str, concurrency: int, num_requests: int, max_tokens: int) -> dict:
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        await one_request(client, "warm up", 4)
        gate = asyncio.Semaphore(concurrency)

        async def bounded(i: int) -> dict:
            async with gate:
                return await one_request(client, f"Request {i}: tell me a story", max_tokens)

        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(num_requests)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": num_requests,
        "output_tok_s": sum(r["tokens"] for r in results) / elapsed,
        "ttft_p50_ms": statistics.median(r["ttft"] for r in results) * 1000,
        "latency_p50_s": statistics.median(r["latency"] for r in results),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the demo model)")
    parser.add_argument("--url", help="measure a server already running here instead")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--requests-per-level", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    # A SIGTERM must still run the `finally` below, or the server would outlive the benchmark.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))

    process = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        log_path = Path("benchmarks/results/quick_serving.log")
        log_path.parent.mkdir(parents=True, exist_ok=True)
        process, ready_s = start_server(port, args.model, log_path)
        print(f"time to ready: {ready_s:.1f} s")
    try:
        print(
            f"{'concurrency':>11} {'requests':>8} {'output tok/s':>12} {'TTFT p50 ms':>11} "
            f"{'latency p50 s':>13}"
        )
        for level in args.concurrency:
            requests = max(args.requests_per_level, level)
            row = asyncio.run(run_level(url, level, requests, args.max_tokens))
            print(
                f"{row['concurrency']:>11} {row['requests']:>8} {row['output_tok_s']:>12.0f} "
                f"{row['ttft_p50_ms']:>11.1f} {row['latency_p50_s']:>13.2f}"
            )
    finally:
        if process is not None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)


if __name__ == "__main__":
    main()
