"""Facts about the host, checked at start: shared memory, GPUs, and what the deployment asks.

Docker gives a container 64 MiB of /dev/shm unless told otherwise, and NCCL (tensor parallel
across GPUs) then fails or hangs in ways that do not name the cause. So the runtime measures it
at start, grows it when it may, and otherwise says exactly which flag fixes it.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass

from runtime.prepare import PrepareError

log = logging.getLogger(__name__)

GIB = 1 << 30
MIB = 1 << 20
SHM_PATH = "/dev/shm"


@dataclass(frozen=True)
class ShmReport:
    size_bytes: int | None  # None: there is no /dev/shm
    wanted_bytes: int
    action: str

    def describe(self) -> str:
        size = "absent" if self.size_bytes is None else _human(self.size_bytes)
        return (
            f"shared memory {SHM_PATH}: {size}, wanted {_human(self.wanted_bytes)}: {self.action}"
        )


def wanted_shm_bytes(shm_size_gb: float | None, tensor_parallel_size: int) -> int:
    """What is asked for, else 1 GiB per GPU for tensor parallel (NCCL's buffers) or 64 MiB."""
    if shm_size_gb is not None:
        return int(shm_size_gb * GIB)
    return tensor_parallel_size * GIB if tensor_parallel_size > 1 else 64 * MIB


def measure_shm() -> int | None:
    try:
        stats = os.statvfs(SHM_PATH)
    except OSError:
        return None
    return stats.f_blocks * stats.f_frsize


def remount_shm(size_bytes: int) -> bool:
    """Grow /dev/shm in place: works as root with CAP_SYS_ADMIN, fails harmlessly otherwise."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    command = ["mount", "-o", f"remount,size={size_bytes}", SHM_PATH]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    return result.returncode == 0


def ensure_shared_memory(
    wanted: int,
    tensor_parallel_size: int,
    policy: str,
    environ: MutableMapping[str, str],
    measure: Callable[[], int | None] = measure_shm,
    remount: Callable[[int], bool] = remount_shm,
) -> ShmReport:
    size = measure()
    if size is not None and size >= wanted:
        return ShmReport(size, wanted, "enough")
    if size is not None and remount(wanted):
        grown = measure()
        if grown is not None and grown >= wanted:
            return ShmReport(grown, wanted, f"grown from {_human(size)} by remounting it")
    gib = max(1, math.ceil(wanted / GIB))
    advice = (
        f"start the container with --shm-size={gib}g (or --ipc=host); on Kubernetes mount an "
        f"emptyDir with medium: Memory and sizeLimit: {gib}Gi at {SHM_PATH}"
    )
    if tensor_parallel_size <= 1:
        return ShmReport(size, wanted, f"too small, continuing (one GPU needs little): {advice}")
    if policy == "fail":
        raise PrepareError(
            f"{SHM_PATH} is {_human(size or 0)} but tensor parallel over {tensor_parallel_size} "
            f"GPUs wants {_human(wanted)}: {advice}"
        )
    environ["NCCL_SHM_DISABLE"] = "1"
    return ShmReport(
        size,
        wanted,
        "too small: NCCL_SHM_DISABLE=1 set so NCCL avoids it (slower GPU-to-GPU transfers); "
        + advice,
    )


def gpu_facts() -> list[dict] | None:
    """The GPUs NVML sees (name, memory, driver); None where there is no NVML, as on CPU hosts."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:
        return None
    try:
        driver = _text(pynvml.nvmlSystemGetDriverVersion())
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                {
                    "index": index,
                    "name": _text(pynvml.nvmlDeviceGetName(handle)),
                    "memory_total_mib": memory.total // MIB,
                    "memory_used_mib": memory.used // MIB,
                    "driver": driver,
                }
            )
        return gpus
    finally:
        pynvml.nvmlShutdown()


def resource_shortfalls(asked: Mapping[str, float], gpus: list[dict] | None) -> list[str]:
    """What the deployment asks for (metadata.cpu / memory in MB / gpu) that this host lacks."""
    have = {
        "cpu": os.cpu_count() or 0,
        "memory": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 10**6,
        "gpu": len(gpus or ()),
    }
    units = {"cpu": " cores", "memory": " MB", "gpu": " GPUs"}
    return [
        f"{name}: the service asks for {value:g}{units[name]}, this host has {have[name]}"
        for name, value in asked.items()
        if value > have[name]
    ]


def _human(size: int) -> str:
    return f"{size / GIB:.1f} GiB" if size >= GIB else f"{size / MIB:.0f} MiB"


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
