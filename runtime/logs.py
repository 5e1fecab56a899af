"""The runtime's own logging set-up."""

from __future__ import annotations

import logging


def setup_logging() -> None:
    # INFO until the config is read; serving then applies the configured level.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
