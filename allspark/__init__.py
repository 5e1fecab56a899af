"""`import allspark`: the platform's processor API, provided by llm-runtime."""

from processors.allspark_api import BaseProcessor

__all__ = ["BaseProcessor"]
