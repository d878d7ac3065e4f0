"""The monitor's shell on a real SQLite database with real telemetry rows from ingest."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from sqlalchemy.orm import sessionmaker

from edgeops.messages import TelemetryBatch
from server.db.tables import (
    DeviceLabel,
    MonitorEventRecord,
    MonitorWindowScore,
    TelemetryRecord,
)
from server.fleet.inventory import record_telemetry
from server.monitoring.detector import Reference
from server.monitoring.runner import MonitorConfig, MonitorRunner
from tests.server.monitoring.synthetic import make_fleet

pytestmark = pytest.mark.monitor

WINDOW_S = 60.0
T0 = 1_800_000_000.0  # a multiple of WINDOW_S
GROUPS = {"dev-e1": "east", "dev-e2": "east", "dev-w1": "west", "dev-w2": "west"}


def _batches(fleet, window: int, drifted: set[str], schema: int = 2) -> list[TelemetryBatch]:  # noqa: ANN001
    out = []
    for device in GROUPS:
        sample = fleet.window(device, 300, shift=0.6 if device in drifted else 0.0)
        histograms = sample.feature_histograms if schema == 2 else sample.feature_histograms[:, 1:-1]
        counts = int(histograms[0].sum())
        out.append(
            TelemetryBatch(
                schema=schema,
                device_id=device,
                model="digits",
                version=1,
                window_start=T0 + window * WINDOW_S,
                window_end=T0 + window * WINDOW_S + WINDOW_S / 2,
                count=counts,
                errors=0,
                predicted_classes=[int(v) for v in sample.predicted_classes] if schema == 2 else [],
                feature_histograms=histograms.tolist(),
            )
        )
    return out


def _setup(session_factory: sessionmaker, batches: list[TelemetryBatch]) -> None:
    with session_factory() as session, session.begin():
        for device, group in GROUPS.items():
            session.merge(DeviceLabel(device_id=device, group_name=group, tags=[]))
        record_telemetry(session, batches, datetime.now(UTC))


def _runner(session_factory: sessionmaker, reference: Reference, now: float, holder: str = "a") -> MonitorRunner:
    return MonitorRunner(
        session_factory,
        lambda release: reference if release == "digits/1" else None,
        MonitorConfig(window_s=WINDOW_S, grace_s=1.0, retention_s=3600.0, calibration_draws=200),
        clock=lambda: now,
        holder=holder,
    )


def test_drift_on_one_group_raises_drift_detected_for_exactly_that_group(
    session_factory: sessionmaker,
) -> None:
    fleet = make_fleet(seed=11)
    batches = _batches(fleet, 0, set()) + _batches(fleet, 1, {"dev-e1", "dev-e2"})
    _setup(session_factory, batches)
    runner = _runner(session_factory, fleet.reference, T0 + 3 * WINDOW_S)

    assert runner.tick() == 2  # the third window closes at now: not yet past grace

    with session_factory() as session:
        windows = session.execute(select(MonitorWindowScore)).scalars().all()
        events = session.execute(select(MonitorEventRecord)).scalars().all()
    verdicts = {(w.cohort, w.window_start - T0): w.verdict for w in windows}
    assert verdicts[("digits/1@east", 0.0)] == "ok"
    assert verdicts[("digits/1@west", 0.0)] == "ok"
    assert verdicts[("digits/1@east", WINDOW_S)] == "drift"
    assert verdicts[("digits/1@west", WINDOW_S)] == "ok"
    assert all(w.scores["statistics"]["psi"] for w in windows)  # every score stored
    drift_cohorts = {e.cohort for e in events if e.kind == "drift_detected"}
    assert "digits/1@east" in drift_cohorts and "digits/1@west" not in drift_cohorts
    east = next(e for e in events if e.cohort == "digits/1@east")
    assert east.evidence["features"] and east.evidence["windows"]
    # A second tick finds nothing new; a second replica cannot take the lease.
    assert runner.tick() == 0
    assert _runner(session_factory, fleet.reference, T0 + 3.5 * WINDOW_S, holder="b").tick() == 0


def test_v1_rows_are_scored_and_broken_rows_are_skipped_not_fatal(
    session_factory: sessionmaker,
) -> None:
    fleet = make_fleet(seed=12)
    _setup(session_factory, _batches(fleet, 0, set(), schema=1))
    with session_factory() as session, session.begin():
        session.add(
            TelemetryRecord(
                message_id="forged-0001", device_id="dev-w1", model="digits", version=1,
                window_start=T0, window_end=T0 + 10, count=5, errors=0,
                payload={"schema": 2, "count": 5, "feature_histograms": [[1, -2], [3]]},
            )
        )
    runner = _runner(session_factory, fleet.reference, T0 + 2 * WINDOW_S)

    assert runner.tick() == 1

    assert runner.stats.rows_skipped == 1
    with session_factory() as session:
        verdicts = {w.cohort: w.verdict for w in session.execute(select(MonitorWindowScore)).scalars()}
    assert verdicts == {"digits/1@east": "ok", "digits/1@west": "ok", "digits/1@fleet": "ok"}


def test_rolled_up_telemetry_is_pruned_after_the_retention_age(session_factory: sessionmaker) -> None:
    fleet = make_fleet(seed=13)
    _setup(session_factory, _batches(fleet, 0, set()))
    runner = _runner(session_factory, fleet.reference, T0 + 2 * 3600.0)

    runner.tick()

    with session_factory() as session:
        assert session.execute(select(TelemetryRecord)).first() is None
        assert session.execute(select(MonitorWindowScore)).first() is not None
