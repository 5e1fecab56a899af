"""The real `llm-runtime serve` in a subprocess, started once per test session.

It is started from a platform service JSON (name, token, port, env, storage mount, the web page)
with no model path, so it serves the built-in demo model on the real vLLM engine.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
import requests

TOKEN = "e2e-secret-token"
SERVICE_NAME = "demo-chat"
READY_TIMEOUT_S = 600
HOLD_TIMEOUT_S = 120  # the longest a test holds a request body back
CALL_LOG = "calls.jsonl"  # in the session server's folder
EOS = "<EOS>"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def runtime_command(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "llm-runtime"), *args]


@dataclass
class Server:
    url: str
    token: str
    process: subprocess.Popen
    log_path: Path
    seconds_to_ready: float

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": self.token, **extra}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def websocket(self, path: str = "/", token: str | None = None):
        """A websocket-client connection to the ChatLLM API (the service token by default)."""
        import websocket

        return websocket.create_connection(
            self.url.replace("http://", "ws://") + path,
            header={"Authorization": self.token if token is None else token},
            timeout=120,
        )


def ask(ws, request: dict) -> list[str]:
    """Send one ChatLLM message; the messages answering it, up to (not including) its <EOS>."""
    ws.send(json.dumps(request))
    answer = []
    while (message := ws.recv()) != EOS:
        answer.append(message)
    return answer


def close_code(ws) -> int:
    """Read up to the server's close frame; its status code."""
    import websocket

    while True:
        opcode, frame = ws.recv_data_frame(True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            return struct.unpack("!H", frame.data[:2])[0]


def wait_until_ready(url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before ready")
        try:
            if requests.get(f"{url}/ready", timeout=2).status_code == 200:
                return
        except (requests.ConnectionError, requests.Timeout):
            pass
        time.sleep(0.5)  # polling a condition with a deadline, not a sleep as synchronisation
    raise TimeoutError(f"the server was not ready within {timeout} s")


def stop(process: subprocess.Popen) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            return process.wait()
    return process.returncode


def spawn_server(workdir: Path, port: int, args: list[str], env: dict[str, str]) -> Server:
    """`llm-runtime serve ARGS` with the given environment, once it is ready."""
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / "server.log"
    started = time.monotonic()
    with log_path.open("w") as log:
        process = subprocess.Popen(
            runtime_command("serve", "--host", "127.0.0.1", *args),
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, process, READY_TIMEOUT_S)
    except Exception:
        stop(process)
        raise RuntimeError(f"server did not start:\n{log_path.read_text()[-5000:]}") from None
    return Server(url, TOKEN, process, log_path, time.monotonic() - started)


def start_server(workdir: Path, cache_dir: Path, *args: str) -> Server:
    """`llm-runtime serve --token TOKEN ARGS` on a free port, once ready: the demo model unless
    ARGS name a model or a custom processor, on vLLM uncompiled unless they name a processor."""
    port = free_port()
    if "--model" not in args and "--processor-entry" not in args:
        args = ("--model", "builtin:demo", *args)
    if "--processor" not in args and "--processor-entry" not in args:
        # vLLM uncompiled: on a CPU compiling adds a minute to each start and nothing to what
        # these servers test (the session servers and the real model's keep vLLM's default).
        args = ("--enforce-eager", *args)
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", "LLM_RUNTIME_CACHE_DIR": str(cache_dir)}
    return spawn_server(workdir, port, ["--port", str(port), "--token", TOKEN, *args], env)


def engine_children(server: Server) -> list[psutil.Process]:
    children = psutil.Process(server.process.pid).children(recursive=True)
    assert children, "vLLM runs its engine core in child processes"
    return children


def engine_core(server: Server) -> psutil.Process:
    return next(
        child
        for child in engine_children(server)
        if "EngineCore" in child.name() + " ".join(child.cmdline())
    )


def server_processes(server: Server) -> list[psutil.Process]:
    """The server's process and its children: its engine, wherever the processor runs it."""
    parent = psutil.Process(server.process.pid)
    return [parent, *parent.children(recursive=True)]


def first_tokens(server: Server) -> float:
    """How many requests the server has had a first token for, from its TTFT histogram."""
    text = requests.get(f"{server.url}/metrics", timeout=10).text
    prefix = "vllm:time_to_first_token_seconds_count"
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith(prefix))


def _thread_ids(process: psutil.Process) -> list[int]:
    with suppress(FileNotFoundError):  # an ended process has none
        return [int(tid) for tid in os.listdir(f"/proc/{process.pid}/task")]
    return []


@contextmanager
def off_the_tests_cpu(processes: list[psutil.Process]) -> Iterator[None]:
    """While the block runs, the test (this thread, and the threads it starts) runs on one CPU
    and the processes on the others, where there are two or more; then both run where they did
    (a thread the processes started meanwhile, where its process's main thread did).

    Measured on a 2-core machine: resumed from SIGSTOP on the test's CPU, vLLM's engine kept the
    test off the CPU for up to 8 s (run-queue waits in /proc/self/schedstat) before it could
    stop the engine again; 5 of 30 tries of the disconnect test failed so beside two busy loops.
    Apart, no slice took 100 ms in 30 tries alone, beside two busy loops or beside four."""
    cpus = os.sched_getaffinity(0)
    if len(cpus) < 2:
        yield
        return
    test_cpu = {max(cpus)}
    before: dict[int, set[int]] = {}
    for process in processes:
        for tid in _thread_ids(process):
            with suppress(ProcessLookupError):  # a thread that has just ended
                before[tid] = os.sched_getaffinity(tid)
                os.sched_setaffinity(tid, cpus - test_cpu)
    os.sched_setaffinity(0, test_cpu)
    try:
        yield
    finally:
        os.sched_setaffinity(0, cpus)
        for process in processes:
            main = before.get(process.pid, cpus)
            for tid in _thread_ids(process):
                with suppress(ProcessLookupError):
                    os.sched_setaffinity(tid, before.get(tid, main))


@contextmanager
def held(processes: list[psutil.Process]) -> Iterator[None]:
    """SIGSTOP on the processes, and SIGCONT on the way out however the block ends; meanwhile
    they run off the test's CPU (see off_the_tests_cpu), so the test can stop them again after
    each slice (run_in_slices)."""
    with off_the_tests_cpu(processes):
        for process in processes:
            process.suspend()
        try:
            yield
        finally:
            for process in reversed(processes):
                process.resume()


@contextmanager
def released(processes: list[psutil.Process]) -> Iterator[None]:
    """Held processes run while the block does, and are held again after it."""
    for process in processes:
        process.resume()
    try:
        yield
    finally:
        for process in processes:
            process.suspend()


def run_in_slices(
    processes: list[psutil.Process], done: Callable[[], bool], timeout: float, what: str
) -> None:
    """Let held processes run 10 ms at a time until `done()`; they are held again after each
    slice, so the engine moves only a step or so past the moment the test waits for."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        with released(processes):
            time.sleep(0.01)  # the slice of work, not a synchronisation


def held_body(body: dict, release: threading.Event) -> Iterator[bytes]:
    """A JSON body sent in two parts, the second once `release` is set: until then the request
    is in flight on the server (its headers are in, so it is admitted and counted) but cannot
    start, however fast the engine and however slow the client's machine."""
    data = json.dumps(body).encode()
    yield data[:1]
    release.wait(HOLD_TIMEOUT_S)
    yield data[1:]


GATED = Path(__file__).resolve().parents[1] / "fixtures" / "processors" / "gated.py"


@dataclass
class Gate:
    """The gated test processor's gate (tests/fixtures/processors/gated.py)."""

    path: Path

    def server_args(self) -> list[str]:
        return ["--processor-entry", str(GATED), "--model-config", str(self.path)]

    def open(self) -> None:
        self.path.touch()


def assert_children_gone(children: list[psutil.Process]) -> None:
    _, alive = psutil.wait_procs(children, timeout=30)
    assert not alive, f"child processes outlived the server: {alive}"


def serve_service_json(workdir: Path, model_cache_dir: Path, *args: str) -> Server:
    """`llm-runtime serve --config service.json ARGS`: the demo model, configured the way the
    platform's deployment file does it (name, token, port, env, a storage mount)."""
    port = free_port()
    service = {
        "name": SERVICE_NAME,
        "token": TOKEN,
        "model_path": "builtin:demo",
        "storage": [{"mount_path": str(model_cache_dir), "empty_dir": {}}],
        "containers": [
            {
                "image": "llm-runtime:e2e",
                "port": port,
                "env": [{"name": "VLLM_CPU_KVCACHE_SPACE", "value": "1"}],
            }
        ],
        "metadata": {
            "instance": 1,
            "enable_webservice": True,
            "call_log": {"path": str(workdir / CALL_LOG)},
        },
    }
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "service.json").write_text(json.dumps(service))
    env = {**os.environ, "LLM_RUNTIME_CACHE_DIR": str(model_cache_dir)}
    env.pop("VLLM_CPU_KVCACHE_SPACE", None)  # the service JSON's env must provide it
    server = spawn_server(workdir, port, ["--config", str(workdir / "service.json"), *args], env)
    print(f"\nserver ready in {server.seconds_to_ready:.1f} s")
    return server


