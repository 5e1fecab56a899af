"""llm-runtime: a single-node LLM serving runtime."""

__version__ = "0.1.0"
