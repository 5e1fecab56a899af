"""The asynchronous queue with the platform's own SDK (eas-prediction) against the real `serve`
command: one runtime on SQLite, two runtimes sharing a real Redis server, one of them killed
mid-way, and Redis itself killed and restarted under load.

The runtimes serve a custom processor (tests/fixtures/processors/queued.py) that starts in a
second and holds every request until the test opens its gate, so the engine is never the
bottleneck and the test decides when work starts. The SDK runs in a subprocess (its generated
code needs protobuf's pure-Python mode, which must be chosen before protobuf is imported).
Every wait is bounded; all traffic stays on loopback.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import requests

from tests.e2e.conftest import TOKEN, Server, free_port, spawn_server, stop
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples/async_queue/put_and_watch.py"
QUEUED = ROOT / "tests/fixtures/processors/queued.py"
SERVICE = "replicated"
DEADLINE_S = 180

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("eas_prediction") is None,
    reason="the platform's SDK is not installed (`make install` installs eas-prediction)",
)


def serve(workdir: Path, gate: Path, *args: str, delay: float = 0.05) -> Server:
    """`llm-runtime serve --async` over the gated processor, 4 requests at a time."""
    port = free_port()
    config = json.dumps({"gate": str(gate), "delay": delay})
    flags = ["--port", str(port), "--token", TOKEN, "--async", "--service-name", SERVICE]
    flags += ["--processor-entry", str(QUEUED), "--model-config", config, "--worker-threads", "4"]
    return spawn_server(workdir, port, [*flags, *args], dict(os.environ))


class Example:
    """The SDK example (put, then watch the sink with auto-commit) in a subprocess; its JSON
    lines as they come."""

    def __init__(self, server: Server, count: int, priority_every: int = 0) -> None:
        endpoint = server.url.removeprefix("http://")
        command = [sys.executable, str(EXAMPLE), endpoint, SERVICE, "--token", TOKEN]
        command += ["--count", str(count), "--priority-every", str(priority_every)]
        env = {**os.environ, "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION": "python"}
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        self.puts: list[dict] = []
        self.results: list[dict] = []

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def read_until(self, done, deadline: float) -> None:
        """Collect lines until `done(self)` holds or the example ends."""
        while not done(self):
            try:
                line = self._lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"the example stalled: {self.summary()}") from None
            if line is None:
                return
            record = json.loads(line)
            (self.puts if "put" in record else self.results).append(record)

    def finish(self, deadline: float) -> int:
        self.read_until(lambda _: False, deadline)
        try:
            return self.process.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            if self.process.poll() is None:
                self.process.kill()

    def summary(self) -> str:
        error = self.process.stderr.read() if self.process.poll() is not None else ""
        return f"{len(self.puts)} put, {len(self.results)} results; {error[-2000:]}"


def sink_length(server: Server) -> str:
    response = requests.get(
        f"{server.url}/api/predict/{SERVICE}/sink",
        params={"_attrs_": "true"},
        headers=server.headers(),
        timeout=10,
    )
    return response.json()["stream.length"]


def eventually_empty(server: Server) -> None:
    deadline = time.monotonic() + 30
    while sink_length(server) != "0":
        assert time.monotonic() < deadline, "auto-committed results stayed in the sink"
        time.sleep(0.1)  # polling a condition with a deadline


def test_the_sdk_example_runs_against_one_runtime_on_sqlite(tmp_path):
    gate = tmp_path / "gate"
    gate.touch()
    server = serve(tmp_path / "runtime", gate, "--queue-path", str(tmp_path / "q.sqlite3"))
    try:
        example = Example(server, 20, priority_every=5)
        code = example.finish(time.monotonic() + DEADLINE_S)
        assert code == 0, example.summary()
        eventually_empty(server)
    finally:
        assert stop(server.process) == 0, server.log()[-3000:]
    put_ids = {put["requestId"] for put in example.puts}
    assert len(put_ids) == 20
    assert {result["tags"]["requestId"] for result in example.results} == put_ids
    assert {result["tags"]["lastCode"] for result in example.results} == {"200"}
    indexes = [result["result"] for result in example.results]
    assert indexes == sorted(indexes)  # the sink's order, pushed once each


def test_two_runtimes_on_redis_lose_nothing_when_one_is_killed_mid_way(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    gate = tmp_path / "gate"
    queue_args = ["--queue-url", redis.url, "--queue-visibility-timeout", "3"]
    doomed = serve(tmp_path / "doomed", gate, *queue_args)
    survivor = serve(tmp_path / "survivor", gate, *queue_args)
    deadline = time.monotonic() + DEADLINE_S
    try:
        # 200 requests through the survivor, every 4th with priority; both runtimes take them.
        example = Example(survivor, 200, priority_every=4)
        example.read_until(lambda e: len(e.puts) == 200, deadline)
        gate.touch()
        example.read_until(lambda e: len(e.results) >= 100, deadline)
        os.killpg(doomed.process.pid, signal.SIGKILL)  # mid-inference: 4 requests in its hands
        assert doomed.process.wait(timeout=30) == -signal.SIGKILL
        assert example.finish(deadline) == 0, example.summary()
        eventually_empty(survivor)
        assert stop(survivor.process) == 0, survivor.log()[-3000:]
    finally:
        for server in (doomed, survivor):
            stop(server.process)
        redis.stop()

    firsts = [result for result in example.results if "duplicate" not in result["tags"]]
    put_ids = [put["requestId"] for put in example.puts]
    assert sorted(result["tags"]["requestId"] for result in firsts) == sorted(put_ids)
    for duplicate in (result for result in example.results if result not in firsts):
        assert duplicate["tags"]["duplicate"] == "true"
    answered_by = {json.loads(result["data"])["pid"] for result in firsts}
    assert answered_by == {doomed.process.pid, survivor.process.pid}  # both took work
    reruns = [result for result in firsts if int(result["tags"].get("attempt", "1")) > 1]
    assert reruns, "the killed runtime's requests were not run again"
    assert {json.loads(result["data"])["pid"] for result in reruns} == {survivor.process.pid}
    # Priority first: beyond the 8 taken before the gate opened and the 8 running when the
    # last priority request was taken, no normal request finished before a priority one.
    priority = {put["requestId"] for put in example.puts if put["priority"]}
    order = [result["tags"]["requestId"] for result in firsts]
    last_priority = max(order.index(request_id) for request_id in priority)
    assert last_priority < len(priority) + 16, f"priority results end at {last_priority}"
    print(f"\n{len(reruns)} re-run after the kill, {len(example.results) - len(firsts)} duplicates")


def test_a_runtime_stopped_with_sigterm_hands_its_requests_to_another_at_once(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    gate = tmp_path / "gate"
    # A visibility timeout longer than the test: only a hand-back gets the requests run.
    queue_args = ["--queue-url", redis.url, "--queue-visibility-timeout", "600"]
    leaving = serve(tmp_path / "leaving", gate, *queue_args, "--grace-period", "1")
    staying = serve(tmp_path / "staying", gate, *queue_args)
    url = f"{staying.url}/api/predict/{SERVICE}"
    try:
        puts = [
            requests.post(url, data=b"x", headers=staying.headers(), timeout=30) for _ in range(8)
        ]
        ids = [response.headers["X-Eas-Queueservice-Request-Id"] for response in puts]
        wait_for(lambda: all(running(staying, put.text) for put in puts), "all 8 held")
        leaving.process.send_signal(signal.SIGTERM)  # its 4 are cut at the grace's end ...
        wait_for(lambda: leaving.log().count("handed back to the queue") == 4, "hand-backs")
        gate.touch()  # ... (its processor's threads wait for the gate too, then it exits)
        assert leaving.process.wait(timeout=60) == 0, leaving.log()[-3000:]
        frames = [
            requests.get(
                f"{url}/sink",
                params={"requestId": request_id, "_timeout_": "30s"},
                headers=staying.headers(),
                timeout=60,
            ).json()[0]
            for request_id in ids
        ]
    finally:
        for server in (leaving, staying):
            stop(server.process)
        redis.stop()
    assert {json.loads(base64.b64decode(frame["data"]))["pid"] for frame in frames} == {
        staying.process.pid
    }
    assert not [frame for frame in frames if "attempt" in frame["tags"]]  # cut, not lost


def running(server: Server, index: str) -> bool:
    """The SDK's search: a request a runtime holds names its consumer."""
    response = requests.get(
        f"{server.url}/api/predict/{SERVICE}",
        params={"_search_": "true", "_index_": index},
        headers=server.headers(),
        timeout=10,
    )
    return "ConsumerId" in response.json()


