"""The monitor on SQLite and a real PostgreSQL: scores, events, one monitor at a time."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from server.db.engine import close_database, open_database
from server.db.tables import MonitorEventRecord, MonitorWindowScore
from tests.server.helpers import postgres_available, postgres_schema_url
from tests.server.monitoring.synthetic import make_fleet
from tests.server.monitoring.test_runner import T0, WINDOW_S, _batches, _runner, _setup

pytestmark = [pytest.mark.monitor, pytest.mark.integration]


@pytest.fixture(params=["sqlite", "postgresql"])
def session_factory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker]:
    if request.param == "sqlite":
        factory = open_database(f"sqlite:///{tmp_path / 'registry.db'}")
        yield factory
        close_database(factory)
        return
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    with postgres_schema_url() as url:
        factory = open_database(url)
        yield factory
        close_database(factory)


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
