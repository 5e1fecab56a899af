"""The model's own sampling defaults, as `vllm serve` applies them on the OpenAI routes.

`--generation-config auto` (the default) reads them from the model folder's
generation_config.json, `vllm` uses none (vLLM's neutral values), and a folder reads its
generation_config.json instead. The ChatLLM routes keep the platform's documented defaults.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from models.validate import ModelCheckError

log = logging.getLogger(__name__)

# The generation config's keys that are sampling defaults (max_new_tokens is max_tokens).
KEYS = (
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "max_new_tokens",
)


def sampling_defaults(setting: str, model_path: str) -> dict[str, Any]:
    if setting == "vllm":
        return {}
    folder = Path(model_path if setting == "auto" else setting)
    path = folder / "generation_config.json"
    if not path.is_file():
        if setting != "auto":
            raise ModelCheckError(f"--generation-config {setting}: no generation_config.json")
        return {}
    try:
        config = json.loads(path.read_text())
    except ValueError as exc:
        raise ModelCheckError(f"{path} is not valid JSON: {exc}") from None
    defaults = {key: config[key] for key in KEYS if config.get(key) is not None}
    if "max_new_tokens" in defaults:
        defaults["max_tokens"] = defaults.pop("max_new_tokens")
    if defaults:
        log.info("sampling defaults of the OpenAI routes, from %s: %s", path, defaults)
    return defaults
