"""LoRA adapters as vLLM's --lora-modules names them, checked before any engine sees them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# The ranks vLLM's --max-lora-rank takes.
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


class AdapterError(ValueError):
    """An adapter that cannot be served; the message says which and why."""


@dataclass(frozen=True)
class AdapterModule:
    name: str
    path: str
    base_model_name: str | None = None


def parse_modules(items: tuple[str, ...]) -> list[AdapterModule]:
    """`name=path` items, or vLLM's JSON form `{"name", "path", "base_model_name"}`."""
    modules = []
    for item in items:
        if item.lstrip().startswith("{"):
            try:
                given = json.loads(item)
                modules.append(
                    AdapterModule(given["name"], given["path"], given.get("base_model_name"))
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise AdapterError(f"--lora-modules {item!r}: not a JSON module ({exc})") from None
            continue
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise AdapterError(f"--lora-modules expects name=path, got {item!r}")
        modules.append(AdapterModule(name, path))
    names = [module.name for module in modules]
    if len(set(names)) != len(names):
        raise AdapterError(f"--lora-modules names an adapter twice: {', '.join(names)}")
    return modules


def adapter_rank(path: str) -> int:
    """The adapter's rank from its adapter_config.json; AdapterError when it is no LoRA
    adapter folder."""
    config_path = Path(path) / "adapter_config.json"
    try:
        config = json.loads(config_path.read_text())
    except OSError:
        raise AdapterError(f"{config_path} is missing: not a PEFT adapter folder") from None
    except ValueError as exc:
        raise AdapterError(f"{config_path} is not valid JSON: {exc}") from None
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"{path} is a {config.get('peft_type')} adapter, not LoRA")
    return int(config.get("r", 8))


def rank_for(ranks: list[int]) -> int:
    """The smallest --max-lora-rank that takes adapters of these ranks."""
    highest = max(ranks, default=LORA_RANKS[0])
    for rank in LORA_RANKS:
        if rank >= highest:
            return rank
    raise AdapterError(f"a LoRA rank of {highest} is beyond what vLLM serves ({LORA_RANKS[-1]})")
