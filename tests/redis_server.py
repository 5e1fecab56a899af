"""A real Redis server for tests: Debian's redis-server (or valkey-server), on a free port, in a
temporary folder, with the append-only file fsynced at every write (so a kill -9 loses nothing
Redis acknowledged); stopped after. Without the binary, tests that need it are skipped with the
reason shown (`make install` installs it where apt-get runs as root)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

START_TIMEOUT_S = 30
MISSING = (
    "no redis-server or valkey-server on PATH: the Redis queue tests are skipped "
    "(`make redis`, part of `make test`, installs Debian's redis-server where apt-get runs as root)"
)


def redis_binary() -> str | None:
    return shutil.which("redis-server") or shutil.which("valkey-server")


def require_redis() -> str:
    binary = redis_binary()
    if binary is None:
        pytest.skip(MISSING)
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    def __init__(self, directory: Path, password: str | None = None) -> None:
        self.binary = require_redis()
        self.directory = directory
        self.port = free_port()
        self.password = password
        self.process: subprocess.Popen | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start (or start again, on the same port and data) and wait until it answers."""
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "always",
            "--save", "",
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        log = (self.directory / "redis.log").open("a")
        self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis did not start:\n{self.log()[-2000:]}")
            time.sleep(0.05)  # polling a condition with a deadline
        return self

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                if self.password:
                    sock.sendall(f"AUTH {self.password}\r\n".encode())
                    sock.recv(64)
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """Gone at once, as in a crash: what it acknowledged is in the fsynced AOF."""
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def _signal(self, signum: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signum)
            self.process.wait(timeout=30)

    def log(self) -> str:
        path = self.directory / "redis.log"
        return path.read_text(errors="replace") if path.exists() else ""
