"""Shared-memory decisions, resource checks, and warm-up files."""

from __future__ import annotations

import asyncio
import json

import pytest

from runtime.host import GIB, MIB, ensure_shared_memory, resource_shortfalls, wanted_shm_bytes
from runtime.phase import Phase
from runtime.prepare import PrepareError
from runtime.warmup import read_warm_up, run_warm_up
from tests.unit.conftest import ServedClient, loaded, served_app


def test_wanted_size_comes_from_config_or_tensor_parallel():
    assert wanted_shm_bytes(4, 1) == 4 * GIB
    assert wanted_shm_bytes(None, 4) == 4 * GIB
    assert wanted_shm_bytes(None, 1) == 64 * MIB


def test_enough_shared_memory_needs_no_action():
    report = ensure_shared_memory(GIB, 2, "fail", {}, measure=lambda: 2 * GIB)
    assert report.action == "enough"


def test_too_small_is_grown_by_remount_when_permitted():
    sizes = iter([64 * MIB, 2 * GIB])
    report = ensure_shared_memory(
        GIB, 2, "fail", {}, measure=lambda: next(sizes), remount=lambda size: size == GIB
    )
    assert report.size_bytes == 2 * GIB
    assert "grown from 64 MiB" in report.action


def test_too_small_for_tensor_parallel_fails_or_falls_back_as_configured():
    environ: dict[str, str] = {}
    with pytest.raises(PrepareError, match=r"--shm-size=2g .*--ipc=host.*medium: Memory"):
        ensure_shared_memory(2 * GIB, 2, "fail", environ, lambda: 64 * MIB, lambda s: False)
    report = ensure_shared_memory(
        2 * GIB, 2, "fallback", environ, lambda: 64 * MIB, lambda s: False
    )
    assert environ == {"NCCL_SHM_DISABLE": "1"}
    assert "NCCL_SHM_DISABLE=1" in report.action
    assert "--shm-size=2g" in report.describe()


def test_one_gpu_only_warns():
    environ: dict[str, str] = {}
    report = ensure_shared_memory(GIB, 1, "fail", environ, lambda: 64 * MIB, lambda s: False)
    assert "too small, continuing" in report.action
    assert environ == {}


def test_resource_shortfalls_name_what_is_missing():
    shortfalls = resource_shortfalls({"cpu": 4096, "gpu": 1, "memory": 1}, gpus=None)
    assert len(shortfalls) == 2
    assert any("cpu: the service asks for 4096 cores" in s for s in shortfalls)
    assert any("gpu: the service asks for 1 GPUs, this host has 0" in s for s in shortfalls)


def write_lines(tmp_path, *items) -> str:
    path = tmp_path / "warm.jsonl"
    path.write_text("\n".join(json.dumps(i) if not isinstance(i, str) else i for i in items))
    return str(path)


def test_warm_up_lines_are_routed_by_shape(tmp_path):
    path = write_lines(
        tmp_path,
        {"messages": [{"role": "user", "content": "hi"}]},
        {"prompt": "x", "max_new_tokens": 2},
        {"prompt": "x", "max_tokens": 2},
        {"path": "/v1/completions", "body": {"prompt": "y"}},
        "",
    )
    routes = [route for route, _ in read_warm_up(path, "svc")]
    assert routes == [
        "/v1/chat/completions",
        "/api/predict/svc",
        "/v1/completions",
        "/v1/completions",
    ]


@pytest.mark.parametrize(
    ("content", "needle"),
    [("{bad", "line 1: not JSON"), ("[1]", "expected a JSON object"), ("", "holds no requests")],
)
def test_bad_warm_up_files_are_start_errors(tmp_path, content, needle):
    with pytest.raises(PrepareError, match=needle):
        read_warm_up(write_lines(tmp_path, content), "svc")
    with pytest.raises(PrepareError, match="cannot read"):
        read_warm_up(tmp_path / "absent.jsonl", "svc")


def warming_up(fake, **settings):
    """An app loaded and warming up, as the lifecycle has it before readiness; its answers."""
    served, service = loaded(served_app(fake, ready=False, **settings), Phase.WARMING_UP)
    return served, served.answers(service)


def test_warm_up_requests_are_answered_while_clients_still_get_503(fake, tmp_path):
    served, answers = warming_up(fake, token="tok")
    lines = [
        {"prompt": "x", "max_new_tokens": 3},
        {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stream": True},
        {"prompt": "y", "max_tokens": 2},
    ]
    asyncio.run(run_warm_up(answers, read_warm_up(write_lines(tmp_path, *lines), "llm")))
    assert [request.sampling.max_tokens for request in fake.requests] == [3, 2, 2]
    outsider = ServedClient(served).post(
        "/", json={"prompt": "x"}, headers={"Authorization": "tok"}
    )
    assert outsider.status_code == 503
    assert "warming up" in outsider.text


def test_a_failing_warm_up_request_is_a_start_error(fake, tmp_path):
    _, answers = warming_up(fake)
    requests = read_warm_up(write_lines(tmp_path, {"prompt": "x", "temperature": -2}), "llm")
    with pytest.raises(PrepareError, match="warm-up request 1 .* failed with 400.*temperature"):
        asyncio.run(run_warm_up(answers, requests))
    elsewhere = read_warm_up(write_lines(tmp_path, {"path": "/nowhere", "body": {}}), "llm")
    with pytest.raises(PrepareError, match="/nowhere is not served here"):
        asyncio.run(run_warm_up(answers, elsewhere))
