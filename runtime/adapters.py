"""The LoRA adapters clients name as `model`: those of --lora-modules, loaded at start, and,
with --allow-runtime-lora-updating, those loaded and unloaded at run time."""

from __future__ import annotations

import itertools
import logging
from typing import Any

from processors.adapters import AdapterError, adapter_rank, parse_modules
from processors.base import Adapter, LlmProcessor, ProcessorInputError
from runtime.errors import ApiError, ErrorKind, bad_request

log = logging.getLogger(__name__)


class AdapterRegistry:
    def __init__(self, processor: LlmProcessor, base_model: str, runtime_updates: bool) -> None:
        self._processor = processor
        self.base_model = base_model
        self.runtime_updates = runtime_updates
        self._adapters: dict[str, Adapter] = {}
        self._parents: dict[str, str] = {}
        self._ids = itertools.count(1)  # vLLM tells adapters apart by id: never reused

    async def load_configured(self, modules: tuple[str, ...]) -> None:
        """The adapters of --lora-modules, loaded now so a bad one stops the start."""
        served = self._processor.info.max_adapter_rank
        if self.runtime_updates and served is None:
            raise ValueError(
                "--allow-runtime-lora-updating needs LoRA in the engine: --enable-lora or "
                "--lora-modules (the vllm processor)"
            )
        for module in parse_modules(modules):
            await self._add(module.name, module.path, module.base_model_name)

    async def _add(self, name: str, path: str, parent: str | None = None) -> Adapter:
        if name == self.base_model or name in self._adapters:
            raise AdapterError(f"a model named {name!r} is served already")
        rank, highest = adapter_rank(path), self._processor.info.max_adapter_rank
        if highest is None:
            raise AdapterError("this engine serves no LoRA adapters (--enable-lora)")
        if rank > highest:
            raise AdapterError(
                f"LoRA adapter {name} has rank {rank}, above --max-lora-rank {highest}"
            )
        adapter = Adapter(name, path, next(self._ids))
        try:
            await self._processor.load_adapter(adapter)
        except ProcessorInputError as exc:
            raise AdapterError(str(exc)) from None
        self._adapters[name] = adapter
        self._parents[name] = parent or self.base_model
        log.info("LoRA adapter %s loaded from %s (rank %d)", name, path, rank)
        return adapter

    def resolve(self, model: str | None) -> tuple[str, Adapter | None]:
        """The name a request's `model` serves, and its adapter (None: the base model)."""
        if model is None or model == self.base_model:
            return self.base_model, None
        adapter = self._adapters.get(model)
        if adapter is None:
            served = ", ".join([self.base_model, *self._adapters])
            raise ApiError(
                ErrorKind.NOT_FOUND,
                f"The model `{model}` does not exist; this server serves {served}",
                param="model",
            )
        return model, adapter

    def listed(self) -> list[dict[str, Any]]:
        """The adapters as /v1/models lists them, with their parent."""
        return [
            {"id": name, "root": adapter.path, "parent": self._parents[name]}
            for name, adapter in self._adapters.items()
        ]

    async def load(self, name: str, path: str) -> None:
        try:
            await self._add(name, path)
        except AdapterError as exc:
            raise bad_request(str(exc), param="lora_path") from None

    def unload(self, name: str) -> None:
        """Requests can no longer name it; the engine drops it from memory when it needs room."""
        if self._adapters.pop(name, None) is None:
            raise ApiError(ErrorKind.NOT_FOUND, f"no LoRA adapter {name!r} is loaded")
        self._parents.pop(name, None)
        log.info("LoRA adapter %s unloaded", name)
