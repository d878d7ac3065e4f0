"""Ingest counters and rate-limited logging of rejected messages.

Memory is bounded by the number of rejection reasons (a fixed set), never by the number of
devices or messages.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["IngestCounters", "IngestStats", "MessageKind", "Outcome", "RateLimitedLog", "RejectReason"]

MessageKind = Literal["status", "telemetry", "unknown"]  # unknown: the topic is not ours
Outcome = Literal["stored", "duplicate", "rejected"]

RejectReason = Literal[
    "bad_topic",  # not <prefix>/devices/<id>/{status,telemetry}
    "empty",  # zero-length payload (e.g. someone clearing a retained status)
    "oversized",  # larger than edgeops.messages.MAX_PAYLOAD_BYTES
    "malformed",  # not UTF-8 JSON (garbage, truncated)
    "invalid_schema",  # JSON, but not the versioned schema
    "device_mismatch",  # payload device_id differs from the topic's
    "unstorable",  # valid on the wire, refused by the database (e.g. a field too long)
]


@dataclass(frozen=True)
class IngestStats:
    """A consistent snapshot of what an ingest worker has done since it started."""

    received: int = 0  # messages taken from the broker
    stored: int = 0  # statuses applied + new telemetry rows
    statuses: int = 0
    telemetry: int = 0  # new telemetry rows
    duplicates: int = 0  # telemetry already stored (redelivery, several workers)
    rejected: dict[str, int] = field(default_factory=dict)  # by RejectReason
    batches: int = 0  # database transactions committed
    database_retries: int = 0
    queued: int = 0  # received, not yet written
    connected: bool = False
    # (kind, outcome) -> messages; the source of edgeops_ingest_messages_total
    outcomes: dict[tuple[str, str], int] = field(default_factory=dict)


class IngestCounters:
    """Thread-safe counters behind `IngestStats` (written by the MQTT and writer threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._statuses = 0
        self._telemetry = 0
        self._duplicates = 0
        self._rejected: dict[str, int] = {}
        self._batches = 0
        self._database_retries = 0
        self._outcomes: dict[tuple[str, str], int] = {}

    def _count(self, kind: MessageKind, outcome: Outcome, n: int = 1) -> None:
        if n:
            key = (kind, outcome)
            self._outcomes[key] = self._outcomes.get(key, 0) + n

    def received(self) -> None:
        with self._lock:
            self._received += 1

    def rejected(self, reason: RejectReason, kind: MessageKind = "unknown") -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            self._count(kind, "rejected")

    def committed(self, *, statuses: int, telemetry: int, duplicates: int) -> None:
        with self._lock:
            self._batches += 1
            self._statuses += statuses
            self._telemetry += telemetry
            self._duplicates += duplicates
            self._count("status", "stored", statuses)
            self._count("telemetry", "stored", telemetry)
            self._count("telemetry", "duplicate", duplicates)

    def database_retry(self) -> None:
        with self._lock:
            self._database_retries += 1

    def snapshot(self, *, queued: int, connected: bool) -> IngestStats:
        with self._lock:
            return IngestStats(
                received=self._received,
                stored=self._statuses + self._telemetry,
                statuses=self._statuses,
                telemetry=self._telemetry,
                duplicates=self._duplicates,
                rejected=dict(self._rejected),
                batches=self._batches,
                database_retries=self._database_retries,
                queued=queued,
                connected=connected,
                outcomes=dict(self._outcomes),
            )


class RateLimitedLog:
    """Log at most one line per key every `interval_s`, with a count of what was suppressed.

    Keys must come from a small fixed set (rejection reasons), so memory stays bounded.
    """

    def __init__(
        self,
        logger: logging.Logger,
        interval_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._clock = clock
        self._lock = threading.Lock()
        self._next_at: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args: object) -> bool:
        """Log unless `key` was logged less than `interval_s` ago; return whether it logged."""
        now = self._clock()
        with self._lock:
            if now < self._next_at.get(key, float("-inf")):
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return False
            self._next_at[key] = now + self._interval_s
            suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            msg += " (%d similar suppressed)"
            args = (*args, suppressed)
        self._logger.warning(msg, *args)
        return True