def test_redis_restarted_under_load_loses_no_acknowledged_request(tmp_path):
    redis = RedisServer(tmp_path / "redis").start()
    gate = tmp_path / "gate"
    gate.touch()
    server = serve(tmp_path / "runtime", gate, "--queue-url", redis.url, delay=0.01)
    url = f"{server.url}/api/predict/{SERVICE}"
    accepted: list[str] = []
    refused: list[requests.Response] = []
    stopping = threading.Event()

    def put_continuously() -> None:
        session = requests.Session()
        while not stopping.is_set():
            response = session.post(url, data=b"load", headers=server.headers(), timeout=30)
            if response.status_code == 200:
                accepted.append(response.headers["X-Eas-Queueservice-Request-Id"])
            else:
                refused.append(response)

    putter = threading.Thread(target=put_continuously, daemon=True)
    putter.start()
    try:
        wait_for(lambda: len(accepted) >= 50, "puts before the crash")
        redis.kill()  # Redis acknowledged each accepted put after its AOF fsync
        wait_for(lambda: len(refused) >= 3, "503s while Redis is down")
        redis.start()
        before = len(accepted)
        wait_for(lambda: len(accepted) >= before + 50, "puts after the restart")
        stopping.set()
        putter.join(timeout=60)
        missing = set(accepted)
        deadline = time.monotonic() + DEADLINE_S
        while missing and time.monotonic() < deadline:
            for request_id in list(missing):
                response = requests.get(
                    f"{url}/sink",
                    params={"requestId": request_id},
                    headers=server.headers(),
                    timeout=30,
                )
                if response.status_code == 200:
                    missing.discard(request_id)
        assert not missing, f"{len(missing)} acknowledged requests have no result"
    finally:
        stopping.set()
        code = stop(server.process)
        redis.stop()
    assert code == 0, server.log()[-3000:]
    assert {response.status_code for response in refused} == {503}
    assert all(response.headers.get("Retry-After") for response in refused)
    assert "unreachable" in refused[0].json()["error"]["message"]