def stop_cleanly(server: Server) -> None:
    """SIGTERM; the server must exit 0 and leave no child process behind."""
    early = server.process.poll()
    assert early is None, f"the server had exited with {early}:\n{server.log()[-3000:]}"
    children = psutil.Process(server.process.pid).children(recursive=True)
    code = stop(server.process)
    assert code == 0, f"the server exited with {code}:\n{server.log()[-3000:]}"
    assert_children_gone(children)
    calls = (server.log_path.parent / CALL_LOG).read_text()  # every call, the 401s included
    assert TOKEN not in calls
    assert all(json.loads(line) for line in calls.splitlines())


@pytest.fixture(scope="session")
def server(model_cache_dir, demo_model_dir, tmp_path_factory) -> Server:
    """The vLLM processor, as most deployments run."""
    server = serve_service_json(
        tmp_path_factory.mktemp("server"), model_cache_dir, "--max-num-seqs", "32"
    )
    engine_children(server)  # vLLM's engine core runs in a child process
    yield server
    stop_cleanly(server)


@pytest.fixture(scope="session")
def transformers_server(model_cache_dir, demo_model_dir, tmp_path_factory) -> Server:
    """Our own transformers/torch engine, configured the same way."""
    server = serve_service_json(
        tmp_path_factory.mktemp("transformers-server"),
        model_cache_dir,
        *("--processor", "transformers", "--max-num-seqs", "16"),
    )
    yield server
    stop_cleanly(server)


@pytest.fixture
def launch(model_cache_dir, demo_model_dir, tmp_path):
    """Start servers with their own flags; each is stopped (and its children gone) after."""
    started: list[Server] = []

    def start(*args: str) -> Server:
        server = start_server(tmp_path / f"server-{len(started)}", model_cache_dir, *args)
        started.append(server)
        return server

    yield start
    for server in started:
        stop(server.process)


@pytest.fixture(scope="session")
def openai_client(server):
    import openai

    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.token, max_retries=0)
