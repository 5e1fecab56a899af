"""The runtime's cache directory: built models and the embedded queue live under it."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """LLM_RUNTIME_CACHE_DIR, else ~/.cache/llm-runtime."""
    root = os.environ.get("LLM_RUNTIME_CACHE_DIR") or Path.home() / ".cache" / "llm-runtime"
    return Path(root)
