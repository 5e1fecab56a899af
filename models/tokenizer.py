"""Loads the tokenizer the runtime uses for chat templates and prompt lengths."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(model_path: str | Path) -> Any:
    # transformers is imported here, not at module level: importing it costs seconds.
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_path))
