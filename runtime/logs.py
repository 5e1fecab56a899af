"""The runtime's logging: one stream (stderr), one format (text or JSON) for the runtime, the
HTTP access log and vLLM alike, so a log shipper reads every line the same way; stdout stays
free for call records (--call-log /dev/stdout)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# vLLM reads its logging set-up from this file in every process it starts (its engine core and
# workers too), so its lines come out like the runtime's.
VLLM_CONFIG_ENV = "VLLM_LOGGING_CONFIG_PATH"


def setup_logging() -> None:
    """INFO until the config is read; serving then applies the configured level and format.
    The format given in the environment (as deployments give it) applies from the first line,
    so that even an error in the configuration reaches a log shipper whole."""
    logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)
    if os.environ.get("LLM_RUNTIME_LOG_FORMAT", "").strip().lower() == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(make_formatter("json"))


def json_formatter_settings() -> dict[str, Any]:
    """python-json-logger's JsonFormatter arguments: one JSON object per line with `time`
    (ISO 8601, UTC), `level`, `logger` and `message`, and a record's extra fields (uvicorn's
    copy of its message with terminal colours left out)."""
    from pythonjsonlogger.core import RESERVED_ATTRS

    return {
        "fmt": "{levelname}{name}{message}",
        "style": "{",
        "rename_fields": {"levelname": "level", "name": "logger"},
        "timestamp": "time",
        "reserved_attrs": [*RESERVED_ATTRS, "color_message", "taskName"],
    }


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        from pythonjsonlogger.json import JsonFormatter

        return JsonFormatter(**json_formatter_settings())
    return logging.Formatter(TEXT_FORMAT)


def configure_logging(log_format: str, level: str, cache: Path | None = None) -> None:
    """Apply the configured format and level to the runtime's handlers, give the access log
    fields of its own, and hand vLLM the same set-up (written under `cache`) unless the user
    configured vLLM's logging themselves."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    logging.captureWarnings(True)  # Python's warnings as log lines of this format, not raw text
    formatter = make_formatter(log_format)
    for handler in root.handlers:
        handler.setFormatter(formatter)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, AccessFields) for f in access.filters):
        access.addFilter(AccessFields())
    if cache is not None and not _vllm_logging_set_by_user(os.environ):
        path = write_vllm_logging_config(cache, log_format, level)
        if path is not None:
            os.environ[VLLM_CONFIG_ENV] = str(path)


class AccessFields(logging.Filter):
    """uvicorn's access line (`client - "METHOD path HTTP/v" status`) with its parts as fields
    too, which the JSON format shows as keys."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5:
            record.client, record.method, record.path, _, record.status = args
        return True


def vllm_logging_config(log_format: str, level: str) -> dict[str, Any]:
    """A logging.config.dictConfig document for vLLM's `vllm` logger: stderr, our format."""
    if log_format == "json":
        formatter: dict[str, Any] = {
            "()": "pythonjsonlogger.json.JsonFormatter",
            **json_formatter_settings(),
        }
    else:
        formatter = {"format": TEXT_FORMAT}
    return {
        "version": 1,
        # vLLM applies it inside the runtime's process too: the runtime's loggers stay.
        "disable_existing_loggers": False,
        "formatters": {"runtime": formatter},
        "handlers": {
            "runtime": {
                "class": "logging.StreamHandler",
                "formatter": "runtime",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {"vllm": {"handlers": ["runtime"], "level": level.upper(), "propagate": False}},
    }


def write_vllm_logging_config(cache: Path, log_format: str, level: str) -> Path | None:
    path = cache / "logging" / f"vllm-{log_format}-{level.lower()}.json"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(vllm_logging_config(log_format, level), indent=1))
    except OSError as exc:
        logging.getLogger(__name__).warning(
            "vLLM keeps its own log format (cannot write %s: %s)", path, exc
        )
        return None
    return path


def _vllm_logging_set_by_user(environ: Any) -> bool:
    return bool(environ.get(VLLM_CONFIG_ENV)) or environ.get("VLLM_CONFIGURE_LOGGING") == "0"
