"""The front end's own CPU cost per streamed token, with the engine taken out.

A synthetic processor gives every running request one token per "engine step" (all at once,
as a batched engine does), so what the server process spends is the runtime's HTTP server,
APIs, serialization and socket writes alone. Its CPU time divided by the tokens it streamed is
a figure that barely moves with other load on the machine, unlike throughput, which is why it
is the measure to compare front-end changes by on a shared machine.

    python -m benchmarks.frontend_cost [--backend completions chat chatllm] [--concurrency 64]

The server runs in a subprocess started with this same interpreter and PYTHONPATH, so pointing
PYTHONPATH at another checkout measures that checkout's front end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncGenerator
from pathlib import Path

import psutil

from benchmarks.bench_serving import load_tokenizer, random_prompts, run, summarize
from benchmarks.servers import free_port
from processors.base import GenerationRequest, ProcessorInfo, ProcessorStats, Step

# Token texts of typical length (3 to 4 characters), cycled.
PIECES = ("the ", "cat", " sat", " on", " a ", "mat", ". ", "It ", "was", " warm")


class LockstepProcessor:
    """Every `step_s` seconds each running request gets one token, all in the same loop pass."""

    def __init__(self, tokenizer, step_s: float, max_model_len: int = 4096) -> None:
        self.info = ProcessorInfo(
            "synthetic", "synthetic", "/synthetic", max_model_len, "none", 256, tokenizer
        )
        self._step_s = step_s
        self._tick = asyncio.Event()
        self._ticker: asyncio.Task | None = None
        self._running = 0

    async def start(self) -> None:
        self._ticker = asyncio.get_running_loop().create_task(self._run_ticker())

    async def _run_ticker(self) -> None:
        while True:
            await asyncio.sleep(self._step_s)
            tick, self._tick = self._tick, asyncio.Event()
            tick.set()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[Step, None]:
        num_prompt = len(request.prompt_token_ids)
        total = request.sampling.max_tokens
        self._running += 1
        try:
            for i in range(total):
                await self._tick.wait()
                last = i == total - 1
                yield Step(PIECES[i % len(PIECES)], num_prompt, i + 1, "length" if last else None)
        finally:
            self._running -= 1

    async def abort(self, request_id: str) -> None:
        pass

    async def check_health(self) -> None:
        pass

    def stats(self) -> ProcessorStats:
        return ProcessorStats(self._running, 0, 0.0)

    async def shutdown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()


def serve_synthetic(port: int, model: str, step_s: float) -> int:
    """The runtime's server on the lockstep processor (run in the subprocess)."""
    from runtime.config import load_config
    from runtime.serve import serve

    config = load_config(
        {"host": "127.0.0.1", "port": port, "model_path": model, "log_level": "warning"},
        {},
        None,
    )
    return serve(config, LockstepProcessor(load_tokenizer(model), step_s))


@contextlib.contextmanager
def synthetic_server(model: str, step_s: float, log_path: Path):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "benchmarks.frontend_cost",
        "--serve",
        str(port),
        "--model",
        model,
        "--step-ms",
        str(step_s * 1000),
    ]
    with log_path.open("w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{port}/ready"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        break
            time.sleep(0.3)
        yield f"http://127.0.0.1:{port}", psutil.Process(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def _client_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="tokenizer folder (default: the demo model)")
    parser.add_argument("--backend", nargs="+", default=["completions", "chat", "chatllm"])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[64])
    parser.add_argument("--prompts-per-level", type=int, default=4)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--step-ms", type=float, default=10.0, help="synthetic engine step")
    parser.add_argument("--repeat", type=int, default=3, help="runs per cell; the median counts")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.model is None:
        from models.demo import ensure_demo_model

        args.model = str(ensure_demo_model())
    if args.serve is not None:
        return serve_synthetic(args.serve, args.model, args.step_ms / 1000)

    tokenizer = load_tokenizer(args.model)
    log_path = Path(os.environ.get("TMPDIR", "/tmp")) / "frontend_cost_server.log"
    print(f"{'backend':<12}{'c':>4}{'tok/s':>9}{'server us/tok':>15}{'client us/tok':>15}")
    with synthetic_server(args.model, args.step_ms / 1000, log_path) as (base_url, server):
        for backend in args.backend:
            for level in args.concurrency:
                jobs = random_prompts(
                    tokenizer,
                    max(16, args.prompts_per_level * level),
                    args.input_len,
                    args.output_len,
                    seed=level,
                )
                asyncio.run(run(base_url, backend, "synthetic", jobs[:2], 2, num_warmups=0))
                rows = []
                for _ in range(args.repeat):
                    server_before, client_before = _cpu_s(server), _client_cpu_s()
                    records, duration = asyncio.run(
                        run(base_url, backend, "synthetic", jobs, level, num_warmups=0)
                    )
                    summary = summarize(records, duration)
                    tokens = summary["total_output_tokens"] or 1
                    rows.append(
                        (
                            summary["output_throughput"],
                            (_cpu_s(server) - server_before) / tokens * 1e6,
                            (_client_cpu_s() - client_before) / tokens * 1e6,
                        )
                    )
                columns = zip(*rows, strict=True)
                tput, server_us, client_us = (statistics.median(col) for col in columns)
                print(f"{backend:<12}{level:>4}{tput:>9.0f}{server_us:>15.1f}{client_us:>15.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
