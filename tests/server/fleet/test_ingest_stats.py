"""Ingest counters and the rate-limited rejection log."""

from __future__ import annotations

import logging

import pytest

from server.fleet.ingest.stats import IngestCounters, RateLimitedLog

pytestmark = [pytest.mark.telemetry]


def test_counters_snapshot() -> None:
    counters = IngestCounters()
    for _ in range(3):
        counters.received()
    counters.rejected("malformed")
    counters.committed(statuses=1, telemetry=1, duplicates=0)

    stats = counters.snapshot(queued=0, connected=True)

    assert (stats.received, stats.stored, stats.statuses, stats.telemetry) == (3, 2, 1, 1)
    assert stats.rejected == {"malformed": 1}
    assert stats.batches == 1 and stats.connected


def test_rate_limited_log_logs_once_per_interval_per_key(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    log = RateLimitedLog(logging.getLogger("test.ratelimit"), interval_s=10.0, clock=lambda: now[0])

    with caplog.at_level(logging.WARNING, logger="test.ratelimit"):
        logged = [log.warning("malformed", "bad %d", i) for i in range(5)]
        other = log.warning("empty", "empty")
        now[0] = 11.0
        later = log.warning("malformed", "bad again")

    assert logged == [True, False, False, False, False]
    assert other and later
    assert [r.getMessage() for r in caplog.records] == [
        "bad 0",
        "empty",
        "bad again (4 similar suppressed)",
    ]
