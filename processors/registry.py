"""Which processors exist, which contract each implements, and how `--processor auto` picks."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from typing import Literal

from processors.base import LlmProcessor, RawProcessor
from processors.settings import CustomSettings, EngineSettings

PROCESSOR_NAMES = ("auto", "vllm", "transformers", "custom")
ProcessorKind = Literal["llm", "raw"]


class ProcessorUnavailableError(Exception):
    pass


def resolve_processor_name(name: str) -> str:
    """The concrete processor for `name`; `auto` is vllm when it can be imported, else our
    transformers engine."""
    if name not in PROCESSOR_NAMES:
        raise ProcessorUnavailableError(
            f"unknown processor {name!r}; choose one of {', '.join(PROCESSOR_NAMES)}"
        )
    if name == "auto":
        name = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
    if name == "transformers" and importlib.util.find_spec("torch") is None:
        raise ProcessorUnavailableError(
            "the transformers processor needs torch: install the 'cpu' or 'gpu' extra"
        )
    if name == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise ProcessorUnavailableError(
                "the vllm processor needs vLLM: install the 'cpu' or 'gpu' extra "
                "(pip install 'llm-runtime[cpu]')"
            )
        return "vllm"
    return name


def processor_kind(name: str) -> ProcessorKind:
    """Which contract the processor implements: "llm" (token ids in, steps out: it loads a
    model folder) or "raw" (request bodies in, bytes out: a user's own code and model)."""
    return "raw" if resolve_processor_name(name) == "custom" else "llm"


def create_llm_processor(name: str, settings: EngineSettings) -> LlmProcessor:
    resolved = resolve_processor_name(name)
    if resolved == "vllm":
        from processors.vllm_processor import VllmProcessor

        return VllmProcessor(settings)
    if resolved == "transformers":
        from processors.transformers_processor import TransformersProcessor

        return TransformersProcessor(settings)
    raise ProcessorUnavailableError(f"the {resolved} processor does not serve a model folder")


def create_raw_processor(settings: EngineSettings, custom: CustomSettings) -> RawProcessor:
    from processors.custom_processor import CustomProcessor

    return CustomProcessor(settings, custom)


def architectures_for(name: str) -> Callable[[], set[str]]:
    """A loader of the architectures a processor can run (importing an engine is slow)."""
    if resolve_processor_name(name) == "vllm":
        from processors.vllm_processor import supported_architectures

        return supported_architectures
    if resolve_processor_name(name) == "transformers":
        from processors.transformers_processor import supported_architectures as transformers_archs

        return transformers_archs
    raise ProcessorUnavailableError(f"no processor named {name!r}")
