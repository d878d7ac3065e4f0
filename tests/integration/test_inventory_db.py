"""Fleet inventory against every storage backend: a SQLite file and PostgreSQL."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import sessionmaker

from edgeops.errors import NotFoundError
from edgeops.messages import DeviceStatus, TelemetryBatch
from server.db.tables import TelemetryRecord
from server.fleet import inventory

pytestmark = [pytest.mark.telemetry, pytest.mark.integration]

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture
def db(sql_database: sessionmaker) -> sessionmaker:
    return sql_database


def _batch(device_id: str, message_id: str | None = None) -> TelemetryBatch:
    extra = {"message_id": message_id} if message_id else {}
    return TelemetryBatch(
        device_id=device_id, window_start=0, window_end=1, count=4, errors=0, **extra
    )


def _rows(db: sessionmaker) -> int:
    with db() as session:
        return session.scalar(select(func.count()).select_from(TelemetryRecord)) or 0


def test_status_upserts_the_device(db: sessionmaker) -> None:
    with db.begin() as session:
        inventory.apply_status(
            session,
            DeviceStatus(device_id="d1", online=True, state="running", model="digits", version=2,
                         release="digits/2/int8.onnx", agent_version="0.1.0"),
            T0,
        )
    with db.begin() as session:
        inventory.apply_status(
            session,
            DeviceStatus(device_id="d1", online=True, state="update_failed", model="digits",
                         version=2, release="digits/2/int8.onnx", reason="smoke test failed"),
            T0 + timedelta(seconds=5),
        )

    with db() as session:
        device = inventory.get_device(session, "d1")
        assert (device.online, device.state, device.version, device.reason) == (
            True, "update_failed", 2, "smoke test failed"
        )
        assert device.last_status_at is not None
        assert [d.device_id for d in inventory.list_devices(session)] == ["d1"]


def test_offline_last_will_keeps_the_last_known_version(db: sessionmaker) -> None:
    with db.begin() as session:
        inventory.apply_status(
            session, DeviceStatus(device_id="d1", online=True, state="running", model="digits",
                                  version=3, release="digits/3/int8.onnx"), T0
        )
    stale_will = DeviceStatus(
        device_id="d1", online=False, state="offline", model="digits", version=1
    )
    with db.begin() as session:
        inventory.apply_status(session, stale_will, T0 + timedelta(minutes=1))

    with db() as session:
        device = inventory.get_device(session, "d1")
        assert (device.online, device.state, device.version, device.release) == (
            False, "offline", 3, "digits/3/int8.onnx"
        )


def test_telemetry_is_idempotent_by_message_id(db: sessionmaker) -> None:
    first = [_batch("d1", "m-0000001"), _batch("d1", "m-0000002"), _batch("d1", "m-0000001")]
    again = [_batch("d1", "m-0000002"), _batch("d2", "m-0000003")]

    with db.begin() as session:
        new_first = inventory.record_telemetry(session, first, T0)
    with db.begin() as session:
        new_again = inventory.record_telemetry(session, again, T0)

    assert (new_first, new_again) == (2, 1)
    assert _rows(db) == 3
    with db() as session:
        counts = {d.device_id: d.telemetry_messages for d in inventory.list_devices(session)}
        assert counts == {"d1": 2, "d2": 1}  # d2 was unknown: telemetry created its row
        # The payload is stored as the JSON object it arrived as, and reads back as one.
        stored = session.scalars(select(TelemetryRecord).where(TelemetryRecord.message_id == "m-0000003")).one()
        assert stored.payload == again[1].model_dump(mode="json", by_alias=True, exclude_none=True)


def test_concurrent_writers_store_each_message_once(db: sessionmaker) -> None:
    batches = [_batch(f"d{i % 3}", f"msg-{i:06d}") for i in range(60)]
    results: list[int] = []
    errors: list[BaseException] = []

    def write(chunk: list[TelemetryBatch]) -> None:
        try:
            for attempt in range(20):  # SQLite answers a concurrent writer with "locked"
                try:
                    with db.begin() as session:
                        results.append(inventory.record_telemetry(session, chunk, T0))
                    return
                except Exception:  # noqa: BLE001
                    if attempt == 19:
                        raise
        except BaseException as err:  # noqa: BLE001
            errors.append(err)

    rotations = [batches[i:] + batches[:i] for i in (0, 20, 40)]  # overlapping, other orders
    threads = [threading.Thread(target=write, args=(chunk,)) for chunk in rotations]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    assert sum(results) == 60
    assert _rows(db) == 60
    with db() as session:
        assert sum(d.telemetry_messages for d in inventory.list_devices(session)) == 60


def test_unknown_device_is_not_found(db: sessionmaker) -> None:
    with db() as session, pytest.raises(NotFoundError, match="nope"):
        inventory.get_device(session, "nope")
