"""Fixtures shared by every tier: the demo model, built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.demo import ensure_demo_model


@pytest.fixture(scope="session")
def model_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("model-cache")


@pytest.fixture(scope="session")
def demo_model_dir(model_cache_dir: Path) -> Path:
    return ensure_demo_model(model_cache_dir)


@pytest.fixture(scope="session")
def demo_tokenizer(demo_model_dir: Path):
    from models.tokenizer import load_tokenizer

    return load_tokenizer(demo_model_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` run where torch sees a CUDA GPU (the lent GPU machine), else skip."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory):
    """One Redis for the session (tests keep apart by service name); skipped, with the reason
    shown, where no redis-server is installed."""
    from tests.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


def pytest_report_header(config: pytest.Config) -> str:
    """Say at the top of every run whether the Redis queue tests can run here."""
    from tests.redis_server import MISSING, redis_binary

    binary = redis_binary()
    return f"redis for the queue tests: {binary}" if binary else MISSING
