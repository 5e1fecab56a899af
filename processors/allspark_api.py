"""The platform's Python processor API, as user code sees it (`allspark.BaseProcessor`).

A user's processor subclasses `BaseProcessor`, loads its model in `initialize()` and answers
each request body in `process(data) -> (bytes, status)`. The runtime constructs it, sets where
the model is, calls `initialize()` once before readiness, and serves `process` on its routes.
`allspark` (the package users import) adds `run()`, which starts the runtime: it lives above
the runtime, this class below it.
"""

from __future__ import annotations

import os
from typing import Any


class BaseProcessor:
    def __init__(
        self,
        worker_threads: int = 5,
        worker_processes: int = 1,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.worker_threads = worker_threads
        self.worker_processes = worker_processes  # accepted; the runtime serves in one process
        self.endpoint = endpoint
        # The runtime overwrites these before initialize(); from the environment when the file
        # is run directly with python, as on the platform.
        self.model_path = os.environ.get("LLM_RUNTIME_MODEL_PATH", "")
        self.model_entry = os.environ.get("LLM_RUNTIME_MODEL_ENTRY", "")
        self.model_config = os.environ.get("LLM_RUNTIME_MODEL_CONFIG", "")

    def initialize(self) -> None:
        """Load the model; called once before the service turns ready."""

    def process(self, data: bytes) -> tuple[bytes, int]:
        """Answer one request body with (response body, status); 0 or 200 mean OK."""
        raise NotImplementedError("a processor must implement process(data)")

    def get_model_path(self) -> bytes:
        """Where the model is mounted; bytes, as on the platform (callers `.decode()` it)."""
        return self.model_path.encode()

    def get_model_config(self) -> str:
        return self.model_config
