"""What the asynchronous queue costs an item, with an echo processor so the engine costs nothing.

For each store (SQLite; Redis with one runtime and with two sharing it), with the runtimes
started here (`--async`, examples/custom_processors/echo/app.py) and Redis too (a
redis-server in a temporary folder, its append-only file fsynced at every write, as durable as
the SQLite file's fsynced commits):

  enqueue      the round trip of one POST, one at a time (p50, p99)
  life, watch  put, and its result pushed by a watch of the sink (on the other runtime when
               there are two), as the platform's SDK consumes results; one item at a time:
               put to result in hand (p50, p99)
  life, GET    the same with a long-polling GET of the result instead of the watch
  overhead     a life's p50 minus the p50 of the same body answered synchronously (a runtime
               without --async): what the queue adds to an item's life
  items/s      N items put by C concurrent clients (across the runtimes), their results pushed
               by one watch of the sink (auto-commit): N over first put to last result

    python -m benchmarks.queue_overhead [--items 2000] [--concurrency 32] [--sequential 300]

Run it alone on the machine: the figures are latencies of a few milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp

from benchmarks.servers import free_port, stop

ROOT = Path(__file__).resolve().parents[1]
ECHO = ROOT / "examples/custom_processors/echo/app.py"
SERVICE = "bench"
BODY = b'{"prompt": "echo me"}'
GOAL_MS = 5.0


def runtime_command(port: int, *args: str) -> list[str]:
    script = Path(sys.executable).parent / "llm-runtime"
    runner = [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]
    flags = ["--host", "127.0.0.1", "--port", str(port), "--service-name", SERVICE]
    flags += ["--processor-entry", str(ECHO), "--worker-threads", "8", "--log-level", "warning"]
    return [*runner, "serve", *flags, *args]


@contextlib.contextmanager
def runtimes(count: int, workdir: Path, *args: str) -> Iterator[list[str]]:
    """`count` runtimes with these flags; their base URLs once ready."""
    processes, urls = [], []
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for number in range(count):
            port = free_port()
            log = (workdir / f"runtime-{number}.log").open("w")
            processes.append(
                subprocess.Popen(
                    runtime_command(port, *args),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
            urls.append(f"http://127.0.0.1:{port}")
        for process, url in zip(processes, urls, strict=True):
            wait_until(lambda url=url: _answers(url + "/ready"), process, 120)
        yield urls
    finally:
        for process in processes:
            stop(process)


@contextlib.contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    binary = shutil.which("redis-server") or shutil.which("valkey-server")
    if binary is None:
        raise SystemExit("no redis-server or valkey-server on PATH (make redis installs it)")
    port = free_port()
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    args += ["--appendonly", "yes", "--appendfsync", "always", "--save", ""]
    log = (workdir / "redis.log").open("w")
    process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: _redis_answers(port), process, 30)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


def wait_until(condition, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{process.args[0]} did not start")
        time.sleep(0.1)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


async def sequential_requests(url: str, count: int) -> list[float]:
    """Round trips of `count` POSTs one after another, in ms (the first few warm up)."""
    times = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count + 10):
            started = time.perf_counter()
            async with session.post(f"{url}/api/predict/{SERVICE}", data=BODY) as response:
                await response.read()
                assert response.status == 200, response.status
            times.append((time.perf_counter() - started) * 1000)
    return times[10:]


async def item_lives(urls: list[str], count: int) -> list[float]:
    """Put, then GET the result (long poll, from the next runtime): put to result, in ms."""
    lives = []
    async with aiohttp.ClientSession() as session:
        for number in range(count + 10):
            put_url, get_url = urls[number % len(urls)], urls[(number + 1) % len(urls)]
            started = time.perf_counter()
            async with session.post(f"{put_url}/api/predict/{SERVICE}", data=BODY) as response:
                request_id = response.headers["X-Eas-Queueservice-Request-Id"]
            params = {"requestId": request_id, "_timeout_": "10s"}
            async with session.get(f"{get_url}/api/predict/{SERVICE}/sink", params=params) as got:
                await got.read()
                assert got.status == 200, got.status
            lives.append((time.perf_counter() - started) * 1000)
    return lives[10:]


async def watched_lives(urls: list[str], count: int) -> list[float]:
    """Put, then the result pushed by a watch of the sink (on the next runtime): in ms."""
    lives = []
    async with aiohttp.ClientSession() as session:
        watch_url = f"{urls[-1]}/api/predict/{SERVICE}/sink"
        params = {"_watch_": "true", "_index_": "0", "_window_": "0", "_auto_commit_": "true"}
        async with session.ws_connect(watch_url, params=params) as watch:
            for _ in range(count + 10):
                started = time.perf_counter()
                async with session.post(f"{urls[0]}/api/predict/{SERVICE}", data=BODY) as put:
                    assert put.status == 200, put.status
                message = await asyncio.wait_for(watch.receive(), 30)
                assert message.type == aiohttp.WSMsgType.BINARY, message
                lives.append((time.perf_counter() - started) * 1000)
    return lives[10:]


async def throughput(urls: list[str], items: int, concurrency: int) -> float:
    """Items per second from the first put to the last result pushed by a watch of the sink."""
    async with aiohttp.ClientSession() as session:
        watch_url = f"{urls[0]}/api/predict/{SERVICE}/sink"
        params = {"_watch_": "true", "_index_": "0", "_window_": "0", "_auto_commit_": "true"}
        async with session.ws_connect(watch_url, params=params) as watch:
            received = 0
            next_item = iter(range(items))

            async def putter() -> None:
                for number in next_item:
                    url = urls[number % len(urls)]
                    async with session.post(f"{url}/api/predict/{SERVICE}", data=BODY) as put:
                        assert put.status == 200, put.status

            started = time.perf_counter()
            putters = [asyncio.create_task(putter()) for _ in range(concurrency)]
            while received < items:
                message = await asyncio.wait_for(watch.receive(), 60)
                assert message.type == aiohttp.WSMsgType.BINARY, message
                received += 1
            elapsed = time.perf_counter() - started
            await asyncio.gather(*putters)
    return items / elapsed


def measure(urls: list[str], args: argparse.Namespace) -> dict[str, float]:
    enqueue = asyncio.run(sequential_requests(urls[0], args.sequential))
    watched = asyncio.run(watched_lives(urls, args.sequential))
    polled = asyncio.run(item_lives(urls, args.sequential))
    rate = asyncio.run(throughput(urls, args.items, args.concurrency))
    return {
        "enqueue_p50": statistics.median(enqueue),
        "enqueue_p99": percentile(enqueue, 0.99),
        "watch_p50": statistics.median(watched),
        "watch_p99": percentile(watched, 0.99),
        "get_p50": statistics.median(polled),
        "get_p99": percentile(polled, 0.99),
        "items_per_s": rate,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=2000, help="items of the throughput run")
    parser.add_argument("--concurrency", type=int, default=32, help="clients putting at once")
    parser.add_argument("--sequential", type=int, default=300, help="items timed one by one")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="queue-overhead-"))
    load = os.getloadavg()[0]
    print(f"load average before: {load:.2f}; {os.cpu_count()} CPUs; logs in {workdir}")

    with runtimes(1, workdir / "sync") as (url,):
        synchronous = asyncio.run(sequential_requests(url, args.sequential))
    sync_p50 = statistics.median(synchronous)
    print(f"synchronous echo, no queue: p50 {sync_p50:.2f} ms, p99 "
          f"{percentile(synchronous, 0.99):.2f} ms\n")  # fmt: skip

    rows = []
    sqlite_dir = workdir / "sqlite"
    queue_path = ["--async", "--queue-path", str(sqlite_dir / "q.sqlite3")]
    with runtimes(1, sqlite_dir, *queue_path) as urls:
        rows.append(("SQLite", 1, measure(urls, args)))
    for count in (1, 2):
        redis_dir = workdir / f"redis-{count}"
        redis_dir.mkdir(parents=True)
        with (
            redis_server(redis_dir) as redis_url,
            runtimes(count, redis_dir, "--async", "--queue-url", redis_url) as urls,
        ):
            rows.append(("Redis", count, measure(urls, args)))

    print(
        f"{'store':7} {'runtimes':>8} | {'enqueue p50':>11} {'p99':>6} | {'life, watch p50':>15} "
        f"{'p99':>6} {'overhead':>8} | {'life, GET p50':>13} {'p99':>6} {'overhead':>8} | "
        f"{'items/s':>7}"
    )
    for store, count, figures in rows:
        cells = [f"{store:7} {count:>8}"]
        cells.append(f"{figures['enqueue_p50']:>8.2f} ms {figures['enqueue_p99']:>6.2f}")
        for life, width in (("watch", 12), ("get", 10)):
            overhead = figures[f"{life}_p50"] - sync_p50
            cells.append(
                f"{figures[f'{life}_p50']:>{width}.2f} ms {figures[f'{life}_p99']:>6.2f} "
                f"{overhead:>5.2f} ms"
            )
        cells.append(f"{figures['items_per_s']:>7.0f}")
        print(" | ".join(cells))
    print(f"\noverhead: a life's p50 minus the synchronous p50 (goal: <= {GOAL_MS:g} ms); ms")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
