"""Telemetry sent vs stored: every batch an agent put in its outbox (its home's sent log,
simulations/agent_host.py) against the rows the server stored, by message id."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import select

from server.db.tables import TelemetryRecord
from simulations.agent_host import SENT_LOG

__all__ = ["sent_ids", "telemetry_counts"]


def sent_ids(home: Path) -> set[str]:
    """The ids of every telemetry batch the agent of `home` put in its outbox."""
    path = home / SENT_LOG
    if not path.exists():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def telemetry_counts(session_factory: Any, homes: Sequence[Path],
                     drain_s: float) -> dict[str, tuple[int, int]]:
    """{device id (the home's name): (sent, stored)}, waiting up to `drain_s` for the
    outboxes to empty into the server."""
    deadline = time.monotonic() + drain_s
    while True:
        sent = {home.name: sent_ids(home) for home in homes}
        with session_factory() as session:
            stored = set(session.scalars(select(TelemetryRecord.message_id)))
        counts = {d: (len(ids), len(ids & stored)) for d, ids in sent.items()}
        if all(s == n for n, s in counts.values()) or time.monotonic() > deadline:
            return counts
        time.sleep(1.0)
