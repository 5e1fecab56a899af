"""Engine settings that every processor understands; the runtime's config builds them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class EngineSettings:
    model_path: str
    served_model_name: str | None = None
    max_model_len: int | None = None
    dtype: str = "auto"
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    tensor_parallel_size: int = 1
    # Engine-specific pass-through (`--engine-arg KEY=VALUE`), checked by the processor.
    extra_args: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model_name(self) -> str:
        """The name clients pass back: as given, else the model folder's name."""
        return self.served_model_name or os.path.basename(os.path.normpath(self.model_path))


@dataclass(frozen=True)
class CustomSettings:
    """Where a user's processor (the platform's Python processor API) is, and how it runs."""

    entry: str | None = None  # the file, e.g. app.py
    path: str | None = None  # the folder the entry is relative to
    mainclass: str | None = None  # the BaseProcessor subclass; found when there is one
    model_entry: str | None = None
    model_config: str | None = None
    worker_threads: int | None = None  # calls of process() at once
