"""The monitor on SQLite and a real PostgreSQL: scores, events, one monitor at a time."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from server.db.tables import MonitorEventRecord, MonitorWindowScore
from tests.server.monitoring.synthetic import make_fleet
from tests.server.monitoring.test_runner import T0, WINDOW_S, _batches, _runner, _setup

pytestmark = [pytest.mark.monitor, pytest.mark.integration]


@pytest.fixture
def session_factory(sql_database: sessionmaker) -> sessionmaker:
    return sql_database


def test_two_replicas_ticking_at_once_score_each_window_once(session_factory: sessionmaker) -> None:
    fleet = make_fleet(seed=31)
    batches = [b for w in range(4) for b in _batches(fleet, w, {"dev-e1", "dev-e2"} if w >= 2 else set())]
    _setup(session_factory, batches)
    now = T0 + 5 * WINDOW_S
    runners = [_runner(session_factory, fleet.reference, now, holder=h) for h in ("a", "b")]
    results: list[int] = []
    errors: list[BaseException] = []

    def run(runner) -> None:  # noqa: ANN001
        try:
            results.append(runner.tick())
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=run, args=(r,)) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert errors == []
    assert sorted(results) == [0, 4]
    with session_factory() as session:
        windows = session.execute(select(func.count()).select_from(MonitorWindowScore)).scalar()
        events = session.execute(
            select(MonitorEventRecord.cohort).where(MonitorEventRecord.kind == "drift_detected")
        ).scalars().all()
    assert windows == 4 * 3  # east, west and the fleet, per window
    assert sorted(events) == ["digits/1@east", "digits/1@fleet"]  # once each, never twice
