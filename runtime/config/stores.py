"""Settings of what the runtime keeps beyond a request: the call records (a file and its
rotation) and the asynchronous queue (a SQLite file, or a Redis shared by several runtimes)."""

from __future__ import annotations

from dataclasses import dataclass

from processors.declaration import JsonKey, at_least, declared, non_negative, positive


@dataclass(frozen=True)
class CallLogConfig:
    # The platform's "save call records" is a console switch; here it is a file and its rotation.
    path: str | None = declared(
        None,
        "file to append call records to, one JSON line per call",
        name="call_log",
        json=["metadata.call_log.path", "metadata.call_log"],
    )
    max_bytes: int = declared(
        100 << 20,
        "rotate the call log beyond this size (0: never)",
        name="call_log_max_bytes",
        json=["metadata.call_log.max_bytes"],
        check=non_negative,
    )
    backups: int = declared(
        5,
        "rotated call logs kept (PATH.1, PATH.2, ...)",
        name="call_log_backups",
        json=["metadata.call_log.backups"],
        check=at_least(1),
    )


def _redis_url(url: str) -> str | None:
    if url.split("://", 1)[0] in ("redis", "rediss", "unix") and "://" in url:
        return None
    return "must be a redis://, rediss:// or unix:// URL"


def without_password(url: str) -> str:
    """The URL as a config dump may show it."""
    scheme, _, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    return f"{scheme}://<redacted>@{host}" if at and credentials else url


@dataclass(frozen=True)
class QueueConfig:
    """The asynchronous API (PROTOCOLS §9)."""

    enabled: bool = declared(
        False,
        "enqueue requests on the service routes; results come from /sink",
        name="async",
        json=[JsonKey("metadata.type", lambda kind: str(kind).lower() == "async", note="Async")],
    )
    path: str | None = declared(
        None,
        "SQLite file holding the asynchronous queue (default: one per service name in the "
        "cache directory)",
        name="queue_path",
    )
    max_pending: int | None = declared(
        None,
        "requests the asynchronous queue holds waiting (450 beyond; default: max_queue_size)",
        name="queue_max_pending",
        check=non_negative,
    )
    result_ttl: float = declared(
        24 * 3600.0,
        "seconds a finished result stays readable at /sink",
        name="queue_result_ttl",
        check=positive,
    )
    url: str | None = declared(
        None,
        "Redis holding the queue, shared by every runtime given it: redis://[:password@]host:"
        "port/db, rediss:// (TLS) or unix:///path.sock (default: the SQLite file)",
        name="queue_url",
        json=["metadata.queue.url"],
        check=_redis_url,
    )
    password: str | None = declared(
        None,
        "password of the queue's Redis, when the URL does not hold it",
        name="queue_password",
        json=["metadata.queue.password"],
        secret=True,
    )
    visibility_timeout: float = declared(
        60.0,
        "seconds a running queued request may go unrenewed (its runtime died) before another "
        "runtime runs it again",
        name="queue_visibility_timeout",
        json=["metadata.queue.visibility_timeout"],
        check=positive,
    )
