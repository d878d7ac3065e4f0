"""The agent's disk-backed outbox: telemetry waits here until the broker acknowledged it.

    put() ──► SQLite (WAL) ──► pending() ──► MQTT publish (QoS 1) ──► PUBACK ──► remove()

- Survives broker outages and agent restarts (SIGKILL included: a committed `put` is in the
  WAL file, which the next open replays). `synchronous=NORMAL`: a power cut may lose the last
  transactions, never corrupt the file.
- A message leaves the outbox only when the broker acknowledged it (`remove` after PUBACK),
  so a restart resends whatever was in flight; ingest de-duplicates by `message_id`.
- Bounded: at most `max_messages` and `max_bytes`. When a new message does not fit, the
  oldest are dropped first (the newest windows describe the device's present) and counted;
  the count is persistent, and the agent reports it in every telemetry batch
  (`outbox_dropped`).

One `Outbox` per agent (one file, one connection, a lock): nothing is shared between agents.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.telemetry.sqlite_file import open_wal_database
from edgeops.errors import ConfigError

__all__ = ["Outbox", "OutboxItem", "OutboxStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL UNIQUE,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO outbox_meta (key, value) VALUES ('dropped', 0);
"""


@dataclass(frozen=True, slots=True)
class OutboxItem:
    seq: int
    message_id: str
    topic: str
    payload: bytes


@dataclass(frozen=True)
class OutboxStats:
    messages: int
    bytes: int
    dropped: int  # since the outbox was created, across restarts


class Outbox:
    """A bounded FIFO of messages on disk, keyed by message id."""

    def __init__(self, path: Path, *, max_messages: int = 10_000, max_bytes: int = 64 * 1024**2):
        if max_messages < 1 or max_bytes < 1:
            raise ConfigError("the outbox needs max_messages >= 1 and max_bytes >= 1")
        self.path = Path(path)
        self._max_messages = max_messages
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._db = open_wal_database(
            self.path, _SCHEMA, synchronous="NORMAL", what="the telemetry outbox"
        )
        try:
            row = self._db.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM outbox")
            self._messages, self._bytes = row.fetchone()
        except sqlite3.Error as err:
            raise ConfigError(f"cannot open the telemetry outbox {self.path}: {err}") from err

    def put(self, message_id: str, topic: str, payload: bytes, now: float) -> int:
        """Store a message (a repeated id is ignored); return how many old ones it dropped."""
        size = len(payload)
        if size > self._max_bytes:
            raise ConfigError(f"a {size}-byte message cannot fit an outbox of {self._max_bytes} bytes")
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                cursor = db.execute(
                    "INSERT OR IGNORE INTO outbox (message_id, topic, payload, created_at) "
                    "VALUES (?, ?, ?, ?)",
                    (message_id, topic, payload, now),
                )
                if cursor.rowcount == 0:
                    db.execute("COMMIT")
                    return 0
                messages, total = self._messages + 1, self._bytes + size
                dropped = 0
                while messages > self._max_messages or total > self._max_bytes:
                    oldest = db.execute(
                        "SELECT seq, length(payload) FROM outbox ORDER BY seq LIMIT 1"
                    ).fetchone()
                    db.execute("DELETE FROM outbox WHERE seq = ?", (oldest[0],))
                    messages, total, dropped = messages - 1, total - oldest[1], dropped + 1
                if dropped:
                    db.execute(
                        "UPDATE outbox_meta SET value = value + ? WHERE key = 'dropped'", (dropped,)
                    )
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._messages, self._bytes = messages, total
            return dropped

    def pending(self, limit: int, exclude: Iterable[str] = ()) -> list[OutboxItem]:
        """Up to `limit` oldest messages whose ids are not in `exclude` (already in flight)."""
        skip = set(exclude)
        with self._lock:
            rows = self._db.execute(
                "SELECT seq, message_id, topic, payload FROM outbox ORDER BY seq LIMIT ?",
                (limit + len(skip),),
            ).fetchall()
        items = [OutboxItem(seq, mid, topic, bytes(payload)) for seq, mid, topic, payload in rows]
        return [item for item in items if item.message_id not in skip][:limit]

    def remove(self, message_ids: Iterable[str]) -> int:
        """Forget acknowledged messages; return how many were still stored."""
        ids = list(message_ids)
        if not ids:
            return 0
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                removed = freed = 0
                for message_id in ids:
                    row = db.execute(
                        "DELETE FROM outbox WHERE message_id = ? RETURNING length(payload)",
                        (message_id,),
                    ).fetchone()
                    if row is not None:
                        removed, freed = removed + 1, freed + row[0]
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            self._messages -= removed
            self._bytes -= freed
            return removed

    def stats(self) -> OutboxStats:
        with self._lock:
            dropped = self._db.execute(
                "SELECT value FROM outbox_meta WHERE key = 'dropped'"
            ).fetchone()[0]
            return OutboxStats(self._messages, self._bytes, int(dropped))

    def __len__(self) -> int:
        return self._messages

    def close(self) -> None:
        with self._lock:
            self._db.close()
