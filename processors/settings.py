"""Settings every processor understands, declared for the runtime's config to read."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from processors.declaration import JsonKey, at_least, declared, one_of

DTYPES = ("auto", "float16", "half", "bfloat16", "float32", "float")


def _fraction(value: float | None) -> str | None:
    return None if value is None or 0 < value <= 1 else "must be in (0, 1]"


@dataclass(frozen=True)
class EngineSettings:
    # "" stands for the built-in demo model, resolved when serving starts.
    model_path: str = declared(
        "",
        "Hugging Face model folder, GGUF file (or a folder of them), or builtin:smollm2 (the "
        "default) or builtin:demo (tiny, random weights)",
        flag="--model",
        json=["model_path"],
    )
    gguf_file: str | None = declared(
        None, "which GGUF file of a --model folder holding several to serve"
    )
    served_model_name: str | None = declared(
        None, "model name the OpenAI API reports and accepts (default: the folder's name)"
    )
    max_model_len: int | None = declared(
        None, "context window in tokens (default: the model's)", check=at_least(1)
    )
    dtype: str = declared("auto", "weight dtype", check=one_of(*DTYPES))
    max_num_seqs: int | None = declared(
        None, "sequences the engine runs at once", check=at_least(1)
    )
    gpu_memory_utilization: float | None = declared(
        None, "share of GPU memory the engine may use (default: the engine's)", check=_fraction
    )
    tensor_parallel_size: int = declared(1, "GPUs one model is split over", check=at_least(1))
    lora_modules: tuple[str, ...] = declared(
        (),
        "LoRA adapters clients pick by name as `model`: name=path, or vLLM's JSON form",
        metavar="NAME=PATH",
    )
    # Engine-specific pass-through, checked by the processor.
    extra_args: Mapping[str, Any] = declared(
        {},
        "extra engine argument (repeatable); VALUE is parsed as JSON when it can be",
        flag="--engine-arg",
        name="engine_args",
        metavar="KEY=VALUE",
    )
    otlp_traces_endpoint: str | None = declared(
        None,
        "OpenTelemetry collector (OTLP; gRPC, or HTTP with OTEL_EXPORTER_OTLP_TRACES_PROTOCOL="
        "http/protobuf) to send a trace of every request to, the runtime's spans and vLLM's",
    )
    engine_request_stats: bool = declared(
        False,
        "keep vLLM's per-request stats on, for its queue, prefill and decode time and "
        "preemption metrics (costs front-end CPU per token; on with --otlp-traces-endpoint)",
    )

    @property
    def traces_endpoint(self) -> str | None:
        """Where traces go: --otlp-traces-endpoint, or vLLM's own argument given through
        --engine-arg (which then traces the runtime too)."""
        given = self.otlp_traces_endpoint or self.extra_args.get("otlp_traces_endpoint")
        return str(given) if given else None

    @property
    def model_name(self) -> str:
        """The name clients pass back: as given, else the model folder's name."""
        return self.served_model_name or os.path.basename(os.path.normpath(self.model_path))


def _config_text(value: Any) -> str:
    """The platform allows model_config as a JSON object; the processor receives it as text."""
    return value if isinstance(value, str) else json.dumps(value)


@dataclass(frozen=True)
class CustomSettings:
    """Where a user's processor (the platform's Python processor API) is, and how it runs."""

    entry: str | None = declared(
        None,
        "the custom processor's file, e.g. app.py",
        name="processor_entry",
        json=["processor_entry"],
    )
    path: str | None = declared(
        None, "the folder processor_entry is in", name="processor_path", json=["processor_path"]
    )
    mainclass: str | None = declared(
        None,
        "the allspark.BaseProcessor subclass to serve (found when there is one)",
        name="processor_mainclass",
        json=["processor_mainclass"],
    )
    model_entry: str | None = declared(
        None, "model entry handed to the custom processor", json=["model_entry"]
    )
    model_config: str | None = declared(
        None,
        "model config handed to the custom processor",
        json=[JsonKey("model_config", _config_text)],
    )
    worker_threads: int | None = declared(
        None,
        "calls of the custom processor's process() at once (default: the processor's own, 5)",
        json=["metadata.rpc.worker_threads", "rpc.worker_threads", "metadata.workers"],
        check=at_least(1),
    )
