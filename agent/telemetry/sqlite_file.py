"""Open one of the agent's SQLite files (the outbox, the feedback store) the same way.

Autocommit connection (callers open their own transactions), WAL journal, one connection
shared by the owner's threads behind the owner's lock, the schema created if missing.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from edgeops.errors import ConfigError

__all__ = ["open_wal_database"]


def open_wal_database(
    path: Path, schema: str, *, synchronous: Literal["NORMAL", "FULL"], what: str
) -> sqlite3.Connection:
    """A connection to `path` with `schema` applied; ConfigError naming `what` if it fails."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.executescript(schema)
    except sqlite3.Error as err:
        raise ConfigError(f"cannot open {what} {path}: {err}") from err
    return db
