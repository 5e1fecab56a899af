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
