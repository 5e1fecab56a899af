"""`import allspark`: the platform's processor API, provided by llm-runtime.

It sits above the runtime: `BaseProcessor.run()`, the last line of a processor file run with
python, starts the runtime with the file's command line.
"""

from __future__ import annotations

import sys

from processors.allspark_api import BaseProcessor as _PlatformProcessor

__all__ = ["BaseProcessor"]


class BaseProcessor(_PlatformProcessor):
    def run(self) -> None:
        """Serve this processor, for files run directly (`python app.py --port 8000`); the
        command line takes `llm-runtime serve`'s flags."""
        from runtime.serve import serve_user_processor

        raise SystemExit(serve_user_processor(self, sys.argv[1:]))
