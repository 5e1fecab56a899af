"""The SQLite queue's tables, the upgrade of a file written by an older runtime, and the two
kinds of transaction the queue commits.

Version 1 kept one table whose finished rows held their result. Version 2 has the two queues
the platform has: `items` (the input queue: pending and running requests) and `results` (the
sink, with an index of its own, in the order results arrive), and `finished`, the requests that
have had a result, which tells a re-run's duplicate result from a first one.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
from pathlib import Path

from runtime.queue.base import QueueOpenError

SCHEMA_VERSION = 2
SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    idx INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: an index is never reused
    request_id TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,  -- pending or running
    priority INTEGER NOT NULL DEFAULT 0,
    body BLOB NOT NULL,
    content_type TEXT NOT NULL,
    tags TEXT NOT NULL,
    enqueued_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    consumer TEXT,
    lease_until REAL
);
CREATE INDEX IF NOT EXISTS items_by_turn ON items (state, priority DESC, idx);
CREATE TABLE IF NOT EXISTS results (
    idx INTEGER PRIMARY KEY AUTOINCREMENT,
    request_id TEXT NOT NULL,
    data BLOB NOT NULL,
    tags TEXT NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_by_request ON results (request_id);
CREATE INDEX IF NOT EXISTS results_by_finish ON results (finished_at);
CREATE TABLE IF NOT EXISTS finished (
    request_id TEXT PRIMARY KEY,
    finished_at REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS finished_by_time ON finished (finished_at);
"""


def prepare(db: sqlite3.Connection, path: Path) -> None:
    """Create the tables, or upgrade those of an older version; QueueOpenError if neither."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version not in (0, 1, SCHEMA_VERSION):
        raise QueueOpenError(
            f"the queue at {path} has schema version {version}; this runtime reads version "
            f"{SCHEMA_VERSION}"
        )
    # One transaction (executescript would commit on its own): an upgrade happens whole or not.
    with transaction(db):
        if version == 1:
            _upgrade_from_1(db)
        for statement in SCHEMA.split(";"):
            if statement.strip():
                db.execute(statement)
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _upgrade_from_1(db: sqlite3.Connection) -> None:
    """Finished rows move to the sink (their index there is new), in the order they finished;
    pending and running rows stay, with the columns leases need."""
    for statement in SCHEMA.split(";"):
        if "TABLE" in statement and "items (" not in statement:
            db.execute(statement)
    done = db.execute(
        "SELECT request_id, tags, result, status, finished_at FROM items WHERE state = 'done' "
        "ORDER BY finished_at, idx"
    ).fetchall()
    for request_id, tags, result, status, finished_at in done:
        frame_tags = {**json.loads(tags), "requestId": request_id, "lastCode": str(status)}
        db.execute(
            "INSERT INTO results (request_id, data, tags, finished_at) VALUES (?, ?, ?, ?)",
            (request_id, result or b"", json.dumps(frame_tags), finished_at),
        )
        db.execute("INSERT INTO finished VALUES (?, ?)", (request_id, finished_at))
    db.execute("DELETE FROM items WHERE state = 'done'")
    db.execute("DROP INDEX IF EXISTS items_by_finish")
    for column in ("result", "status", "finished_at"):
        db.execute(f"ALTER TABLE items DROP COLUMN {column}")
    db.execute("ALTER TABLE items ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0")
    db.execute("ALTER TABLE items ADD COLUMN consumer TEXT")
    db.execute("ALTER TABLE items ADD COLUMN lease_until REAL")


@contextlib.contextmanager
def unsynced(db: sqlite3.Connection):
    """Commits not fsynced, for who holds an item (claims, leases, hand-backs): a power cut may
    undo them, and then the item runs again, as it would anyway (running items go back to
    pending at open). The next fsynced commit makes them durable too (WAL)."""
    db.execute("PRAGMA synchronous = NORMAL")
    try:
        yield
    finally:
        db.execute("PRAGMA synchronous = FULL")


@contextlib.contextmanager
def transaction(db: sqlite3.Connection):
    # IMMEDIATE takes the write lock at once, so what is read and written is one queue state.
    db.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")