def test_readiness_waits_for_redis_and_says_why(tmp_path):
    port, redis_port = free_port(), free_port()
    redis = RedisServer(tmp_path / "redis")
    redis.port = redis_port
    gate = tmp_path / "gate"
    flags = ["--port", str(port), "--async", "--service-name", SERVICE, "--queue-url", redis.url]
    flags += ["--processor-entry", str(QUEUED), "--model-config", json.dumps({"gate": str(gate)})]
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "llm-runtime"), "serve", "--host", "127.0.0.1", *flags],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:

        def waiting() -> bool:
            try:
                return "unreachable" in requests.get(f"{base}/ready", timeout=5).text
            except requests.ConnectionError:
                return False

        wait_for(waiting, "readiness naming the unreachable Redis")
        ready = requests.get(f"{base}/ready", timeout=5)
        assert ready.status_code == 503
        assert ready.json()["phase"] == "waiting for the queue"
        assert requests.get(f"{base}/health", timeout=5).status_code == 200
        redis.start()
        wait_for(lambda: requests.get(f"{base}/ready", timeout=5).status_code == 200, "ready")
    finally:
        assert stop(process) == 0, (tmp_path / "server.log").read_text()[-3000:]
        redis.stop()


def wait_for(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.05)  # polling a condition with a deadline
