"""This machine's memory bandwidth, measured with copies: the ceiling batch-1 decode is held to.

A batch-1 decode step reads every weight once, so tokens/s x bytes read per token can be at
most what memory delivers. Measured on buffers far larger than the last-level cache, best of
several runs: `copy` (STREAM's copy, bytes read + written) and `read` (a sum: bytes read), with
one thread and with all of torch's threads; on a GPU, a device-to-device copy.

    python -m benchmarks.memory_bandwidth [--mib 1024] [--device cuda]
"""

from __future__ import annotations

import argparse
import time
from typing import Any


def measure(mib: int = 1024, device: str = "cpu", repeats: int = 10) -> dict[str, Any]:
    """GB/s (1e9 bytes) of copy and read at 1 and all threads (CPU) or on the device."""
    import torch

    elements = mib * 2**20 // 4
    source = torch.ones(elements, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    all_threads = torch.get_num_threads()
    results: dict[str, Any] = {"device": device, "buffer_mib": mib}
    for threads in [1, all_threads] if device == "cpu" else [None]:
        if threads is not None:
            torch.set_num_threads(threads)
        suffix = "" if threads is None else f"_{threads}_threads"
        copy_s = _best(lambda: target.copy_(source), repeats, device)
        read_s = _best(source.sum, repeats, device)
        results[f"copy_gb_s{suffix}"] = round(2 * source.nbytes / copy_s / 1e9, 2)
        results[f"read_gb_s{suffix}"] = round(source.nbytes / read_s / 1e9, 2)
    torch.set_num_threads(all_threads)
    results["peak_gb_s"] = max(v for k, v in results.items() if k.startswith(("copy", "read")))
    return results


def _best(work: Any, repeats: int, device: str) -> float:
    import torch

    def sync() -> None:
        if device != "cpu":
            torch.cuda.synchronize()

    for _ in range(2):
        work()
    sync()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        sync()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    for key, value in measure(args.mib, args.device).items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
