"""Reading a window's telemetry rows: streamed in chunks, payloads parsed, poison rows skipped."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from server.db.tables import MonitorWindowScore, TelemetryRecord
from server.fleet.inventory import record_telemetry
from server.monitoring import store
from tests.server.monitoring.synthetic import make_fleet
from tests.server.monitoring.test_runner import T0, WINDOW_S, _batches, _runner, _setup

pytestmark = pytest.mark.monitor


def test_rows_of_a_window_stream_in_chunks_with_group_and_payload(
    session_factory: sessionmaker,
) -> None:
    fleet = make_fleet(seed=21)
    batches = _batches(fleet, 0, set()) + _batches(fleet, 1, set())
    _setup(session_factory, batches)

    with session_factory() as session:
        rows = list(store.telemetry_rows(session, T0, T0 + WINDOW_S, chunk_rows=3))

    sent = {b.device_id: b for b in batches[:4]}
    assert sorted(r.device_id for r in rows) == sorted(sent)
    for row in rows:
        assert row.group_name in ("east", "west")
        assert (row.model, row.version) == ("digits", 1)
        assert row.payload["feature_histograms"] == sent[row.device_id].feature_histograms
        assert row.payload["count"] == sent[row.device_id].count


def test_a_row_that_is_not_an_object_reads_as_empty(session_factory: sessionmaker) -> None:
    with session_factory() as session, session.begin():
        session.add(TelemetryRecord(message_id="listpayload1", device_id="dev-x", model="digits",
                                    version=1, window_start=T0, window_end=T0 + 1, count=1,
                                    errors=0, payload=[1, 2, 3]))

    with session_factory() as session:
        rows = list(store.telemetry_rows(session, T0, T0 + WINDOW_S))

    assert [(r.device_id, r.group_name, r.payload) for r in rows] == [("dev-x", "default", {})]


def test_counts_beyond_int64_skip_the_row_not_the_window(session_factory: sessionmaker) -> None:
    fleet = make_fleet(seed=22)
    batches = _batches(fleet, 0, set())
    poison = batches[0].model_copy(update={"message_id": "poison-0001"}, deep=True)
    poison.feature_histograms[0][0] = 2**70  # ingest's list[list[int]] lets it through
    _setup(session_factory, batches)
    with session_factory() as session, session.begin():
        record_telemetry(session, [poison], datetime.now(UTC))
    runner = _runner(session_factory, fleet.reference, T0 + 2 * WINDOW_S)

    assert runner.tick() == 1

    assert runner.stats.rows_skipped == 1
    with session_factory() as session:
        devices = {w.cohort: w.devices for w in session.execute(select(MonitorWindowScore)).scalars()}
    assert devices == {"digits/1@east": 2, "digits/1@west": 2, "digits/1@fleet": 4}
