"""Settings of the HTTP front end and of what an operator reads from it: CORS, the path prefix,
the API docs, stream keep-alives, and the logs. Flags keep vLLM's spellings where vLLM's server
has the same setting (--allowed-origins, --root-path, --disable-fastapi-docs)."""

from __future__ import annotations

from dataclasses import dataclass

from processors.declaration import declared, non_negative, one_of

LOG_FORMATS = ("text", "json")


def _root_path(value: str) -> str | None:
    if value == "" or (value.startswith("/") and not value.endswith("/")):
        return None
    return "must be empty or a path such as /llm (a leading '/', no trailing '/')"


@dataclass(frozen=True)
class HttpConfig:
    # vLLM's server answers CORS for every origin by default; so does this one (PROTOCOLS: where
    # silent, as vLLM does). An empty list sends no CORS headers at all.
    allowed_origins: tuple[str, ...] = declared(
        ("*",), "CORS: origins allowed to call the API from a browser (a JSON list; [] for none)"
    )
    allowed_methods: tuple[str, ...] = declared(("*",), "CORS: methods allowed (a JSON list)")
    allowed_headers: tuple[str, ...] = declared(("*",), "CORS: request headers allowed")
    allow_credentials: bool = declared(False, "CORS: allow credentials (cookies)")
    root_path: str = declared(
        "",
        "path prefix a path-routing proxy serves the app under (FastAPI's root_path); requests "
        "may come with or without it",
        check=_root_path,
    )
    disable_fastapi_docs: bool = declared(
        False, "serve no /docs, /redoc and /openapi.json (they need the token when one is set)"
    )
    sse_keep_alive: float = declared(
        15.0,
        "seconds an SSE stream waits for its first token before the answer starts with "
        "': keep-alive' comments, one per as many seconds, so idle timeouts of proxies do not "
        "cut it (0: never)",
        check=non_negative,
    )


@dataclass(frozen=True)
class ObservabilityConfig:
    log_format: str = declared(
        "text", "the runtime's (and vLLM's) log lines: text or json", check=one_of(*LOG_FORMATS)
    )
    access_log: bool = declared(False, "log one line per HTTP request (uvicorn's access log)")
    log_stats_interval: float = declared(
        10.0,
        "seconds between throughput lines (running, waiting, tokens/s, KV cache use) while "
        "the server is busy (0: none)",
        check=non_negative,
    )
